"""Held-out synthetic tasks: well-formed, deterministic, and disjoint from the training corpus by construction."""

from __future__ import annotations

import random
import re

import pytest

from kexaone.data.synthetic import generate_corpus
from kexaone.data.synthetic.arithmetic import is_reserved, sample_problem
from kexaone.data.synthetic.code import code_documents, is_heldout_file
from kexaone.data.synthetic.retrieval import is_reserved_key, make_document
from kexaone.data.synthetic.tasks import TASK_NAMES, Task, TaskItem, build_tasks, extract_after_think


@pytest.fixture(scope="module")
def tasks():
    return build_tasks("tiny", seed=0, n_items=30, retrieval_records=8)


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus("tiny", seed=0)


def test_items_are_well_formed(tasks):
    assert set(tasks) == set(TASK_NAMES)
    for name, task in tasks.items():
        assert task.items, name
        for it in task.items:
            assert it.prompt and it.answer
            if task.metric == "choice":
                assert len(it.choices) == 4 and len(set(it.choices)) == 4
                assert sum(c.strip() == it.answer.strip() for c in it.choices) == 1
            else:
                assert it.choices is None
    assert tasks["crosslingual_recall"].chance_baseline == tasks["code_completion"].chance_baseline == 0.25
    assert tasks["retrieval"].chance_baseline == pytest.approx(1 / 8)
    assert 0 < tasks["arithmetic"].chance_baseline < 0.2
    assert len(tasks["arithmetic"].items) == 30
    # the recall prompts use every language, each about a fact held out in that language
    assert {it.lang for it in tasks["crosslingual_recall"].items} >= {"ko", "en", "ja"}


def test_tasks_are_deterministic(tasks):
    again = build_tasks("tiny", seed=0, n_items=30, retrieval_records=8)
    for name in TASK_NAMES:
        assert again[name].items == tasks[name].items
    other = build_tasks("tiny", seed=1, n_items=30, retrieval_records=8)
    assert other["arithmetic"].items != tasks["arithmetic"].items


def test_arithmetic_items_disjoint_from_training(tasks, corpus):
    text = "\n".join(d.text for d in corpus["arithmetic"])
    for it in tasks["arithmetic"].items:
        question = it.prompt.split("<|user|>\n", 1)[1].split("<|endofturn|>", 1)[0]
        assert question not in text
    rng = random.Random(123)
    assert not any(is_reserved(sample_problem(rng, reserved=False).key) for _ in range(5000))


def test_recall_items_never_in_training_language(tasks, corpus):
    text = "\n".join(d.text for d in corpus["knowledge"])
    for it in tasks["crosslingual_recall"].items:
        question_line = it.prompt.split("\n", 1)[0]
        assert question_line not in text  # never asked in this language...
        subject_mentions = [d.text for d in corpus["knowledge"] if it.answer in d.text]
        assert subject_mentions  # ...but its answer is taught (in other languages)


def test_retrieval_items_use_keys_no_training_document_has(tasks, corpus):
    keys_in_training = set()
    rng = random.Random(5)
    docs = [d.text for d in corpus["retrieval"]] + [make_document(rng, long=True) for _ in range(20)]
    for text in docs:
        keys_in_training.update(int(k) for k in re.findall(r"(?:Locker|key|Room) (\d{4})", text))
    assert keys_in_training and not any(is_reserved_key(k) for k in keys_in_training)
    for it in tasks["retrieval"].items:
        question = it.prompt.rsplit("\n\n", 1)[1]
        asked = int(re.search(r"(?:locker|key|room) (\d{4})", question).group(1))
        assert is_reserved_key(asked) and asked not in keys_in_training
        assert str(asked) in it.answer and "\n" + it.answer + "\n" in it.prompt  # the record is in the context


def test_code_items_come_from_files_held_out_of_training(tasks):
    training = "\n".join(d.text for _, d in zip(range(3000), code_documents()))
    for it in tasks["code_completion"].items:
        rel = it.prompt.split("\n", 1)[0][2:]
        assert is_heldout_file(rel)
        assert f"# {rel}\n" not in training


def test_scoring_helpers():
    assert extract_after_think("<think>\n1 + 1\n</think>\n\n2") == "2"
    assert extract_after_think("no think block 2") == ""
    t = Task("arithmetic", "", [], 0.0, "exact", extract=extract_after_think)
    item = TaskItem("p", "42")
    assert t.score(item, "steps\n</think>\n\n42")
    assert not t.score(item, "steps\n</think>\n\n421")
    assert not t.score(item, "42")  # no reasoning block closed: no answer
    c = Task("x", "", [], 0.25, "choice")
    assert c.score(TaskItem("p", "Miravel", (" Miravel", " Dorn")), " Miravel")
    with pytest.raises(ValueError, match="n_items"):
        build_tasks("tiny", n_items=0)


def test_code_distractors_match_the_answer_length(tasks):
    for it in tasks["code_completion"].items:
        assert "\n" + it.answer in it.choices
        for c in it.choices:
            assert c.startswith("\n") and 0.75 <= (len(c) - 1) / len(it.answer) <= 1.33


def test_retrieval_context_shrinks_to_fit_the_model_context():
    from test_data_support import tiny_tokenizer

    tok = tiny_tokenizer()
    task = build_tasks("tiny", n_items=5, retrieval_records=24, tokenizer=tok, max_prompt_tokens=300)["retrieval"]
    lengths = [len(tok.encode(it.prompt + " " + it.answer)) for it in task.items]
    assert max(lengths) <= 300
    assert task.chance_baseline > 1 / 24  # fewer records than asked, and the chance rate says so
    with pytest.raises(ValueError, match="both"):
        build_tasks("tiny", n_items=5, max_prompt_tokens=300)


def test_arithmetic_prompt_is_a_prefix_of_the_training_rendering():
    """The evaluation prompt is exactly how a reasoning-mode training document begins, so the model's learned
    continuation (reasoning, </think>, answer, <|endofturn|>) is what the task scores."""
    from kexaone.data.synthetic.arithmetic import messages
    from kexaone.tokenizer.chat import render

    rng = random.Random(0)
    for _ in range(50):
        p = sample_problem(rng, reserved=True)
        prompt = render(messages(p)[:1], add_generation_prompt=True, enable_thinking=True)
        full = render(messages(p), enable_thinking=True)
        assert full.startswith(prompt)
        assert extract_after_think(full[len(prompt):].removesuffix("<|endofturn|>\n").removesuffix("<|endofturn|>")) \
            == p.answer


def test_recall_asks_about_the_corpus_world_whatever_the_item_seed():
    from kexaone.data.synthetic.world import World

    held = {(f.question(f.heldout_lang), f.answer(f.heldout_lang)) for f in World(0, "tiny").heldout_facts}
    for seed in (0, 7):
        items = build_tasks("tiny", seed=seed, n_items=10)["crosslingual_recall"].items
        assert all((it.prompt.split("\n")[0].split(": ", 1)[1], it.answer) in held for it in items)


def test_retrieval_answer_tokens_are_a_copy_of_the_record():
    """The answer's tokens (the record restated) appear as they are in the context, so answering is copying tokens
    (a superword like " holds the T" would make the value a re-spelling instead)."""
    from test_data_support import tiny_tokenizer

    tok = tiny_tokenizer()
    for it in build_tasks("tiny", n_items=20)["retrieval"].items:
        prompt = tok.encode(it.prompt)
        full = tok.encode(it.prompt + " " + it.answer)
        assert full[:len(prompt)] == prompt
        answer = full[len(prompt):]
        # from the key's first digit on (the record's leading word follows a newline in the context, not a space)
        answer = answer[next(i for i, t in enumerate(answer) if tok.decode([t]).strip().isdigit()):]
        assert any(prompt[i:i + len(answer)] == answer for i in range(len(prompt))), it.answer

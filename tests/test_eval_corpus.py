"""kexaone.pipeline.corpus: what the speedrun evaluates on (tasks, held-out text, tokenizer text, prompts)."""

from __future__ import annotations

import pytest

from kexaone.pipeline import corpus
from kexaone.pipeline.budgets import get_budget

TINY = get_budget("tiny")


def test_task_specs_cover_the_four_capabilities_with_baselines_and_caps():
    specs = {s.name: s for s in corpus.task_specs(TINY)}
    assert set(specs) == {"arithmetic", "crosslingual_recall", "retrieval", "code_completion"}
    for s in specs.values():
        assert len(s.items) == TINY.task_items and 0.0 <= s.chance < 1.0
    # free-form tasks generate at most the budget's cap; choice tasks generate nothing
    assert specs["arithmetic"].max_new_tokens == TINY.answer_tokens_cap and specs["arithmetic"].extract is not None
    assert specs["code_completion"].max_new_tokens is None and specs["code_completion"].extract is None
    assert specs["crosslingual_recall"].chance == 0.25
    assert all(it.choices for it in specs["code_completion"].items)
    # deterministic
    again = {s.name: s for s in corpus.task_specs(TINY)}
    assert [it.prompt for it in again["retrieval"].items] == [it.prompt for it in specs["retrieval"].items]


def test_tokenizer_texts_respect_the_byte_budget_and_mix_in_user_data(tmp_path):
    texts = corpus.tokenizer_texts([], 40_000, "tiny")
    assert 0 < sum(len(t.encode()) for t in texts) <= 40_000
    user = tmp_path / "mine.txt"
    user.write_text("\n".join(f"my own document number {i}" for i in range(2000)) + "\n", encoding="utf-8")
    mixed = corpus.tokenizer_texts([str(user)], 40_000, "tiny")
    mine = [t for t in mixed if t.startswith("my own document")]
    assert mine and sum(len(t.encode()) for t in mine) <= 40_000 // 3
    assert sum(len(t.encode()) for t in mixed) <= 40_000
    with pytest.raises(ValueError):
        corpus.tokenizer_texts([], 0, "tiny")


def test_tokenizer_eval_groups_use_unseen_synthetic_text_and_the_corpora_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("KEXAONE_CORPORA", str(tmp_path))
    groups = corpus.tokenizer_eval_groups(TINY)
    assert {"synthetic knowledge", "synthetic code"} <= set(groups)
    assert not any(g.startswith("FLORES") for g in groups)
    training = set(corpus.tokenizer_texts([], TINY.tokenizer_train_bytes, "tiny"))
    assert not training & set(groups["synthetic knowledge"])  # another world: never in the tokenizer's text
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "ko.txt").write_text("첫 문장입니다.\n두 번째 문장.\n", encoding="utf-8")
    groups = corpus.tokenizer_eval_groups(TINY)
    assert groups["FLORES ko"] == ["첫 문장입니다.", "두 번째 문장."]


def test_chat_questions_are_held_out_and_deterministic():
    q = corpus.chat_questions(get_budget("default"))
    assert len(q) == get_budget("default").generation_prompts and q == corpus.chat_questions(get_budget("default"))
    assert all(isinstance(x, str) and x for x in q)

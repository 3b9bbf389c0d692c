"""The embedded synthetic corpus: determinism, coverage of languages and domains, correct reasoning, chat format."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kexaone.data.sources import iter_tagged_documents
from kexaone.data.synthetic import LANGS, generate_corpus, tokenizer_corpus, write_corpus
from kexaone.data.synthetic.arithmetic import KINDS, add_steps, make_problem, mul_steps, sub_steps
from kexaone.data.synthetic.code import code_documents, is_heldout_file, split_code
from kexaone.data.synthetic.world import RECALL_RELATIONS, World


@pytest.fixture(scope="module")
def tiny():
    return generate_corpus("tiny", seed=0)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_same_seed_same_bytes(tmp_path, tiny):
    a = write_corpus(tmp_path / "a", "tiny", seed=0)
    b = write_corpus(tmp_path / "b", "tiny", seed=0)
    assert {d: _sha(p) for d, p in a.items()} == {d: _sha(p) for d, p in b.items()}
    # reused, not rewritten, when the manifest matches
    mtime = os.path.getmtime(a["knowledge"])
    write_corpus(tmp_path / "a", "tiny", seed=0)
    assert os.path.getmtime(a["knowledge"]) == mtime
    # the files hold exactly the generated documents, tagged domain/lang
    docs = list(iter_tagged_documents(str(a["arithmetic"])))
    assert [(d.text, d.tag) for d in docs] == [(d.text, d.tag) for d in tiny["arithmetic"]]
    other = generate_corpus("tiny", seed=1)
    assert other["knowledge"][0].text != tiny["knowledge"][0].text


def test_domains_languages_and_sizes(tiny):
    assert set(tiny) == {"knowledge", "arithmetic", "retrieval", "tools", "code"}
    for domain, docs in tiny.items():
        assert docs and all(d.tag.startswith(domain + "/") for d in docs)
    for domain in ("knowledge", "arithmetic", "tools"):
        langs = {d.tag.split("/")[1] for d in tiny[domain]}
        assert set(LANGS) <= langs, (domain, langs)
    assert sum(len(d.text) for d in tiny["knowledge"]) >= 250_000
    # long retrieval documents exist (several thousand tokens: > 6000 characters)
    assert max(len(d.text) for d in tiny["retrieval"]) > 6000


def test_tokenizer_corpus_is_a_proportional_prefix():
    texts = list(tokenizer_corpus("tiny", max_bytes=200_000))
    assert 150_000 < sum(len(t.encode()) for t in texts) <= 200_000
    assert texts == list(tokenizer_corpus("tiny", max_bytes=200_000))
    assert any("<|user|>" in t for t in texts) and any(t.startswith("# ") for t in texts)


def test_chat_format_of_reasoning_and_tool_documents(tiny):
    from kexaone.tokenizer.chat import parse_assistant

    think = re.compile(r"^<\|user\|>\n.+<\|endofturn\|>\n<\|assistant\|>\n<think>\n(.*)</think>\n\n(.+)<\|endofturn\|>\n$",
                       re.S)
    n_reason = n_plain = 0
    for d in tiny["arithmetic"]:
        m = think.match(d.text)
        assert m, d.text
        if m.group(1).strip():
            n_reason += 1
        else:
            n_plain += 1
        reply = d.text.split("<|assistant|>\n", 1)[1].removesuffix("<|endofturn|>\n").removesuffix("<|endofturn|>")
        assert parse_assistant(reply).content.strip() == m.group(2).strip()
    assert n_reason > 3 * n_plain > 0  # mostly reasoning mode, some non-reasoning
    for d in tiny["tools"]:
        assert "<|tool_declare|>\n<tool>" in d.text and "<tool_call>{\"name\": " in d.text
        assert "<|tool|>\n<tool_result>" in d.text and d.text.endswith("<|endofturn|>\n")
        call = re.search(r"<tool_call>(.*?)</tool_call>", d.text).group(1)
        assert set(json.loads(call)) == {"name", "arguments"}


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99_999), st.integers(0, 99_999))
def test_column_reasoning_is_correct(a, b):
    assert add_steps(a, b)[-1] == f"So {a} + {b} = {a + b}."
    hi, lo = max(a, b), min(a, b)
    assert sub_steps(hi, lo)[-1] == f"So {hi} - {lo} = {hi - lo}."
    d = b % 8 + 2
    assert mul_steps(a, d)[-1] == f"So {a} × {d} = {a * d}."
    # every intermediate addition line is itself correct arithmetic
    for line in add_steps(a, b)[:-1]:
        lhs, rhs = line.split(" = ")
        assert sum(int(x) for x in lhs.split(" + ")) == int(rhs.split(",")[0])


def test_every_problem_kind_answers_correctly():
    rng = random.Random(0)
    for _ in range(300):
        kind = rng.choice(KINDS)
        p = make_problem(kind, rng, rng.choice(LANGS))
        nums = [int(x) for x in p.key.split("|")[1:]]
        op = p.key.split("|")[0]
        expect = {"add": lambda: nums[0] + nums[1], "sub": lambda: nums[0] - nums[1],
                  "mul": lambda: nums[0] * nums[1], "cmp": lambda: max(nums),
                  "two_step": lambda: nums[0] + nums[1] - nums[2]}[op]()
        assert p.answer == str(expect), p
        assert expect >= 0


def test_world_is_deterministic_and_holds_out_a_language_per_fact():
    w1, w2 = World(0, "tiny"), World(0, "tiny")
    assert [(f.relation, f.subject, f.answer("en"), f.heldout_lang) for f in w1.facts] == \
           [(f.relation, f.subject, f.answer("en"), f.heldout_lang) for f in w2.facts]
    held = w1.heldout_facts
    assert held and all(f.relation in RECALL_RELATIONS for f in held)
    assert {f.heldout_lang for f in held} == set(LANGS)  # every language is held out for some fact


def test_heldout_facts_never_stated_in_their_language(tiny):
    world = World(0, "tiny")
    text = "\n".join(d.text for d in tiny["knowledge"])
    for f in world.heldout_facts:
        lang = f.heldout_lang
        for v in range(3):
            assert f.statement(lang, v) not in text, (f, lang)
        assert f.question(lang) not in text
        # ... but it is taught in the other languages
        assert any(f.statement(o, v) in text for o in LANGS if o != lang for v in range(3))


def test_code_documents_skip_heldout_files():
    headers = set()
    for i, d in enumerate(code_documents()):
        headers.add(d.text.split("\n", 1)[0][2:])
        if i > 400:
            break
    assert headers and not any(is_heldout_file(h) for h in headers)
    assert all(is_heldout_file(d.text.split("\n", 1)[0][2:]) for _, d in zip(range(50), code_documents(heldout=True)))
    chunks = split_code("\n".join(f"def f{i}():\n    return {i}\n" for i in range(100)), min_lines=10, max_lines=30)
    assert all(c.startswith("def ") for c in chunks) and all(len(c.split("\n")) <= 30 for c in chunks)

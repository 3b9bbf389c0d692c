"""The embedded SFT set: split hygiene, determinism, both reasoning modes, and references that the reference
answers satisfy (so a reward or score built on them is right for a correct reply)."""

import json
import re

import pytest

from kexaone.data.synthetic import arithmetic
from kexaone.data.synthetic.chat_set import CATEGORIES, build_chat_set, is_heldout_key, write_chat_set
from kexaone.tokenizer.chat import render


@pytest.fixture(scope="module")
def chat_set():
    return build_chat_set(n_train=480, n_heldout=80, world_size="tiny")


def test_every_category_in_both_splits_and_no_key_leaks(chat_set):
    assert set(chat_set.stats["train"]) == set(CATEGORIES)
    assert set(chat_set.stats["heldout"]) == set(CATEGORIES)
    train_keys = {e.key for e in chat_set.train}
    assert not train_keys & {e.key for e in chat_set.heldout}
    for e in chat_set.train:
        if e.category == "reasoning":
            assert not arithmetic.is_reserved(e.key)
        else:
            assert not is_heldout_key(e.key)
    assert len({e.key for e in chat_set.heldout}) == len(chat_set.heldout)


def test_deterministic(chat_set):
    again = build_chat_set(n_train=480, n_heldout=80, world_size="tiny")
    assert [e.messages for e in again.train] == [e.messages for e in chat_set.train]


def test_reasoning_and_plain_forms_render(chat_set):
    ex = next(e for e in chat_set.train if e.category == "docqa")
    on, off = ex.record(True), ex.record(False)
    assert on["messages"][-1]["reasoning_content"] and "reasoning_content" not in off["messages"][-1]
    text_on = render(on["messages"], enable_thinking=True)
    text_off = render(off["messages"], enable_thinking=False)
    assert on["messages"][-1]["reasoning_content"] in text_on
    assert "<think>\n\n</think>\n\n" + ex.reference["answer"] in text_off


def test_references_hold_for_the_reference_replies(chat_set):
    for e in chat_set.train + chat_set.heldout:
        reply = next(m for m in e.messages if m["role"] == "assistant")
        if "answer" in e.reference:
            assert e.reference["answer"] in reply["content"]
        elif "tool_call" in e.reference:
            call = reply["tool_calls"][0]["function"]
            assert e.reference["tool_call"] == {"name": call["name"], "arguments": call["arguments"]}
        elif "tests" in e.reference:
            code = re.search(r"```python\n(.*?)```", reply["content"], re.S).group(1)
            ns: dict = {}
            exec(code, ns)
            for t in e.reference["tests"]:
                assert repr(eval(t["call"], ns)) == t["expected"]
        elif "refuse" in e.reference:
            assert isinstance(e.reference["refuse"], bool)
        else:
            assert e.reference["target"] == reply["content"]


def test_written_files(tmp_path, chat_set):
    paths = write_chat_set(tmp_path, chat_set)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    held = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    assert len(train) == len(chat_set.train) and len(held) == 2 * len(chat_set.heldout)
    modes = {r["enable_thinking"] for r in train}
    assert modes == {True, False}
    assert {r["enable_thinking"] for r in held} == {True, False}


def test_default_set_cache_follows_the_generator(tmp_path, monkeypatch):
    """The SFT stage's cached copy of the default set is named by its content: a changed generator gets a new copy
    (an earlier run trained on a stale one after the safety strings grew), an unchanged one reuses it."""
    from types import SimpleNamespace

    import kexaone.data.synthetic.chat_set as chat_set_module
    from kexaone.train.sft import default_set_files

    monkeypatch.setenv("KEXAONE_CACHE", str(tmp_path))
    cfg = SimpleNamespace(default_examples=60, seed=0)
    first = default_set_files(cfg)
    assert default_set_files(cfg) == first
    fresh = chat_set_module.chat_set_texts(build_chat_set(n_train=60, seed=0), 0)
    assert first["train"].read_text(encoding="utf-8") == fresh["train"]

    real = chat_set_module.build_chat_set

    def changed(*a, **kw):  # one more example: what an edit of the generator does to the content
        out = real(*a, **kw)
        out.train.append(out.train[0])
        return out

    monkeypatch.setattr(chat_set_module, "build_chat_set", changed)
    second = default_set_files(cfg)
    assert second["train"].parent != first["train"].parent
    assert len(second["train"].read_text(encoding="utf-8").splitlines()) == 61

"""Property tests: the round trip decode(encode(x)) == NFC(fix_surrogates(x)) for arbitrary text, including
unpaired surrogates and control characters, on a small trained SuperBPE tokenizer."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexaone.tokenizer import pretokenize
from kexaone.tokenizer.superbpe import train_superbpe

CORPUS = [
    ("the cat sat on the mat and the dog sat on the log\n", "en"),
    ("고양이가 매트 위에 앉았고 개는 통나무 위에 앉았다\n", "ko"),
    ("猫はマットの上に座った。\n", "ja"),
    ("Der Hund saß auf dem Baumstamm, über die Straße.\n", None),
    ("x = [i ** 2 for i in range(10)]  # squares\n", "code"),
] * 40


@pytest.fixture(scope="module")
def tok():
    return train_superbpe(CORPUS, 500, superword_fraction=0.3, workers=1, show_progress=False)


# Deterministic (derandomize) and fast; the module fixture is read-only, so sharing it across examples is safe.
PROPS = settings(max_examples=250, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any code point except surrogates, plus explicit surrogates/combining marks/controls so they occur often.
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\u0301", "\u0308", "\u1100", "\u1161", "\u11a8",
                         "\x00", "\x1b", "\r", "\n", "\t", " ", "\u200d", "\U0001F600", "é", "각"]),
    ),
    max_size=60,
)


@PROPS
@given(text=TEXT)
def test_round_trip_property(tok, text):
    expected = unicodedata.normalize("NFC", pretokenize.fix_surrogates(text))
    assert tok.decode(tok.encode(text)) == expected


@PROPS
@given(text=TEXT)
def test_fix_surrogates_gives_valid_utf8(text):
    fixed = pretokenize.fix_surrogates(text)
    fixed.encode("utf-8")  # would raise on any surrogate left
    if not any("\ud800" <= c <= "\udfff" for c in text):
        assert fixed == text


@PROPS
@given(texts=st.lists(TEXT, max_size=8))
def test_batch_equals_single(tok, texts):
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


@PROPS
@given(data=st.binary(max_size=40))
def test_byte_level_alphabet_round_trip(data):
    assert pretokenize.token_to_bytes(pretokenize.bytes_to_token(data)) == data

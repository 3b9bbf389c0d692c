"""Shared helpers for the data tests (no tests here): a real tiny byte-level BPE tokenizer trained on the fly,
wrapped with the attributes kexaone.data relies on (encode_batch, encode_with_offsets, vocab_size,
eot_id, pad_id, to_str)."""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SAMPLE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Miravel is a city in Norland. Zorvek Talin was born in Miravel in 1931.",
    "def add(a, b):\n    return a + b\n",
    "서울은 한국의 수도이다. 東京は日本の首都です。 Hà Nội là thủ đô của Việt Nam.",
    "Der schnelle braune Fuchs springt. El rápido zorro marrón salta.",
] * 4


class TinyTokenizer:
    """A real `tokenizers` byte-level BPE with KExaoneTokenizer's special-id attributes."""

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        self.pad_id = tok.token_to_id("<|pad|>")
        self.eot_id = tok.token_to_id("<|endoftext|>")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def to_str(self) -> str:
        return self._tok.to_str()


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 320) -> TinyTokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|pad|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(SAMPLE_TEXTS, trainer=trainer)
    return TinyTokenizer(tok)


class ShrunkVocab(TinyTokenizer):
    """The same tokenizer claiming a smaller vocabulary: its ids overflow it (a mismatched tokenizer)."""

    @property
    def vocab_size(self) -> int:
        return 50

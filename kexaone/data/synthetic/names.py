"""Pronounceable pseudo-words for the synthetic world and the retrieval records.

Names are written in Latin script in every language of the corpus, as new proper names usually are when they first
appear in Korean or Japanese text; this keeps cross-lingual recall a test of the *fact*, not of transliteration.
Generation is a pure function of a `random.Random`, so the same seed always gives the same names.
"""

from __future__ import annotations

import random

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "dr", "kr", "st", "tr",
           "h", "j", "w", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou", "a", "e", "o")
_CODAS = ("", "", "", "n", "r", "l", "s", "k", "m", "th", "x")


def pseudo_word(rng: random.Random, syllables: int) -> str:
    """One capitalised word of `syllables` onset-vowel-coda syllables (only the last one gets a coda, so words
    stay easy to read and tokenize)."""
    parts = []
    for i in range(syllables):
        parts.append(rng.choice(_ONSETS) + rng.choice(_VOWELS))
    parts.append(rng.choice(_CODAS))
    return "".join(parts).capitalize()


class NameFactory:
    """Draws names that are unique across every namespace it has served (no person shares a city's name)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, min_syllables: int = 2, max_syllables: int = 3) -> str:
        for _ in range(10_000):
            w = pseudo_word(self.rng, self.rng.randint(min_syllables, max_syllables))
            if w not in self.used and len(w) >= 4:
                self.used.add(w)
                return w
        raise RuntimeError("name space exhausted")  # unreachable for the sizes used here

    def person(self) -> str:
        for _ in range(10_000):
            full = f"{pseudo_word(self.rng, self.rng.randint(1, 2))} {pseudo_word(self.rng, 2)}"
            if full not in self.used and len(full) >= 7:
                self.used.add(full)
                return full
        raise RuntimeError("name space exhausted")

"""Knowledge documents: the facts of the synthetic world stated in six languages, several phrasings each.

Documents come in rounds. Each round holds one profile per subject (all its facts in one language, the language
rotating from round to round so every subject is profiled in every language), question-answer sheets covering
every fact once (one language per sheet, rotating), and parallel sheets that state a third of the facts in two
languages side by side (the bridge that lets a fact learned in one language be recalled in another).
A fact is never written in its held-out language (`Fact.allowed`), whatever the document type.

This module only produces documents; sizes and file writing are in kexaone.data.synthetic.corpus.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from kexaone.data.sources import Document
from kexaone.data.synthetic.languages import LANGS
from kexaone.data.synthetic.world import Fact, World

DOMAIN = "knowledge"


def _profile(subject: str, facts: list[Fact], lang: str, rng: random.Random) -> str:
    lines = [f.statement(lang, rng.randrange(3)) for f in facts if f.allowed(lang)]
    rng.shuffle(lines)
    return subject + "\n" + " ".join(lines)


def _qa_sheet(facts: list[Fact], lang: str) -> str:
    return "\n\n".join(f.qa(lang) for f in facts)


def _parallel(facts: list[Fact], pairs: list[tuple[str, str]], rng: random.Random) -> str:
    lines = []
    for f, (a, b) in zip(facts, pairs):
        lines.append(f"[{a}] {f.statement(a, rng.randrange(3))}\n[{b}] {f.statement(b, rng.randrange(3))}")
    return "\n".join(lines)


def knowledge_documents(world: World, seed: int = 0, rounds: int | None = None) -> Iterator[Document]:
    """Endless (or `rounds` rounds of) knowledge documents; deterministic for (world, seed)."""
    subjects = list(world.facts_by_subject.items())
    facts = world.facts
    r = 0
    while rounds is None or r < rounds:
        rng = random.Random(f"kexaone-knowledge|{seed}|{r}")
        docs: list[Document] = []
        for k, (subject, sfacts) in enumerate(subjects):
            lang = LANGS[(r + k) % len(LANGS)]
            if any(f.allowed(lang) for f in sfacts):
                docs.append(Document(_profile(subject, sfacts, lang, rng), f"{DOMAIN}/{lang}"))
        order = list(range(len(facts)))
        rng.shuffle(order)
        for start in range(0, len(order), 6):
            lang = LANGS[(r + start // 6) % len(LANGS)]
            chunk = [facts[i] for i in order[start:start + 6] if facts[i].allowed(lang)]
            if chunk:
                docs.append(Document(_qa_sheet(chunk, lang), f"{DOMAIN}/{lang}"))
        rng.shuffle(order)
        third = order[: len(order) // 3]
        for start in range(0, len(third), 4):
            chunk, pairs = [], []
            for i in third[start:start + 4]:
                f = facts[i]
                a, b = rng.sample([lang for lang in LANGS if f.allowed(lang)], 2)
                chunk.append(f)
                pairs.append((a, b))
            docs.append(Document(_parallel(chunk, pairs, rng), f"{DOMAIN}/multi"))
        rng.shuffle(docs)
        yield from docs
        r += 1

"""Curricula: a sequence of stages, each with its own data mixture and token budget, and a resumable loader.

K-EXAONE pre-trains in three stages, foundational knowledge, then domain expertise, then reasoning (SPEC section 3).
`default_curriculum` reproduces that shape on the embedded synthetic corpus: knowledge first, code and
arithmetic next, reasoning, tool use and long-context retrieval last, every stage rehearsing all earlier domains.
User data given with `--data` joins every stage.

`CurriculumLoader` yields the batches of the current stage (a `PackedBatches` per stage) and moves to the next
stage once the current one has consumed its token budget (global tokens, so every rank switches at the same step).
After the last stage it keeps serving the last stage's mixture. Its `state_dict()` holds the stage and that stage's
loader position, so a resumed run continues exactly.

This module does not generate data (kexaone.data.synthetic) or tokenize it (kexaone.data.shards).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kexaone.data.packing import PackedBatches
from kexaone.data.shards import TokenShards, build_token_shards
from kexaone.data.sources import parse_spec

STATE_VERSION = 1
DEFAULT_STAGE_FRACTIONS = (0.5, 0.3, 0.2)
CHARS_PER_WARMUP_TOKEN = 4
"""Characters of warm-up documents written per warm-up token: about twice what is needed, so the warm-up never
wraps around to a document it has read (the default run's 8192-token tokenizer packs the dense forms at 1.86
characters per token, measured 2026-12-03)."""
SYNTHETIC_HELDOUT_DOCS = 40
"""Documents per (domain, language) tag the default data holds out of pre-training for evaluation; later stages
that rehearse the same sources (SFT, context extension) hold out the same ones."""

# Domain weights of the three default stages (the synthetic corpus's domains). Every stage rehearses every domain.
# Code, the hardest to model, and retrieval, whose question-answer pairs teach copying from context, get large
# shares throughout; tool dialogues, which a model learns within a few hundred steps, a small one until the
# reasoning stage.
DEFAULT_STAGE_WEIGHTS = (
    ("foundational-knowledge", {"knowledge": 0.30, "code": 0.25, "arithmetic": 0.15, "retrieval": 0.25,
                                "tools": 0.05}),
    ("domain-expertise", {"knowledge": 0.20, "code": 0.35, "arithmetic": 0.20, "retrieval": 0.20, "tools": 0.05}),
    ("reasoning", {"knowledge": 0.15, "code": 0.15, "arithmetic": 0.30, "retrieval": 0.25, "tools": 0.15}),
)


@dataclass(frozen=True)
class CurriculumStage:
    """One stage: a mixture of `path[@weight]` source specs and the global tokens it lasts."""

    name: str
    mixture: tuple[str, ...]
    tokens: int

    def __post_init__(self):
        if not self.name:
            raise ValueError("a curriculum stage needs a name")
        if isinstance(self.mixture, str):
            object.__setattr__(self, "mixture", (self.mixture,))
        object.__setattr__(self, "mixture", tuple(self.mixture))
        if not self.mixture:
            raise ValueError(f"stage {self.name!r} has an empty mixture")
        for spec in self.mixture:
            parse_spec(spec)  # validates the weight
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise ValueError(f"stage {self.name!r}: tokens must be a positive int, got {self.tokens!r}")


@dataclass(frozen=True)
class Curriculum:
    stages: tuple[CurriculumStage, ...]

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError("a curriculum needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"curriculum stage names must be unique, got {names}")

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.stages)

    def specs(self) -> list[str]:
        """Every distinct source path used by any stage (weights stripped), in first-use order."""
        seen: dict[str, None] = {}
        for s in self.stages:
            for spec in s.mixture:
                seen.setdefault(parse_spec(spec).path, None)
        return list(seen)

    def to_dict(self) -> dict:
        return {"stages": [{"name": s.name, "mixture": list(s.mixture), "tokens": s.tokens} for s in self.stages]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Curriculum":
        try:
            return cls(tuple(CurriculumStage(s["name"], tuple(s["mixture"]), int(s["tokens"])) for s in d["stages"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a curriculum dict needs stages of {{name, mixture, tokens}}: {e}") from None


def default_curriculum(
    sources: str | os.PathLike | Mapping[str, str],
    total_tokens: int,
    fractions: Sequence[float] = DEFAULT_STAGE_FRACTIONS,
    extra: Sequence[str] = (),
    extra_share: float = 0.3,
    copy_warmup_tokens: int = 0,
    copy_warmup_source: str | None = None,
) -> Curriculum:
    """The K-EXAONE-like three-stage curriculum over the synthetic corpus.

    sources: the directory `kexaone.data.synthetic.write_corpus` wrote, or {domain: spec path}.
    total_tokens: global tokens over the three stages, split by `fractions` (foundational knowledge, domain
    expertise, reasoning). extra: user `path[@weight]` specs added to every stage; together they take `extra_share`
    of each stage, split among themselves by their weights.
    copy_warmup_tokens: when > 0, a first stage `copy-warmup` of that many tokens on `copy_warmup_source` (a
    corpus file, e.g. kexaone.data.synthetic.corpus.write_copy_warmup_corpus: fresh retrieval-dense documents,
    trained on their answers only) or, without one, on the retrieval domain. A small model learns to copy from its
    context only after several hundred updates on such documents, far more than its share of a mixed curriculum
    gives it on a CPU budget (benchmarks/results/induction_study.md).
    """
    if isinstance(sources, (str, os.PathLike)):
        root = Path(sources)
        paths = {d: str(root / f"{d}.jsonl") for _, w in DEFAULT_STAGE_WEIGHTS for d in w}
    else:
        paths = dict(sources)
    if len(fractions) != len(DEFAULT_STAGE_WEIGHTS) or any(f <= 0 for f in fractions):
        raise ValueError(f"fractions must be {len(DEFAULT_STAGE_WEIGHTS)} positive numbers, got {list(fractions)}")
    if total_tokens < len(fractions):
        raise ValueError(f"total_tokens must be >= {len(fractions)}, got {total_tokens}")
    if extra and not 0 < extra_share < 1:
        raise ValueError(f"extra_share must be in (0, 1), got {extra_share}")
    extra_specs = [parse_spec(s) for s in extra]
    extra_total = sum(s.weight for s in extra_specs)
    norm = sum(fractions)
    stages, used = [], 0
    if copy_warmup_tokens > 0:
        source = copy_warmup_source or paths.get("retrieval")
        if source is None:
            raise ValueError("default_curriculum: a copy warm-up needs copy_warmup_source or a retrieval domain")
        stages.append(CurriculumStage("copy-warmup", (str(source),), copy_warmup_tokens))
    for i, ((name, weights), frac) in enumerate(zip(DEFAULT_STAGE_WEIGHTS, fractions)):
        tokens = total_tokens - used if i == len(fractions) - 1 else max(1, int(total_tokens * frac / norm))
        used += tokens
        base = 1.0 - extra_share if extra_specs else 1.0
        missing = [d for d in weights if d not in paths]
        if missing:
            raise ValueError(f"default_curriculum: no source for domain(s) {missing}; give {{domain: path}}")
        mix = [f"{paths[d]}@{w * base:.6g}" for d, w in weights.items()]
        mix += [f"{s.path}@{extra_share * s.weight / extra_total:.6g}" for s in extra_specs]
        stages.append(CurriculumStage(name, tuple(mix), tokens))
    return Curriculum(tuple(stages))


class CurriculumLoader:
    """Batches of a curriculum, stage after stage (see the module docstring).

    shards: {source path: TokenShards} for every path of the curriculum (see `build_curriculum_shards`). The other
    arguments are those of PackedBatches (batch_size is the global batch); stage i's loader is seeded with
    (seed, i) so stages draw different document orders.
    """

    def __init__(
        self,
        curriculum: Curriculum,
        shards: Mapping[str, TokenShards],
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        heldout: float | int = 0.01,
    ):
        missing = [p for p in curriculum.specs() if p not in shards]
        if missing:
            raise ValueError(f"no TokenShards for curriculum source(s) {missing}")
        self.curriculum, self.shards = curriculum, dict(shards)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size, self.heldout = seed, rank, world_size, heldout
        self.stage_index = 0
        self.tokens_before_stage = 0  # global tokens consumed by finished stages
        self._loader = self._make(0)
        self.stage_name: str = curriculum.stages[0].name
        """Stage of the batch most recently yielded (the first stage before any)."""

    def _make(self, i: int) -> PackedBatches:
        stage = self.curriculum.stages[i]
        sources = [(self.shards[parse_spec(s).path], parse_spec(s).weight) for s in stage.mixture]
        return PackedBatches(sources, self.seq_len, self.batch_size, seed=self.seed * 1009 + i, rank=self.rank,
                             world_size=self.world_size, heldout=self.heldout)

    @property
    def stage(self) -> CurriculumStage:
        return self.curriculum.stages[self.stage_index]

    @property
    def tokens_consumed(self) -> int:
        """Global tokens yielded so far over all stages."""
        return self.tokens_before_stage + self._loader.tokens_consumed

    def __iter__(self):
        return self

    def __next__(self):
        last = len(self.curriculum.stages) - 1
        if self.stage_index < last and self._loader.tokens_consumed >= self.stage.tokens:
            self.tokens_before_stage += self._loader.tokens_consumed
            self.stage_index += 1
            self._loader = self._make(self.stage_index)
        batch = next(self._loader)
        self.stage_name = self.stage.name
        return batch

    def _identity(self) -> list:
        """The curriculum with each source named by its content fingerprint rather than its path, so a resumed
        run may find the same data in another directory."""
        return [
            [s.name, s.tokens, [[self.shards[parse_spec(m).path].fingerprint, parse_spec(m).weight]
                                for m in s.mixture]]
            for s in self.curriculum.stages
        ]

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "curriculum": self._identity(),
            "stage_index": self.stage_index,
            "tokens_before_stage": self.tokens_before_stage,
            "stage_name": self.stage_name,
            "loader": self._loader.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported CurriculumLoader state version {state.get('version')!r}")
        if state.get("curriculum") != self._identity():
            raise ValueError("cannot resume: the saved curriculum differs from this loader's")
        i = int(state["stage_index"])
        loader = self._make(i)
        loader.load_state_dict(state["loader"])
        self.stage_index, self._loader = i, loader
        self.tokens_before_stage = int(state["tokens_before_stage"])
        self.stage_name = state.get("stage_name", self.stage.name)

    def heldout_documents(self) -> list[tuple[TokenShards, np.ndarray]]:
        """(TokenShards, held-out document indices) for every source of the curriculum (for evaluation)."""
        return [(self.shards[p], self.shards[p].split_indices(self.heldout)[1]) for p in self.curriculum.specs()]


def build_curriculum_shards(curriculum: Curriculum, tokenizer: Any, cache_dir: str | os.PathLike,
                            num_workers: int | None = None) -> dict[str, TokenShards]:
    """Tokenize (or load from the cache) every source of a curriculum."""
    return {p: build_token_shards(p, tokenizer, cache_dir, num_workers=num_workers) for p in curriculum.specs()}


def synthetic_training_data(
    tokenizer: Any,
    corpus_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    total_tokens: int,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    size: str = "default",
    heldout: float | int = SYNTHETIC_HELDOUT_DOCS,
    extra: Sequence[str] = (),
    num_workers: int | None = None,
    corpus_seed: int = 0,
    copy_warmup_tokens: int = 0,
) -> tuple[CurriculumLoader, list[tuple[TokenShards, np.ndarray]]]:
    """Everything a trainer needs for the default data: write (or reuse) the synthetic corpus of `size` in
    `corpus_dir`, tokenize it into `cache_dir`, and return (the default-curriculum loader, held-out documents).
    heldout (SYNTHETIC_HELDOUT_DOCS) keeps that many documents per (domain, language) tag out of training for
    evaluation. `corpus_seed` picks the generated world (build the held-out tasks with the same one); `seed` only
    orders the data. copy_warmup_tokens: see `default_curriculum`."""
    from kexaone.data.synthetic.corpus import write_copy_warmup_corpus, write_corpus

    paths = write_corpus(corpus_dir, size=size, seed=corpus_seed)
    warmup_source = None
    if copy_warmup_tokens > 0:
        warmup_source = str(write_copy_warmup_corpus(corpus_dir, CHARS_PER_WARMUP_TOKEN * copy_warmup_tokens,
                                                     seed=corpus_seed))
    cur = default_curriculum({d: str(p) for d, p in paths.items()}, total_tokens, extra=extra,
                             copy_warmup_tokens=copy_warmup_tokens, copy_warmup_source=warmup_source)
    shards = build_curriculum_shards(cur, tokenizer, cache_dir, num_workers=num_workers)
    loader = CurriculumLoader(cur, shards, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size,
                              heldout=heldout)
    return loader, loader.heldout_documents()

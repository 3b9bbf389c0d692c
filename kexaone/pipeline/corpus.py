"""What the speedrun's stages read: tokenizer training text, held-out text for the tokenizer comparison and the
held-out loss, the held-out tasks, the induction probes scored during pre-training, chat questions and decode-speed
prompts.

Everything comes from the embedded synthetic corpus (kexaone.data.synthetic) and, when given, the user's `--data`;
the tokenizer comparison also measures the evaluation corpora under `shared/corpora` when they are present
(FLORES-200 sentences, STEM text, source code: evaluation-only, never trained on). The held-out documents of the
loss evaluation are exactly those pre-training held out (same curriculum, same split), so no number here is
measured on training data.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kexaone.pipeline.budgets import Budget

TEXT_LANGS = ("en", "ko", "ja", "de", "es", "vi")


def corpora_dir() -> Path:
    """The shared evaluation corpora (env KEXAONE_CORPORA, else <repo>/../shared/corpora)."""
    env = os.environ.get("KEXAONE_CORPORA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "corpora"


# ---------------------------------------------------------------------------------------------- tokenizer
def tokenizer_texts(data_specs: Sequence[str], max_bytes: int, size: str, seed: int = 0) -> list[str]:
    """The tokenizer's training documents: a fair sample of the synthetic corpus; with --data, a third of the bytes
    come from the user's sources instead (read in order, each source an equal share)."""
    from kexaone.data.synthetic import tokenizer_corpus

    if max_bytes < 1:
        raise ValueError(f"tokenizer training bytes must be >= 1, got {max_bytes}")
    user_bytes = max_bytes // 3 if data_specs else 0
    texts = list(tokenizer_corpus(size, seed=seed, max_bytes=max_bytes - user_bytes))
    if data_specs:
        from kexaone.data.sources import iter_documents, parse_spec

        share = user_bytes // len(data_specs)
        for spec in data_specs:
            used = 0
            for doc in iter_documents(parse_spec(spec).path):
                b = len(doc.encode("utf-8"))
                if used + b > share and used > 0:
                    break
                texts.append(doc)
                used += b
    return texts


def _lines(path: Path, max_lines: int) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return [ln.rstrip("\n") for ln in itertools.islice(f, max_lines) if ln.strip()]


def tokenizer_eval_groups(budget: Budget, seed: int = 0) -> dict[str, list[str]]:
    """Held-out text per group for bytes/token: synthetic documents of another world (a different seed, so not in
    the tokenizer's training text) per domain, plus the evaluation corpora when present."""
    from kexaone.data.synthetic import DOMAINS, domain_documents

    groups: dict[str, list[str]] = {}
    per_domain = 60_000 if budget.name != "tiny" else 15_000  # characters per synthetic domain
    for d in DOMAINS:
        docs, n = [], 0
        for doc in domain_documents(d, "tiny", seed=seed + 1000):
            docs.append(doc.text)
            n += len(doc.text)
            if n >= per_domain:
                break
        if docs:
            groups[f"synthetic {d}"] = docs
    root = corpora_dir()
    lines = 300 if budget.name != "tiny" else 60
    for lang in TEXT_LANGS:
        p = root / "text" / f"{lang}.txt"
        if p.is_file():
            groups[f"FLORES {lang}"] = _lines(p, lines)
    if (root / "text" / "stem.txt").is_file():
        groups["STEM (LaTeX)"] = _lines(root / "text" / "stem.txt", lines)
    code = sorted((root / "code").glob("*")) if (root / "code").is_dir() else []
    if code:
        groups["code (9 languages)"] = [p.read_text(encoding="utf-8", errors="replace")[:20_000 if lines > 60 else 4000]
                                        for p in code if p.is_file()]
    return groups


# ---------------------------------------------------------------------------------------------- held-out LM data
def heldout_groups(tokenizer: Any, budget: Budget, data_specs: Sequence[str], seed: int = 0
                   ) -> dict[tuple[str, str], list[str]]:
    """The documents pre-training held out, grouped by (domain, language), at most budget.heldout_docs each.
    Rebuilds the same curriculum as pre-training (corpus and token caches make this cheap) and decodes the held-out
    documents back to text."""
    from kexaone.data.curriculum import synthetic_training_data
    from kexaone.train.run import cache_root

    _, heldout = synthetic_training_data(
        tokenizer, cache_root() / "synthetic" / budget.corpus_size, cache_root() / "tokens",
        budget.train_steps * budget.seq_len * budget.batch_size, budget.seq_len, budget.batch_size, seed=seed,
        size=budget.corpus_size, extra=tuple(data_specs))
    groups: dict[tuple[str, str], list[str]] = {}
    for shards, idx in heldout:
        for tag, ids in shards.documents_by_tag(idx).items():
            domain, _, lang = tag.partition("/")
            key = (domain or "data", lang or "-")
            docs = groups.setdefault(key, [])
            for i in ids[:max(0, budget.heldout_docs - len(docs))]:
                docs.append(tokenizer.decode(shards.document(int(i)).tolist()))
    return {k: v for k, v in sorted(groups.items()) if v}


def rehearsal_specs(budget: Budget, data_specs: Sequence[str]) -> list[str]:
    """The mixture pre-training ended on (its curriculum's last stage, the user's --data included) as `path@weight`
    specs: what the SFT stage rehearses. Its held-out documents are SYNTHETIC_HELDOUT_DOCS per tag, as in
    pre-training."""
    from kexaone.data.curriculum import default_curriculum
    from kexaone.data.synthetic import write_corpus
    from kexaone.train.run import cache_root

    paths = write_corpus(cache_root() / "synthetic" / budget.corpus_size, budget.corpus_size, seed=0)
    curriculum = default_curriculum({d: str(p) for d, p in paths.items()}, total_tokens=3, extra=tuple(data_specs))
    return list(curriculum.stages[-1].mixture)


# ---------------------------------------------------------------------------------------------- tasks
@dataclass
class TaskSpec:
    name: str
    items: list
    chance: float
    max_new_tokens: int | None
    extract: Callable[[str], str] | None
    description: str = ""


def task_specs(budget: Budget, tokenizer: Any = None, seed: int = 0) -> list[TaskSpec]:
    """The held-out synthetic tasks of the corpus the model was trained on (same size and world seed)."""
    from kexaone.data.synthetic.tasks import build_tasks

    tasks = build_tasks(budget.corpus_size, seed=seed, n_items=budget.task_items, tokenizer=tokenizer,
                        max_prompt_tokens=None if tokenizer is None else budget.seq_len - 16)
    out = []
    for t in tasks.values():
        exact = t.metric == "exact"
        limit = t.max_new_tokens if exact else None
        if limit is not None and budget.answer_tokens_cap is not None:
            limit = min(limit, budget.answer_tokens_cap)
        out.append(TaskSpec(t.name, list(t.items), float(t.chance_baseline), limit, t.extract if exact else None,
                            t.description))
    return out


# ---------------------------------------------------------------------------------------------- induction probe
def induction_probe_callback(tokenizer: Any, budget: Budget, seed: int = 0):
    """The pre-training callback that scores the induction, key-value recall and retrieval-document probes every
    budget.probe_every steps (records of kind "probe" in the run's metrics), or None when the budget turns them
    off. Pass it in the Trainer's `callbacks`; kexaone.eval.induction.probe_onsets / plot_probe_curves read the
    records back."""
    if budget.probe_every <= 0:
        return None
    from kexaone.eval.induction import induction_callback, probe_for_tokenizer

    # The documents probe needs character offsets to find answer tokens; a tokenizer without them gets the token-id
    # probes only.
    documents = hasattr(tokenizer, "encode_with_offsets")
    return induction_callback(probe_for_tokenizer(tokenizer, documents=documents, seed=seed, n=budget.probe_rows),
                              every=budget.probe_every)


# ---------------------------------------------------------------------------------------------- generation
def chat_questions(budget: Budget, seed: int = 0) -> list[str]:
    """User questions for the sampled answers: held-out arithmetic problems (never in training) in several
    languages, which the corpus teaches in both reasoning and non-reasoning mode."""
    from kexaone.data.synthetic.arithmetic import sample_problem

    rng = random.Random(f"kexaone-speedrun-questions|{seed}")
    return [sample_problem(rng, reserved=True).question for _ in range(budget.generation_prompts)]


def speed_prompts(tokenizer: Any, budget: Budget, seed: int = 0) -> list[list[int]]:
    """Prompts for the decode-speed measurement: chat prompts (reasoning mode) for held-out arithmetic problems,
    whose step-by-step answers are long enough to measure."""
    from kexaone.data.synthetic.arithmetic import sample_problem
    from kexaone.tokenizer.chat import render

    rng = random.Random(f"kexaone-speedrun-speed|{seed}")

    n = 1 if budget.name == "tiny" else 2
    prompts = []
    for _ in range(n):
        q = sample_problem(rng, reserved=True).question
        prompts.append(tokenizer.encode(render([{"role": "user", "content": q}], add_generation_prompt=True)))
    return prompts

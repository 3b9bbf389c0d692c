"""Induction and key-value recall probes that run alongside training, and the onset step of their curves.

Two fixed, seeded probe sets of token ids (so they work for any vocabulary and need no tokenizer), and an optional
third of text:
- `induction`: [prefix | span | filler | span] of random ids (kexaone.data.synthetic.recall.repeat_tokens); scored on
  the second copy from its second token on. Prefix and filler lengths vary per row, so the distance back to the
  first copy varies too: a head that attends a fixed offset back cannot pass, only one that finds the previous
  occurrence of the current token and copies what followed it (an induction head).
- `recall`: multi-query associative recall (MQAR, `mqar_tokens`): key-value pairs from disjoint id ranges, then the
  pairs queried again in another order; scored on the queried values.
- `documents` (`probe_for_tokenizer(..., documents=True)`): held-out retrieval documents of the synthetic corpus
  (kexaone.data.synthetic.recall: recall lists with 4-digit keys, repeated runs, pass keys) through a trained
  tokenizer, one per row, scored on their answer tokens. A key and its value are several tokens each, as in the
  speedrun's retrieval task; a model can learn to copy these before it passes the token-id probes (the induction
  study saw that on `small`). Its chance is taken from the curve itself (its first score: the answer tokens the
  document's format predicts without copying, such as separators).

Scores (`score_probe`): accuracy (the scored token is the argmax of the logits one position before) and loss (mean
negative log-prob of the scored tokens, kexaone.model.scoring.logprobs_from_logits). Chance: for `recall`, 1 / pairs
(guessing one of the context's values, what a model that knows the format but cannot retrieve gets); for
`induction`, 1 / the id range (a uniform guess). An untrained model scores about 1 / vocabulary on both.

`induction_callback(probe, every=N)` is a Trainer callback (`cb(trainer, step, record)`): every N steps and at the
last step it scores the model and logs a record of kind "probe" ({"kind": "probe", "step", "induction_acc",
"induction_loss", "recall_acc", "recall_loss"}) through trainer.logger (the step's own record is already written
when callbacks run). `onset_step` finds where a curve rises (definition at the function), `plot_probe_curves` draws
the curves with their onsets.

What it does not do: train, or score text tasks (kexaone.eval.tasks does; the speedrun's retrieval task is the text
counterpart of `recall`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from kexaone.data.synthetic.recall import mqar_tokens, repeat_tokens
from kexaone.model.scoring import logprobs_from_logits

PROBE_NAMES = ("induction", "recall", "documents")
DOCUMENTS_SEED = 10 ** 6
"""Seed of the held-out documents' stream (training draws its retrieval documents from the corpus seed, far below)."""


@dataclass(frozen=True)
class ProbeSet:
    name: str
    ids: torch.Tensor
    """[N, T] long token ids."""
    mask: torch.Tensor
    """[N, T] bool: the scored positions (target-aligned: position t is predicted from ids[:, :t])."""
    chance: float | None
    """Accuracy without the skill; None: the first score of the curve (see `onset_step`'s callers)."""

    def __post_init__(self):
        if self.ids.shape != self.mask.shape or self.ids.dim() != 2:
            raise ValueError(f"ids and mask must both be [N, T], got {tuple(self.ids.shape)} and "
                             f"{tuple(self.mask.shape)}")
        if bool(self.mask[:, 0].any()):
            raise ValueError("position 0 cannot be scored (nothing predicts it)")


@dataclass(frozen=True)
class InductionProbe:
    induction: ProbeSet
    recall: ProbeSet
    documents: ProbeSet | None = None

    def sets(self) -> tuple[ProbeSet, ...]:
        return tuple(ps for ps in (self.induction, self.recall, self.documents) if ps is not None)


def _rect(rows: list[tuple[list[int], list[bool]]], rng: random.Random, id_range: tuple[int, int]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows of different lengths with random ids (never scored; later tokens do not change earlier
    predictions in a causal model) into [N, T] tensors."""
    T = max(len(ids) for ids, _ in rows)
    ids = [r + [rng.randrange(*id_range) for _ in range(T - len(r))] for r, _ in rows]
    mask = [m + [False] * (T - len(m)) for _, m in rows]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool)


def build_probe(vocab_size: int, *, seed: int = 0, n: int = 64, id_range: tuple[int, int] | None = None,
                span: tuple[int, int] = (10, 20), filler: tuple[int, int] = (0, 24), prefix: tuple[int, int] = (0, 8),
                n_pairs: int = 16) -> InductionProbe:
    """Fixed probe sets of `n` rows each for a model of `vocab_size` ids. id_range: the ids the probes draw from
    (default: all but the lowest 16, where tokenizers keep their special tokens); `recall` takes keys from its lower
    half and values from its upper half. span/filler/prefix: (min, max) lengths of the induction rows' parts
    (defaults give rows of at most 72 tokens, longer than the `tiny` preset's 16-token window)."""
    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
    lo, hi = id_range if id_range is not None else (min(16, vocab_size // 2), vocab_size)
    if not 0 <= lo < hi <= vocab_size or hi - lo < 2 * n_pairs:
        raise ValueError(f"id_range must satisfy 0 <= lo < hi <= vocab_size ({vocab_size}) and hold at least "
                         f"2 * n_pairs ({2 * n_pairs}) ids, got {(lo, hi)}")
    if n < 1 or span[0] < 2 or span[0] > span[1]:
        raise ValueError(f"need n >= 1 and span (min, max) with 2 <= min <= max, got n={n}, span={span}")
    rng = random.Random(f"kexaone-induction-probe|{seed}|{vocab_size}|{lo}|{hi}")
    rows = [repeat_tokens(rng, rng.randint(*span), (lo, hi), filler=filler, prefix=prefix) for _ in range(n)]
    ind_ids, ind_mask = _rect(rows, rng, (lo, hi))
    mid = (lo + hi) // 2
    rows = [mqar_tokens(rng, n_pairs, (lo, mid), (mid, hi)) for _ in range(n)]
    rec_ids, rec_mask = _rect(rows, rng, (lo, hi))
    return InductionProbe(ProbeSet("induction", ind_ids, ind_mask, 1.0 / (hi - lo)),
                          ProbeSet("recall", rec_ids, rec_mask, 1.0 / n_pairs))


def probe_for_tokenizer(tokenizer: Any, documents: bool = False, **kwargs: Any) -> InductionProbe:
    """`build_probe` over a tokenizer's ordinary ids (above its special tokens, which never occur in text), plus
    the `documents` set (as many rows as the others) when `documents` is True."""
    specials = list(getattr(tokenizer, "special_ids", {}).values())
    lo = max(specials) + 1 if specials else 0
    probe = build_probe(tokenizer.vocab_size, id_range=(lo, tokenizer.vocab_size), **kwargs)
    if not documents:
        return probe
    rows = probe.induction.ids.shape[0]
    return replace(probe, documents=document_probe_set(tokenizer, n=rows, seed=DOCUMENTS_SEED + kwargs.get("seed", 0)))


def document_probe_set(tokenizer: Any, n: int = 32, seed: int = DOCUMENTS_SEED, max_len: int = 256) -> ProbeSet:
    """`n` retrieval documents (kexaone.data.synthetic.recall.dense_recall_documents(seed)) tokenized by
    `tokenizer` (needs `encode_with_offsets`), one per row, cut at `max_len` tokens, scored on their answer tokens.
    Rows are right-padded with the tokenizer's end-of-text id (never scored)."""
    from kexaone.data.synthetic.recall import answer_token_mask, dense_recall_documents

    if n < 1 or max_len < 2:
        raise ValueError(f"need n >= 1 and max_len >= 2, got n={n}, max_len={max_len}")
    docs = dense_recall_documents(seed=seed)
    rows = []
    for _ in range(n):
        ids, mask = answer_token_mask(tokenizer, next(docs))
        ids, mask = ids[:max_len], mask[:max_len]
        mask[0] = False
        rows.append((ids, mask))
    T = max(len(ids) for ids, _ in rows)
    pad = int(getattr(tokenizer, "eos_id", 0) or 0)
    ids = torch.tensor([r + [pad] * (T - len(r)) for r, _ in rows], dtype=torch.long)
    mask = torch.tensor([m + [False] * (T - len(m)) for _, m in rows], dtype=torch.bool)
    if not bool(mask.any()):
        raise ValueError("the probe documents have no answer tokens (is the tokenizer's encode_with_offsets right?)")
    return ProbeSet("documents", ids, mask, None)


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def score_set(model: torch.nn.Module, ps: ProbeSet, batch_size: int = 32) -> dict[str, float]:
    """{name_acc, name_loss} of one probe set (model in eval mode for the call, its mode restored after)."""
    was_training = model.training
    model.eval()
    dev = _device_of(model)
    hits, nll, count = 0, 0.0, 0
    try:
        for i in range(0, ps.ids.shape[0], batch_size):
            ids, mask = ps.ids[i:i + batch_size].to(dev), ps.mask[i:i + batch_size].to(dev)
            logits = model(ids, compute_mtp=False).logits  # [B, T, V]
            pred = logits[:, :-1].argmax(-1)  # pred[:, t - 1] is the guess for ids[:, t]
            hits += int(((pred == ids[:, 1:]) & mask[:, 1:]).sum())
            nll -= float(logprobs_from_logits(logits, ids, mask).sum())
            count += int(mask.sum())
    finally:
        model.train(was_training)
    return {f"{ps.name}_acc": hits / count, f"{ps.name}_loss": nll / count}


def score_probe(model: torch.nn.Module, probe: InductionProbe, batch_size: int = 32) -> dict[str, float]:
    """Accuracy and loss on both probe sets: {induction_acc, induction_loss, recall_acc, recall_loss}."""
    out: dict[str, float] = {}
    for ps in probe.sets():
        out.update(score_set(model, ps, batch_size))
    return out


def induction_callback(probe: InductionProbe, every: int = 50, batch_size: int = 32
                       ) -> Callable[[Any, int, dict], None]:
    """A Trainer callback scoring `probe` every `every` steps and at the trainer's last step. Each score is logged
    as a "probe" record through trainer.logger (main rank only) and kept in the callback's `history` list."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    history: list[dict[str, Any]] = []

    def cb(trainer: Any, step: int, record: dict) -> None:
        last = getattr(trainer, "total_steps", None)
        if step % every and step != last:
            return
        dist = getattr(trainer, "dist", None)
        if dist is not None and not getattr(dist, "is_main", True):
            return
        model = getattr(trainer, "raw_model", None) or trainer.model
        rec = {"kind": "probe", "step": step, **score_probe(model, probe, batch_size)}
        tokens = getattr(trainer, "tokens_seen", None)
        if tokens is not None:
            rec["tokens"] = tokens
        history.append(rec)
        logger = getattr(trainer, "logger", None)
        if logger is not None:
            logger.log(rec)

    cb.history = history  # type: ignore[attr-defined]
    return cb


def onset_step(steps: Sequence[int], scores: Sequence[float], chance: float, *, fraction: float = 0.5,
               min_rise: float = 0.1, final_points: int = 2, confirm: int = 2) -> int | None:
    """The step at which a probe curve rises from chance toward its final value, or None if it never rises.

    Definition: final = mean of the last `final_points` scores. If final - chance < `min_rise` the skill did not
    form (None). Otherwise the threshold is chance + `fraction` * (final - chance), and the onset is the first
    evaluated step whose score and the next `confirm - 1` scores are all at or above it (one noisy point does not
    count; the last points count as confirmed when fewer remain). Its resolution is the evaluation interval."""
    if len(steps) != len(scores):
        raise ValueError(f"steps and scores differ in length ({len(steps)} vs {len(scores)})")
    if not 0 < fraction < 1 or final_points < 1 or confirm < 1:
        raise ValueError(f"need 0 < fraction < 1, final_points >= 1, confirm >= 1; got {fraction}, "
                         f"{final_points}, {confirm}")
    if not scores:
        return None
    final = sum(scores[-final_points:]) / len(scores[-final_points:])
    if final - chance < min_rise:
        return None
    thr = chance + fraction * (final - chance)
    for i, s in enumerate(steps):
        if all(x >= thr for x in scores[i:i + confirm]):
            return int(s)
    return None  # the curve ends on a point below the threshold right after the only one above it


def probe_onsets(records: Sequence[dict], probe: InductionProbe | None = None, **kwargs: Any
                 ) -> dict[str, int | None]:
    """{name: onset step} of each probe's accuracy curve in "probe" records (e.g. read_metrics(..., "probe")).
    Chance comes from `probe` when given, else 0 for induction, 1/16 for recall (build_probe's default) and the
    first score for documents. A probe without records (e.g. `documents` in a run that did not score it) is left
    out, except the two token-id probes (None when absent)."""
    recs = sorted((r for r in records if r.get("kind", "probe") == "probe"), key=lambda r: r["step"])
    chance = {ps.name: ps.chance for ps in probe.sets()} if probe is not None else _DEFAULT_CHANCE
    out = {}
    for name in PROBE_NAMES:
        pts = [(r["step"], r[f"{name}_acc"]) for r in recs if f"{name}_acc" in r]
        if not pts and name == "documents":
            continue
        out[name] = _onset(pts, chance.get(name), **kwargs) if pts else None
    return out


_DEFAULT_CHANCE: dict[str, float | None] = {"induction": 0.0, "recall": 1 / 16, "documents": None}


def _onset(pts: Sequence[tuple[int, float]], chance: float | None, **kwargs: Any) -> int | None:
    """onset_step of (step, score) points; chance None: the first score is the baseline."""
    ys = [v for _, v in pts]
    return onset_step([s for s, _ in pts], ys, ys[0] if chance is None else chance, **kwargs)


def plot_probe_curves(records: Sequence[dict], out_png: str | Path, title: str = "",
                      chance: dict[str, float] | None = None) -> Path:
    """Accuracy curves of the probe records, one line per probe, the onset marked by a dashed vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kexaone.utils.io import atomic_write_bytes

    recs = sorted((r for r in records if r.get("kind", "probe") == "probe"), key=lambda r: r["step"])
    chance = chance or _DEFAULT_CHANCE
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, color in zip(PROBE_NAMES, ("C0", "C1", "C2")):
        pts = [(r["step"], r[f"{name}_acc"]) for r in recs if f"{name}_acc" in r]
        if not pts:
            continue
        xs, ys = [s for s, _ in pts], [v for _, v in pts]
        ax.plot(xs, ys, color=color, marker=".", label=name)
        on = _onset(pts, chance.get(name, 0.0))
        if on is not None:
            ax.axvline(on, color=color, ls="--", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out

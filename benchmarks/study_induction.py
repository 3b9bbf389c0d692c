"""What moves the onset of in-context retrieval: a study on this machine's CPU (issue 17).

Each run trains a fresh K-EXAONE-family model on token-id data (no tokenizer, so a run starts in seconds) and scores
the induction and key-value recall probes (kexaone.eval.induction) every `eval_every` steps; the onset step of each
curve (kexaone.eval.induction.onset_step) is the number the study compares. The data of a run:
- background rows: a "natural text" stand-in, a fixed random Markov chain over the vocabulary with Zipf-distributed
  token frequencies (each token has 8 likely successors): bigram statistics to learn in the weights and nothing
  to copy, as most of the speedrun's corpus;
- retrieval-dense rows (a `share` of each batch's rows): `mqar` (kexaone.data.synthetic.recall.mqar_tokens: key-value
  pairs from disjoint id ranges of `kv_vocab` ids each, then every pair queried), `repeat` (random spans repeated
  after filler, repeat_tokens) or `passkey` (a 4-id key after a marker id hidden in background, asked for at the
  row's end), instances concatenated until the row is full.
Factors (each a field of RunConfig): data form and share, loss on answers only (synthetic rows score only their
answers; background rows all tokens) or on all tokens, the Muon and AdamW learning rates, curriculum order (the
synthetic rows all in the first or all in the second half of the steps, same total), sequence length (tokens per
step fixed), key/value vocabulary, sliding window, and the place of the first global layer.

Training is a compact loop over the project's model, kexaone.train.optim.build_optimizer and
kexaone.train.schedule (linear warmup, then the peak LRs held), the same as benchmarks/probe_retrieval.py. It stops at
`max_steps`, after `max_seconds`, or once both probes stay above 0.9 for two evaluations.

Usage:
  python benchmarks/study_induction.py --grid s4 [--jsonl benchmarks/results/induction_study.jsonl]
  python benchmarks/study_induction.py --one '{"name": "x", "share": 0.5}'   (one run, printed and appended)
  python benchmarks/study_induction.py --report   (markdown table + plots from the JSONL)
  python benchmarks/study_induction.py --time-step s4 small   (seconds per step of each shape, nothing appended)
Runs already in the JSONL (same name) are skipped, so a grid resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kexaone.config import GLOBAL, SLIDING, KExaoneConfig
from kexaone.data.synthetic.recall import mqar_tokens, repeat_tokens
from kexaone.eval.induction import build_probe, onset_step, score_probe
from kexaone.model.transformer import KExaoneForCausalLM
from kexaone.report.machine import machine_info
from kexaone.train.optim import build_optimizer
from kexaone.train.schedule import WSDSchedule, make_scheduler
from kexaone.utils.io import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSONL = RESULTS / "induction_study.jsonl"
SPECIAL = 16  # ids below this are kept out of the data (markers live here), as a tokenizer keeps its specials
MARKER = 3  # the passkey marker id
AT_STEP = 200  # the step at which the report compares probe losses

# The shapes: `small` is the speedrun's preset; `s4` the smaller shape of the same family (4 layers,
# hidden 128, window 16, MoE with a shared expert, MTP), whose step is several times cheaper.
SHAPES = {
    "small": {},
    "s4": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
               intermediate_size=384, moe_intermediate_size=64, num_experts=16, sliding_window=16),
}


@dataclass
class RunConfig:
    name: str = "baseline"
    factor: str = "baseline"
    """The factor this run varies (the report groups rows by it)."""
    shape: str = "s4"
    vocab_size: int = 256
    """Model vocabulary, which every probe and data id is drawn from (the speedrun's is 8192; at 2048 nothing formed
    within the time a run gets here, see the `vocab` rows)."""
    seed: int = 0
    forms: dict = field(default_factory=lambda: {"mqar": 0.5, "repeat": 0.5})
    share: float = 0.5
    """Share of each batch's rows that are retrieval-dense (the rest background)."""
    answers_only: bool = False
    lr: float = 3e-3
    """Muon LR (the speedrun's)."""
    adamw_lr: float = 3e-2
    """AdamW groups' LR (the speedrun's)."""
    order: str = "uniform"
    """uniform | early (all synthetic rows in the first half of the steps, at twice the share) | late."""
    seq_len: int = 64
    tokens_per_step: int = 1024
    kv_vocab: int | None = None
    """Ids per key range and per value range of mqar rows (None: half of the vocabulary each, like the probe)."""
    n_pairs: int = 16
    gap: int = 0
    """Background tokens between an mqar row's pairs and its queries, and at least that many between the two copies
    of a repeated span: with gap >= window, no sliding layer can see from a query to its pair."""
    window: int | None = None
    """Sliding window (None: the shape's)."""
    first_global: int | None = None
    """Index of the first global layer (later layers repeat L/G with the shape's pattern; the last stays global)."""
    tokenizer: str | None = None
    """A trained kexaone tokenizer directory, needed by the `docs` form (vocab_size must be its vocabulary size)."""
    warmup: int = 30
    max_steps: int = 500
    max_seconds: float = 480.0
    eval_every: int = 25
    probe_rows: int = 32

    def model_config(self) -> KExaoneConfig:
        c = KExaoneConfig.preset("small").replace(vocab_size=self.vocab_size, **SHAPES[self.shape])
        changes = {}
        if self.window is not None:
            changes["sliding_window"] = self.window
        if changes:
            c = c.replace(**changes)
        if self.first_global is not None:
            n = c.num_hidden_layers
            if not 0 <= self.first_global < n:
                raise ValueError(f"first_global must be in [0, {n}), got {self.first_global}")
            types = [SLIDING] * n
            for i in range(self.first_global, n, 4):
                types[i] = GLOBAL
            types[-1] = GLOBAL
            c = c.replace(layer_types=types)
        return c


# ---------------------------------------------------------------------------------------------- data
class Background:
    """A fixed random Markov chain: Zipf unigram frequencies, 8 successors per token (80% of the mass)."""

    def __init__(self, vocab: int, seed: int):
        g = np.random.default_rng(seed)
        ranks = np.arange(1, vocab - SPECIAL + 1)
        self.unigram = (1.0 / ranks ** 1.1) / (1.0 / ranks ** 1.1).sum()
        self.n = vocab - SPECIAL
        self.succ = g.choice(self.n, size=(self.n, 8), p=self.unigram)
        w = g.dirichlet(np.ones(8), size=self.n)
        self.succ_cdf = np.cumsum(w, axis=1)
        self.g = g

    def rows(self, b: int, t: int) -> np.ndarray:
        out = np.empty((b, t), dtype=np.int64)
        out[:, 0] = self.g.choice(self.n, size=b, p=self.unigram)
        for i in range(1, t):
            u = self.g.random(b)
            pick = (self.succ_cdf[out[:, i - 1]] < self.g.random(b)[:, None]).sum(1).clip(max=7)
            nxt = self.succ[out[:, i - 1], pick]
            jump = self.g.choice(self.n, size=b, p=self.unigram)
            out[:, i] = np.where(u < 0.8, nxt, jump)
        return out + SPECIAL


def synthetic_row(rng: random.Random, cfg: RunConfig, bg: Background) -> tuple[list[int], list[bool]]:
    """One retrieval-dense row of cfg.seq_len ids and its answer mask."""
    ids: list[int] = []
    mask: list[bool] = []
    names, weights = list(cfg.forms), list(cfg.forms.values())
    V = cfg.vocab_size
    half = (V - SPECIAL) // 2
    kv = cfg.kv_vocab or half
    while len(ids) < cfg.seq_len:
        form = rng.choices(names, weights)[0]
        if form == "mqar":
            # Keys from the first kv ids of the lower half of the vocabulary, values from the first kv of the upper.
            k0, v0 = SPECIAL, SPECIAL + half
            n = min(cfg.n_pairs, kv)
            x, m = mqar_tokens(rng, n, (k0, k0 + kv), (v0, v0 + kv))
            if cfg.gap:
                filler = bg.rows(1, cfg.gap)[0].tolist()
                x, m = x[:2 * n] + filler + x[2 * n:], m[:2 * n] + [False] * cfg.gap + m[2 * n:]
        elif form == "repeat":
            x, m = repeat_tokens(rng, rng.randint(8, 24), (SPECIAL, V), filler=(cfg.gap, cfg.gap + 32),
                                 prefix=(0, 8))
        elif form == "docs":
            x, m = _docs(cfg).next_instance()
        elif form == "passkey":
            key = [rng.randrange(SPECIAL, V) for _ in range(4)]
            hay = bg.rows(1, rng.randint(16, max(17, cfg.seq_len - 16)))[0].tolist()
            at = rng.randrange(len(hay))
            x = hay[:at] + [MARKER] + key + hay[at:] + [MARKER] + key
            m = [False] * (len(x) - 4) + [True] * 4
        else:
            raise ValueError(f"unknown form {form!r}; choose among mqar, repeat, passkey, docs")
        ids += x
        mask += m
    return ids[:cfg.seq_len], mask[:cfg.seq_len]


class SpeedrunDocs:
    """The speedrun's retrieval-dense documents (kexaone.data.synthetic.recall: recall lists with 4-digit keys,
    repeated runs, passkeys), tokenized by a trained tokenizer, with their answer-token masks. Unlike `mqar`, a key
    is several tokens (digits) and a value several tokens after it: what the speedrun's retrieval task asks."""

    def __init__(self, cfg: RunConfig):
        from kexaone.data.synthetic.recall import answer_token_mask, dense_recall_documents
        from kexaone.tokenizer import KExaoneTokenizer

        if cfg.tokenizer is None:
            raise ValueError("the docs form needs RunConfig.tokenizer (a trained tokenizer directory)")
        self.tok = KExaoneTokenizer.from_dir(cfg.tokenizer)
        if self.tok.vocab_size != cfg.vocab_size:
            raise ValueError(f"vocab_size {cfg.vocab_size} must equal the tokenizer's {self.tok.vocab_size}")
        self.seed = cfg.seed
        self.stream = dense_recall_documents
        self.mask = answer_token_mask
        self.eos = self.tok.eos_id
        self.restart()

    def restart(self) -> None:
        """Start the document stream again from its first document (the tokenizer stays loaded)."""
        self.docs = self.stream(seed=self.seed)

    def next_instance(self) -> tuple[list[int], list[bool]]:
        ids, mask = self.mask(self.tok, next(self.docs))
        return ids + [self.eos], mask + [False]


_DOCS: dict[str, SpeedrunDocs] = {}


def _docs(cfg: RunConfig) -> SpeedrunDocs:
    key = f"{cfg.tokenizer}|{cfg.seed}"
    if key not in _DOCS:
        _DOCS[key] = SpeedrunDocs(cfg)
    return _DOCS[key]


def batches(cfg: RunConfig):
    """Endless (input_ids [B, T], labels [B, T]) of the run's mixture; the synthetic share follows cfg.order."""
    rng = random.Random(f"induction-study|{cfg.seed}")
    bg = Background(cfg.vocab_size, seed=1000 + cfg.seed)
    B = cfg.tokens_per_step // cfg.seq_len
    step = 0
    while True:
        step += 1
        first_half = step <= cfg.max_steps // 2
        share = {"uniform": cfg.share, "early": 2 * cfg.share if first_half else 0.0,
                 "late": 0.0 if first_half else 2 * cfg.share}[cfg.order]
        x = torch.from_numpy(bg.rows(B, cfg.seq_len))
        labels = x.clone()
        for b in range(B):
            if rng.random() < share:
                ids, m = synthetic_row(rng, cfg, bg)
                x[b] = torch.tensor(ids)
                labels[b] = torch.tensor(ids)
                if cfg.answers_only:
                    labels[b][~torch.tensor(m)] = -100
        yield x, labels


def docs_answer_accuracy(model, cfg: RunConfig, rows: int = 32) -> float:
    """Teacher-forced argmax accuracy on the answer tokens of `rows` fixed held-out speedrun documents (seed 10**6,
    never trained on): copying the values of a recall list, the repeated run, the pass key."""
    held = dataclasses.replace(cfg, seed=10 ** 6, forms={"docs": 1.0})
    _docs(held).restart()  # the same held-out documents at every evaluation
    rng = random.Random("induction-study|docs-eval")
    hits = total = 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(rows):
            ids, mask = synthetic_row(rng, held, None)
            x = torch.tensor([ids])
            pred = model(input_ids=x).logits[0, :-1].argmax(-1)
            m = torch.tensor(mask[1:])
            hits += int((pred[m] == x[0, 1:][m]).sum())
            total += int(m.sum())
    model.train(was)
    return hits / max(total, 1)


# ---------------------------------------------------------------------------------------------- one run
def run(cfg: RunConfig, log=print) -> dict:
    if cfg.order not in ("uniform", "early", "late"):
        raise ValueError(f"order must be uniform, early or late, got {cfg.order!r}")
    if cfg.tokens_per_step % cfg.seq_len:
        raise ValueError(f"tokens_per_step {cfg.tokens_per_step} must be a multiple of seq_len {cfg.seq_len}")
    torch.manual_seed(cfg.seed)
    mc = cfg.model_config()
    model = KExaoneForCausalLM(mc)
    opt = build_optimizer(model, "muon", lr=cfg.lr, adamw_lr=cfg.adamw_lr)
    sched = make_scheduler(opt, WSDSchedule(max_lr=cfg.lr, total_steps=max(cfg.max_steps, cfg.warmup),
                                            warmup_steps=cfg.warmup, decay_fraction=0.0))
    probe = build_probe(cfg.vocab_size, seed=123, n=cfg.probe_rows, id_range=(SPECIAL, cfg.vocab_size))
    data = batches(cfg)
    curve: list[dict] = []
    t0 = time.perf_counter()
    stopped = None
    try:
        stopped = _train(cfg, model, opt, sched, probe, data, curve, log, t0)
    except KeyboardInterrupt:  # SIGINT / SIGTERM (see main): keep the curve so far, marked as stopped
        stopped = "interrupted"
    secs = time.perf_counter() - t0
    step = curve[-1]["step"] if curve else 0
    steps = [r["step"] for r in curve]
    result = {"config": dataclasses.asdict(cfg), "params": sum(p.numel() for p in model.parameters()),
              "layer_types": "".join("G" if t == GLOBAL else "L" for t in mc.layer_types),
              "window": mc.sliding_window, "steps": step, "seconds": round(secs, 1),
              "sec_per_step": round(secs / max(step, 1), 3), "curve": curve, "stopped": stopped,
              "chance": {"induction": probe.induction.chance, "recall": probe.recall.chance}}
    for name in ("induction", "recall"):
        result[f"onset_{name}"] = onset_step(steps, [r[f"{name}_acc"] for r in curve], result["chance"][name])
        result[f"final_{name}"] = curve[-1][f"{name}_acc"] if curve else None
    return result


def _train(cfg: RunConfig, model, opt, sched, probe, data, curve: list, log, t0: float) -> str | None:
    """Train until both probes hold (None), `max_steps` (None) or `max_seconds` ("time limit", returned: the run
    did not get all its steps, so an onset after it is unknown rather than absent)."""
    losses: list[float] = []
    above = 0
    for step in range(1, cfg.max_steps + 1):
        x, labels = next(data)
        out = model(input_ids=x, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(float(out.ce_loss.detach()))
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            s = score_probe(model, probe)
            if "docs" in cfg.forms:
                s["docs_acc"] = docs_answer_accuracy(model, cfg)
            row = {"step": step, "seconds": round(time.perf_counter() - t0, 1),
                   "loss": round(sum(losses) / len(losses), 4), **{k: round(v, 4) for k, v in s.items()}}
            losses.clear()
            curve.append(row)
            log(json.dumps(row))
            above = above + 1 if min(s["induction_acc"], s["recall_acc"]) >= 0.9 else 0
            if above >= 2:
                return None
            if time.perf_counter() - t0 > cfg.max_seconds and step < cfg.max_steps:
                return "time limit"
    return None


# ---------------------------------------------------------------------------------------------- grids
def grid(name: str) -> list[RunConfig]:
    """The planned runs, most informative first (a grid cut short by the clock still answers the main questions)."""
    if name == "s4":
        # Runs of up to 500 steps (the first plan): nothing formed within them, at vocabulary 2048 or 256.
        b = RunConfig()
        return [b, dataclasses.replace(b, name="vocab=2048", factor="vocab", vocab_size=2048)]
    if name == "s4-long":
        # Up to 1200 steps. The three levers together first (share 1.0, answers-only loss, Muon 1e-2), a second
        # seed of it, then each lever taken away (an ablation from the setting that forms), then other factors
        # varied around it.
        b = RunConfig(name="long-combined", factor="combined", share=1.0, answers_only=True, lr=1e-2,
                      max_steps=1200, max_seconds=1e9)
        runs = [b, dataclasses.replace(b, name="long-combined-s1", seed=1)]
        add = lambda factor, label, **kw: runs.append(  # noqa: E731
            dataclasses.replace(b, name=f"long-{factor}={label}", factor=factor, **kw))
        add("answers_only", "no", answers_only=False)
        add("lr", "muon3e-3", lr=3e-3)
        add("share", "0.5", share=0.5)
        # window 64 next: with it every s4 layer sees the whole 64-token row, as every `small` layer does with its
        # window of 128 (and `small` did not form where s4 did)
        add("window", "64", window=64)
        add("seq_len", "32", seq_len=32, n_pairs=8)
        add("order", "early", order="early", share=0.5)
        add("first_global", "1", first_global=1)
        add("vocab", "2048", vocab_size=2048)
        add("seq_len", "128", seq_len=128)
        add("kv_vocab", "32", kv_vocab=32)
        add("form", "repeat", forms={"repeat": 1.0})
        add("lr", "adamw3e-3", adamw_lr=3e-3)
        add("order", "late", order="late", share=0.5)
        return runs
    if name == "s4-best":
        # Around the fastest setting the s4-long ablation found (answers-only loss, share 1.0, the speedrun's Muon
        # LR 3e-3): its seed noise, the loss on all tokens (what the speedrun's data path does today), a lower share
        # (the speedrun cannot give retrieval every row) and the other LRs.
        # No time limit: the machine got busier (a step took up to 2.5 s), and a limit would cut runs before onset.
        b = RunConfig(name="best", factor="best", share=1.0, answers_only=True, max_steps=900, max_seconds=1e9)
        runs = [dataclasses.replace(b, name="best-s1", seed=1)]
        add = lambda factor, label, **kw: runs.append(  # noqa: E731
            dataclasses.replace(b, name=f"best-{factor}={label}", factor=factor, **kw))
        add("answers_only", "no", answers_only=False)
        add("share", "0.25", share=0.25)
        add("lr", "adamw3e-3", adamw_lr=3e-3)
        add("lr", "muon1e-3", lr=1e-3)
        return runs
    if name == "s4-seeds":
        names = ("long-window=64", "long-answers_only=no", "long-lr=muon3e-3", "long-share=0.5")
        return [dataclasses.replace(r, name=r.name + "-s1", seed=1) for n in names for r in grid("s4-long")
                if r.name == n]
    if name == "small":
        b = RunConfig(name="small-baseline", shape="small", max_steps=300, max_seconds=1200)
        return [b]
    if name == "small-levers":
        # `small` (the speedrun's shape) did not form within 900 steps with s4's best setting (`small-best`): is it
        # the window (128 covers the whole 64-token row, s4's 16 does not), the seed, the row length or the LR?
        b = RunConfig(name="small-best", factor="shape", shape="small", share=1.0, answers_only=True, max_steps=900,
                      max_seconds=1e9)
        return [dataclasses.replace(b, name="small-window=16", factor="small-window", window=16),
                dataclasses.replace(b, name="small-best-s1", factor="small-seed", seed=1),
                dataclasses.replace(b, name="small-seq_len=32", factor="small-seq_len", seq_len=32, n_pairs=8),
                dataclasses.replace(b, name="small-lr=muon1e-2", factor="small-lr", lr=1e-2)]
    if name == "gap":
        # long-window=64 (every s4 layer sees the whole row) did not form where window 16 did: put the queries (and
        # the second copies) a window or more after their pairs, so only the global NoPE layer can reach them.
        b = [r for r in grid("s4-long") if r.name == "long-window=64"][0]
        # (twice the tokens per step of the gapless runs, so a step holds as many answers)
        return [dataclasses.replace(b, name="long-window=64-gap=64", factor="gap", gap=64, seq_len=128,
                                    tokens_per_step=2048)]
    if name == "docs":
        # The speedrun's own retrieval-dense documents (multi-token keys and values) through its tokenizer, every
        # row, answers-only loss, the speedrun's row length and LRs: can the 4-layer shape learn to copy from them?
        tok = Path(__file__).resolve().parents[1] / "runs" / "speedrun" / "tokenizer" / "tokenizer"
        b = RunConfig(name="docs-s4", factor="docs", vocab_size=8192, tokenizer=str(tok), forms={"docs": 1.0},
                      share=1.0, answers_only=True, seq_len=256, tokens_per_step=2048, max_steps=900,
                      max_seconds=1e9)
        return [b, dataclasses.replace(b, name="docs-s4-mqar", forms={"docs": 0.5, "mqar": 0.5})]
    if name == "docs-small":
        # docs-s4 formed (held-out answer accuracy 0.12 -> 0.64 between steps 600 and 650): the speedrun's shape on
        # the same data, at the speedrun's tokens per step, then with half the rows background
        b = dataclasses.replace(grid("docs")[0], name="docs-small", factor="docs", shape="small")
        # next (not run yet): levers that might bring the ~750-step onset within the default budget's reach, a
        # narrow window (on s4, 16 formed where 64 did not) and shorter rows
        return [b, dataclasses.replace(b, name="docs-small-share=0.5", share=0.5),
                dataclasses.replace(b, name="docs-small-window=16", window=16),
                dataclasses.replace(b, name="docs-small-seq_len=128", seq_len=128)]
    if name == "docs-small-cheap":
        # docs-small formed at step 750-775, but at 2048 tokens per step that is ~27 minutes of the default budget.
        # If the onset is counted in updates rather than tokens, a quarter of the tokens per step (two 256-token
        # rows) forms it at a fraction of the cost; then the same with window 16 (formed sooner on s4).
        b = dataclasses.replace(grid("docs-small")[0], name="docs-small-tokens=512", factor="docs-tokens",
                                tokens_per_step=512, max_steps=1500)
        return [b, dataclasses.replace(b, name="docs-small-tokens=512-window=16", window=16)]
    raise ValueError(f"unknown grid {name!r}; choose s4, s4-long, s4-best, s4-seeds, small, small-levers, gap, docs, "
                     "docs-small or docs-small-cheap")


def done_names(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(ln)["config"]["name"] for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()}


def append(path: Path, result: dict) -> None:
    """Append one run (rewritten atomically: a killed study never leaves a torn line)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + json.dumps(result) + "\n")


# ---------------------------------------------------------------------------------------------- report
def load(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _fmt(v, r: dict) -> str:
    """An onset step; `never` for a run that ended at its limit, `not by N` for one stopped by hand."""
    if v is not None:
        return str(v)
    return f"not by {r['steps']}" if _stopped(r) else "never"


def _stopped(r: dict) -> str | None:
    """Why a run ended before its step limit without forming: "interrupted" (by hand), "time limit", or None.
    Runs recorded before the time limit was noted are recognised by their missing steps."""
    if r.get("stopped"):
        return r["stopped"]
    formed = min(r["final_induction"] or 0.0, r["final_recall"] or 0.0) >= 0.9
    return "time limit" if r["steps"] < r["config"]["max_steps"] and not formed else None


def _stop_note(r: dict) -> str:
    return {None: "", "interrupted": " (stopped by hand)"}.get(_stopped(r), f" ({_stopped(r)})")


def _docs_cell(r: dict) -> str:
    """Onset of the held-out document answer accuracy (floor: its first evaluation), for runs on the docs form."""
    pts = [p for p in r["curve"] if "docs_acc" in p]
    if not pts:
        return "-"
    onset = onset_step([p["step"] for p in pts], [p["docs_acc"] for p in pts], pts[0]["docs_acc"])
    return f"{_fmt(onset, r)} ({pts[0]['docs_acc']:.2f} -> {pts[-1]['docs_acc']:.2f})"


def _settings(c: dict) -> str:
    """The run's data and optimisation fields that differ from RunConfig's defaults, e.g. 'share 1.0, lr 0.01'."""
    base = dataclasses.asdict(RunConfig())
    skip = {"name", "factor", "seed", "max_seconds", "eval_every", "probe_rows", "warmup"}
    repo = str(Path(__file__).resolve().parents[1]) + "/"
    diff = [f"{k} {str(c[k]).replace(repo, '')}" for k in base if k not in skip and k in c and c[k] != base[k]]
    return ", ".join(diff).replace("|", "/") or "-"


def report(path: Path, md: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load(path)
    m = machine_info()
    lines = ["# What moves the onset of in-context retrieval (issue 17)", "",
             f"Written by `benchmarks/study_induction.py --report` from `{path.name}` (every number is read from it). "
             f"Machine: {m.get('cpu')}, shared by several jobs; each run used 1 torch thread.", "",
             "Onset = the first evaluated step (every 25) at which a probe's accuracy reaches halfway from chance to "
             "its final value and stays there at the next evaluation (`kexaone.eval.induction.onset_step`; final = "
             "mean of the last two evaluations; `never` = the final value is less than 0.1 above chance). Probes: "
             "`induction` = second copy of random spans at varying distance (chance ~0), `recall` = MQAR with 16 "
             "pairs over the whole vocabulary (chance 1/16 = 0.06). A run stops once both probes hold >= 0.9 "
             "(so a short run is a fast one), at its step limit or its time limit. Runs on the `docs` form also "
             "score the held-out documents' answer tokens (`docs_answer_accuracy`); their onset is taken the same "
             "way, from the first evaluation's accuracy (answer tokens the template predicts without copying) "
             "instead of chance.", "",
             f"Before an onset, the probe losses at a fixed step ({AT_STEP}) still rank the runs: a lower loss on "
             "the copied tokens is progress toward copying (a uniform guess over the vocabulary's ids scores 5.5 at "
             "vocabulary 256 and 7.6 at 2048; over the values' half 4.8 and 6.9).", "",
             "| shape | factor | run | settings (vs RunConfig defaults) | seed | params | step s | steps run | "
             "onset induction | onset recall | final induction acc | final recall acc | "
             f"induction loss @{AT_STEP} | recall loss @{AT_STEP} | docs: onset (answer acc first -> final) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        c = r["config"]
        at = next((p for p in r["curve"] if p["step"] == AT_STEP), None)
        la = (f"{at['induction_loss']:.2f} | {at['recall_loss']:.2f}" if at else "- | -")
        lines.append(f"| {c['shape']} ({r['layer_types']}, window {r['window']}) | {c['factor']} | {c['name']} | "
                     f"{_settings(c)} | {c['seed']} | {r['params'] / 1e6:.1f}M | {r['sec_per_step']:.2f} | {r['steps']}"
                     f"{_stop_note(r)} | "
                     f"{_fmt(r['onset_induction'], r)} | {_fmt(r['onset_recall'], r)} | {r['final_induction']:.2f} | "
                     f"{r['final_recall']:.2f} | {la} | {_docs_cell(r)} |")
    d = RunConfig()
    lines += ["", f"RunConfig defaults: shape {d.shape} (hidden 128, 4 layers, 16 experts top-2 + shared, MTP), "
              f"vocabulary {d.vocab_size}, {d.share:g} of the rows retrieval-dense ({d.forms}), loss on all tokens, "
              f"Muon {d.lr:g} / AdamW {d.adamw_lr:g} (the speedrun's), uniform order, "
              f"{d.tokens_per_step // d.seq_len} x {d.seq_len} tokens per step, keys and values over the two halves "
              f"of the vocabulary, {d.n_pairs} pairs, window 16, layers LLLG, at most {d.max_steps} steps.", ""]
    md.parent.mkdir(parents=True, exist_ok=True)
    # One plot per factor: the recall and induction curves of its runs next to the baseline's.
    # The references drawn dashed in every factor's plot: the baseline and the combined-levers runs.
    refs = ("baseline", "combined")
    factors = sorted({r["config"]["factor"] for r in runs} - set(refs)) + [f for f in refs[1:] if any(
        r["config"]["factor"] == f for r in runs)]
    base = [r for r in runs if r["config"]["factor"] in refs]
    for shape in sorted({r["config"]["shape"] for r in runs}):
        for factor in factors:
            group = [r for r in runs if r["config"]["shape"] == shape and r["config"]["factor"] == factor]
            if not group:
                continue
            probes = ("induction", "recall") + (("docs",) if any("docs_acc" in p for r in group for p in r["curve"])
                                                 else ())
            fig, axes = plt.subplots(1, len(probes), figsize=(5 * len(probes), 3.5), sharey=True)
            for ax, probe in zip(axes, probes):
                for r in [b for b in base if b["config"]["shape"] == shape and b not in group] + group:
                    pts = [p for p in r["curve"] if f"{probe}_acc" in p]
                    if not pts:
                        continue
                    ax.plot([p["step"] for p in pts], [p[f"{probe}_acc"] for p in pts], label=r["config"]["name"],
                            ls="--" if r["config"]["factor"] in refs and factor != r["config"]["factor"] else "-")
                ax.set_title("held-out document answers" if probe == "docs" else f"{probe} probe")
                ax.set_xlabel("step")
                ax.set_ylim(0, 1)
            axes[0].set_ylabel("accuracy")
            axes[1].legend(fontsize=7)
            fig.suptitle(f"{shape}: {factor}")
            fig.tight_layout()
            png = md.parent / f"induction_{shape}_{factor}.png"
            fig.savefig(png, dpi=90)
            plt.close(fig)
            lines.append(f"![{shape} {factor}]({png.name})")
    notes = md.with_name(md.stem + "_notes.md")  # hand-written conclusions, kept apart from the generated table
    if notes.exists():
        lines += ["", notes.read_text(encoding="utf-8").rstrip()]
    atomic_write_text(md, "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", help="run a named grid (s4, s4-long, s4-best, s4-seeds, small, small-levers, gap, docs, docs-small, "
                    "docs-small-cheap), skipping runs "
                    "already in the JSONL")
    ap.add_argument("--one", help="JSON of RunConfig fields: one run")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--time-step", nargs="+", metavar="SHAPE", help="seconds per step of each shape (20 steps)")
    ap.add_argument("--jsonl", default=str(DEFAULT_JSONL))
    ap.add_argument("--md", default=str(RESULTS / "induction_study.md"))
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = Path(a.jsonl)
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # a stopped run is still recorded, with its curve so far
    if a.time_step:
        for shape in a.time_step:
            r = run(RunConfig(name="timing", shape=shape, max_steps=20, eval_every=10), log=lambda s: None)
            print(f"{shape}: {r['sec_per_step']:.3f} s/step ({r['params'] / 1e6:.1f}M params), with 2 probe evals")
        return
    if a.report:
        report(path, Path(a.md))
        print(f"wrote {a.md}")
        return
    cfgs = [RunConfig(**json.loads(a.one))] if a.one else grid(a.grid) if a.grid else []
    if not cfgs:
        ap.error("give --grid, --one, --report or --time-step")
    for cfg in cfgs:
        if cfg.name in done_names(path):
            print(f"skip {cfg.name} (in {path.name})", flush=True)
            continue
        print(f"== {cfg.name}: {json.dumps(dataclasses.asdict(cfg))}", flush=True)
        result = run(cfg, log=lambda s: print(s, flush=True))
        result["machine"] = machine_info()
        append(path, result)
        print(f"== {cfg.name}: onset induction {result['onset_induction']}, recall {result['onset_recall']}, "
              f"{result['seconds']:.0f}s", flush=True)
        if result["stopped"]:
            break


if __name__ == "__main__":
    main()

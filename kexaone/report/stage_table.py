"""The report card's stage-by-stage data: one column per model (untrained, base, extended, SFT, RL, preference), one
row per measurement, and the figures the post-training stages drew. Plain data; card.py renders it.

Where the numbers come from (nothing is measured here):
- `evaluate/eval.json` "models" (kexaone.pipeline.evaluate_stage): held-out bits per byte overall and per group,
  each synthetic task, safety safe rate and over-refusal, tool-call pass rate. An eval.json from before the stage
  columns existed (no "models") gives the untrained and base columns from its base rows.
- the stages' own outputs in stages.json: NIAH and short-context bits per byte before / after extension (extend),
  sft-chat score and well-formed rate of the starting and SFT models (sft, its sft_eval.json), the held-out pass
  rate before / after RL (rl) and the preference score before / after GROUPER (pref); a "before" number goes in
  the column of the model the stage started from (its `init` output, else the newest earlier model);
- the stage times (wall seconds of all attempts).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from kexaone.pipeline.chain import LABELS, MODEL_STAGES

COLUMNS: tuple[tuple[str, str], ...] = (("untrained", "untrained"),) + tuple((s, LABELS[s]) for s in MODEL_STAGES)
"""(key, label) of each column, in stage order."""


@dataclass
class StageRow:
    name: str
    values: dict[str, float]
    """Column key -> value; a key that is absent was not measured for that model."""
    kind: str = "number"
    """How to show a value: "percent" (a rate in [0, 1]), "number" or "seconds" (no change is stated)."""
    better: str = "higher"
    """"higher", "lower" or "" (neither): what the change over the previous stage should do."""
    detail: bool = False
    """A breakdown row (held-out bits per byte of one group): the card lists these in a table of their own."""
    stderr: dict[str, float] = field(default_factory=dict)
    """Column key -> standard error of the value, where the sample size is known (see `tolerance`)."""
    purpose: str = ""
    """The stage this row is the measurement of (what the stage exists to improve), else ""."""
    paired_se: dict[str, float] = field(default_factory=dict)
    """Column key -> standard error of its change over the previous column where both were measured on the same
    prompts with per-prompt results recorded: the paired standard error (of the per-prompt differences), which
    `tolerance` prefers to the two columns' separate ones."""


@dataclass
class StageFigure:
    stage: str
    name: str
    png: bytes
    caption: str


@dataclass
class StagesData:
    ran: list[str]
    """Column keys of the models that exist in the run (a stage not in this list shows "-")."""
    rows: list[StageRow]
    figures: list[StageFigure] = field(default_factory=list)
    final_model: str | None = None
    """The stage whose model the generate stage used."""


def changes(row: StageRow, ran: list[str]) -> dict[str, float]:
    """Each measured column's change over the previous column (in stage order) where the row has a value."""
    out, prev = {}, None
    for key, _ in COLUMNS:
        if key not in ran or key not in row.values:
            continue
        if prev is not None:
            out[key] = row.values[key] - row.values[prev]
        prev = key
    return out


BPB_TOLERANCE = 0.03
"""Bits per byte may rise by 3% of the previous model's value before it counts as a regression (the held-out sets
are thousands of documents, so their noise is far below this: it is the allowance for a stage that trades a little
language modelling for its own skill)."""
NOISE_Z = 2.0
"""A rate or score counts as changed when it moves by more than 2 standard errors of the difference."""
FALLBACK_TOLERANCE = 0.05
"""The allowance of a rate whose sample size the run did not record (5 points)."""


def binomial_se(p: float | None, n: int | None) -> float | None:
    """Standard error of a rate p over n items (an upper bound for a mean of scores in [0, 1])."""
    if p is None or not n:
        return None
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def paired_se(before: list[float] | None, after: list[float] | None) -> float | None:
    """Standard error of the mean change over items measured twice (the same prompts before and after a stage):
    the sample standard deviation of the per-item differences over sqrt(n). None without two aligned lists of at
    least two items. Unlike the separate standard errors of two means, it removes what the items share (an easy
    prompt is easy for both models), as a paired t-test does."""
    if not before or not after or len(before) != len(after) or len(before) < 2:
        return None
    return statistics.stdev([b - a for a, b in zip(before, after)]) / math.sqrt(len(before))


def tolerance(row: StageRow, prev: str, cur: str) -> float:
    """How far `cur` may move against `prev` on this row before the move counts: BPB_TOLERANCE of the previous
    value for bits per byte, else NOISE_Z standard errors of the difference (paired where the row has it;
    FALLBACK_TOLERANCE without any)."""
    if row.kind == "number" and row.better == "lower":
        return BPB_TOLERANCE * abs(row.values[prev])
    if row.paired_se.get(cur) is not None:
        return NOISE_Z * row.paired_se[cur]
    a, b = row.stderr.get(prev), row.stderr.get(cur)
    if a is None or b is None:
        return FALLBACK_TOLERANCE
    return NOISE_Z * math.sqrt(a * a + b * b)


@dataclass
class Verdict:
    """One step of one row: the previous model's value against a stage's model's."""

    stage: str
    row: str
    before: float
    after: float
    tolerance: float
    kind: str
    better: str

    @property
    def status(self) -> str:
        """"improved" / "worse" (moved by more than the tolerance) or "within tolerance"."""
        gain = (self.before - self.after) if self.better == "lower" else (self.after - self.before)
        return "improved" if gain > self.tolerance else "worse" if -gain > self.tolerance else "within tolerance"


def _steps(row: StageRow, ran: list[str]) -> list[tuple[str, str]]:
    """(previous, current) column pairs of the row in stage order, over the measured columns."""
    keys = [k for k, _ in COLUMNS if k in ran and k in row.values]
    return list(zip(keys, keys[1:]))


def _verdict(row: StageRow, prev: str, cur: str) -> Verdict:
    return Verdict(cur, row.name, row.values[prev], row.values[cur], tolerance(row, prev, cur), row.kind,
                   row.better or "higher")


def verdicts(st: Any) -> list[Verdict]:
    """Each stage's own measurement (the rows with a `purpose`), before and after the stage."""
    out = []
    for row in st.rows:
        if not row.purpose or row.purpose not in row.values:
            continue
        out += [_verdict(row, prev, cur) for prev, cur in _steps(row, st.ran) if cur == row.purpose]
    order = [k for k, _ in COLUMNS]
    return sorted(out, key=lambda v: order.index(v.stage))


def regressions(st: Any) -> list[Verdict]:
    """Every step (previous model -> a stage's model) on every headline row with a direction that moved the wrong
    way by more than its tolerance (the per-group breakdown rows are left to their own table)."""
    out = []
    for row in st.rows:
        if row.better not in ("higher", "lower") or row.kind == "seconds" or row.detail:
            continue
        out += [v for v in (_verdict(row, p, c) for p, c in _steps(row, st.ran)) if v.status == "worse"]
    return out


def _done(run: Any, stage: str) -> dict[str, Any] | None:
    rec = run.stages.get(stage)
    return (rec.get("outputs") or {}) if rec and rec.get("status") == "done" else None


def _init(run: Any, stage: str, out: dict[str, Any]) -> str:
    """The model column a stage started from: its recorded `init`, else the newest earlier model stage that ran."""
    if out.get("init"):
        return out["init"]
    earlier = [s for s in MODEL_STAGES[:MODEL_STAGES.index(stage)] if (_done(run, s) or {}).get("model_dir")]
    return earlier[-1] if earlier else "pretrain"


def _byte_weighted(rows: list[dict[str, Any]]) -> float | None:
    n = sum(r["bytes"] for r in rows)
    return sum(r["bits_per_byte"] * r["bytes"] for r in rows) / n if n else None


def _models(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """eval.json's per-model records; an older file's base rows as the untrained and base records."""
    if ev.get("models"):
        return ev["models"]
    old = []
    for stage, key, acc in (("untrained", "heldout_untrained", "untrained_accuracy"),
                            ("pretrain", "heldout", "accuracy")):
        rows = ev.get(key) or []
        old.append({"stage": stage, "heldout": rows, "heldout_bpb": _byte_weighted(rows) if rows else None,
                    "tasks": {t["task"]: {"accuracy": t[acc]} for t in ev.get("tasks", []) if t.get(acc) is not None}})
    return old


def _eval_rows(ev: dict[str, Any], models: list[dict[str, Any]]) -> list[StageRow]:
    rows = [StageRow("held-out bits per byte (all groups)",
                     {m["stage"]: m["heldout_bpb"] for m in models if m.get("heldout_bpb") is not None},
                     better="lower", purpose="pretrain")]
    groups = [(r["domain"], r["language"]) for r in ev.get("heldout", [])]
    for d, lang in groups:
        rows.append(StageRow(f"held-out bits per byte, {d}/{lang}", {
            m["stage"]: r["bits_per_byte"] for m in models for r in m.get("heldout", [])
            if (r["domain"], r["language"]) == (d, lang)}, better="lower", detail=True))
    for t in ev.get("tasks", []):
        base = t.get("baseline", t.get("chance"))
        measured = [m for m in models if t["task"] in m.get("tasks", {})]
        rows.append(StageRow(f"task {t['task']}: accuracy (baseline {100 * base:.1f}%)" if base is not None
                             else f"task {t['task']}: accuracy",
                             {m["stage"]: m["tasks"][t["task"]]["accuracy"] for m in measured}, kind="percent",
                             stderr=_known({m["stage"]: binomial_se(m["tasks"][t["task"]]["accuracy"],
                                                                    m["tasks"][t["task"]].get("items"))
                                            for m in measured})))
    for key, name, better in (("safe_rate", "safety: safe rate on harmful items", "higher"),
                              ("over_refusal_rate", "safety: over-refusal rate on benign items", "lower")):
        measured = [m for m in models if (m.get("safety") or {}).get(key) is not None]
        if measured:
            # the safety items are split between harmful and benign ones: half of them is each rate's sample
            se = {m["stage"]: binomial_se(m["safety"][key], (m["safety"].get("items") or 0) // 2) for m in measured}
            rows.append(StageRow(name, {m["stage"]: m["safety"][key] for m in measured}, kind="percent",
                                 better=better, stderr=_known(se)))
    measured = [m for m in models if m.get("tools")]
    if measured:
        rows.append(StageRow("tool calls: pass rate (greedy, one episode per task)",
                             {m["stage"]: m["tools"]["pass_rate"] for m in measured}, kind="percent",
                             stderr=_known({m["stage"]: binomial_se(m["tools"]["pass_rate"], m["tools"].get("tasks"))
                                            for m in measured})))
    return rows


def _known(se: dict[str, float | None]) -> dict[str, float]:
    return {k: v for k, v in se.items() if v is not None}


def _stage_rows(run: Any) -> list[StageRow]:
    rows = []
    ext = _done(run, "extend")
    if ext and ext.get("stages"):
        last = ext["stages"][-1]["rounds"][-1] if ext["stages"][-1].get("rounds") else None
        if last is not None:
            start = _init(run, "extend", ext)
            after = ext["stages"][-1].get("niah_lengths") or [ext["target_length"]]
            before = ext.get("baseline_niah_lengths") or [ext["base_length"]]
            name = (f"NIAH mean (extend stage: before at {', '.join(map(str, before))} tokens, after at "
                    f"{', '.join(map(str, after))})")
            rows.append(StageRow(name, {start: ext["baseline_niah"], "extend": last["niah"]}, kind="percent",
                                 purpose="extend"))
            rows.append(StageRow("short-context bits per byte (extend stage's gate)",
                                 {start: ext["baseline_bpb"], "extend": last["bpb"]}, better="lower"))
    sft = _done(run, "sft")
    if sft and sft.get("eval"):
        ev = run.json(sft["eval"])
        start = _init(run, "sft", sft)
        rows.append(StageRow("sft-chat score (SFT stage)", {start: ev["base"]["score"], "sft": ev["sft"]["score"]},
                             kind="percent", purpose="sft",
                             stderr=_known({start: binomial_se(ev["base"]["score"], ev["base"].get("n")),
                                            "sft": binomial_se(ev["sft"]["score"], ev["sft"].get("n"))}),
                             paired_se=_known({"sft": _sft_paired_se(run.path(sft["eval"]).parent)})))
        rows.append(StageRow("sft-chat well-formed replies (SFT stage)",
                             {start: ev["base"]["well_formed"], "sft": ev["sft"]["well_formed"]}, kind="percent"))
    for stage, key, name in (("rl", "pass_rate", "RL held-out pass rate (RL stage)"),
                             ("pref", "reward_mean", "preference score, held-out (preference stage)")):
        out = _done(run, stage)
        if out and out.get("heldout_before") and out.get("heldout_after"):
            start, before, after = _init(run, stage, out), out["heldout_before"], out["heldout_after"]
            per_prompt = "per_prompt_pass" if key == "pass_rate" else "per_prompt_reward"
            rows.append(StageRow(name, {start: before[key], stage: after[key]},
                                 kind="percent" if key == "pass_rate" else "number", purpose=stage,
                                 stderr=_known({start: _heldout_se(before, key), stage: _heldout_se(after, key)}),
                                 paired_se=_known({stage: paired_se(before.get(per_prompt), after.get(per_prompt))})))
            dims_before, dims_after = before.get("rubric_dimensions") or {}, after.get("rubric_dimensions") or {}
            for dim in [d for d in dims_after if d in dims_before]:  # a judge scored them (--judge-endpoint)
                rows.append(StageRow(f"preference rubric: {dim}, held-out (judge, 0-1)",
                                     {start: dims_before[dim], stage: dims_after[dim]}))
    secs = {s: (run.stages[s].get("seconds") or 0.0) + (run.stages[s].get("prior_seconds") or 0.0)
            for s in MODEL_STAGES if _done(run, s) is not None}
    if secs:
        rows.append(StageRow("time of the stage (wall seconds)", secs, kind="seconds", better=""))
    return rows


def _sft_paired_se(stage_dir: Any) -> float | None:
    """Paired standard error of the SFT stage's sft-chat change, over the held-out items both models answered."""
    from kexaone.pipeline.sft_stage import item_scores

    base, tuned = item_scores(stage_dir, "base"), item_scores(stage_dir, "sft")
    common = sorted(set(base) & set(tuned))
    return paired_se([base[k] for k in common], [tuned[k] for k in common])


def _heldout_se(h: dict[str, Any], key: str) -> float | None:
    """Standard error of an RL / preference held-out number over its prompts (the samples of one prompt are not
    independent, so the prompt count is the sample size: conservative)."""
    n = h.get("n_prompts")
    if key == "pass_rate":
        return binomial_se(h.get(key), n)
    std = h.get("reward_std")
    return None if std is None or not n else std / math.sqrt(n)


def _png(run: Any, rel: str | None) -> bytes | None:
    if not rel:
        return None
    p = run.path(rel)
    return p.read_bytes() if p.is_file() else None


def _figures(run: Any) -> list[StageFigure]:
    """The plots the post-training stages wrote (a plot a stage did not write is left out)."""
    figs: list[tuple[str, str, str | None, str]] = []
    ext = _done(run, "extend")
    if ext:
        figs.append(("extend", "extend_niah_before", ext.get("baseline_heatmap"),
                     "NIAH before extension (at "
                     f"{', '.join(map(str, ext.get('baseline_niah_lengths') or [ext.get('base_length')]))} tokens): "
                     "share found per length x depth"))
        if ext.get("report_json") and run.path(ext["report_json"]).is_file():
            rep = run.json(ext["report_json"])
            rounds = rep["stages"][-1]["rounds"] if rep.get("stages") else []
            if rounds and rounds[-1].get("heatmap"):
                base = run.path(ext["report_json"]).parent
                figs.append(("extend", "extend_niah_after", str(base / rounds[-1]["heatmap"]),
                             f"NIAH after extension round {rounds[-1]['round']} (up to {ext.get('target_length')} "
                             "tokens)"))
    for stage, name, file, caption in (("sft", "sft_loss", "loss_curve.png", "SFT loss"),
                                       ("rl", "rl_reward", "reward_curve.png", "RL reward per round"),
                                       ("pref", "pref_loss", "loss_curve.png", "preference (GROUPER) loss")):
        out = _done(run, stage)
        if out and out.get("model_dir"):
            # the trainers of these stages draw their curves in their run directory, beside the exported model
            figs.append((stage, name, str(run.path(out["model_dir"]).parent / file), caption))
    out = []
    for stage, name, rel, caption in figs:
        png = _png(run, rel)
        if png is not None:
            out.append(StageFigure(stage, name, png, caption))
    return out


def collect_stages(run: Any) -> StagesData:
    """The stage-by-stage data of a run (a kexaone.report.data._Run)."""
    ran = {s for s in MODEL_STAGES if (_done(run, s) or {}).get("model_dir")}
    rows: list[StageRow] = []
    ev_out = _done(run, "evaluate")
    if ev_out and ev_out.get("eval"):
        ev = run.json(ev_out["eval"])
        models = _models(ev)
        rows += _eval_rows(ev, models)
        ran |= {m["stage"] for m in models}
    rows += _stage_rows(run)
    gen = _done(run, "generate") or {}
    return StagesData(ran=[k for k, _ in COLUMNS if k in ran], rows=[r for r in rows if r.values],
                      figures=_figures(run), final_model=gen.get("model_stage"))

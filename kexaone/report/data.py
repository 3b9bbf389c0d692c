"""What the speedrun report says, computed from a run directory as plain data (dataclasses of numbers, strings and
lists), and the headline numbers of report.json derived from it. `card.py` renders this data; nothing here formats
text or draws.

A section whose input does not exist yet (a stage not run or not finished, no expert-load matrices saved, no MaxVio
records) is a `Missing` with the reason, so a partial run still gets a partial report. Everything else that goes
wrong (an unreadable file of a finished stage, a malformed record) raises: a report never hides an error.

File formats read (written by kexaone.pipeline.recipe):
- `stages.json` (kexaone.pipeline.stages): stage status, times, outputs; the run parameters
- `tokenizer/tokenizer_eval.json`: {"vocab_size", "baseline_vocab_size", "train_bytes", "superword_share",
  "seconds", "baseline_seconds", "rows": [{"group", "bytes", "superbpe_tokens", "bpe_tokens"}]}
- the pre-training directory: `metrics.jsonl` (records of kind "config" / "train" / "eval" / "stage", see
  kexaone.train.metrics), `expert_load.jsonl` ([L, E] load matrices per logged step) and `model/config.json`
- `evaluate/eval.json`: {"heldout": [HeldoutResult], "heldout_untrained": [...], "tasks": [TaskResult],
  "models": [per-model record, kexaone.pipeline.evaluate_stage]}
- `generate/generation.json`: {"samples": [Sample], "speed": SpeedResult, "speed_by_draft_tokens": [...]}
- the post-training stages' outputs and plots: see kexaone.report.stage_table (the stage-by-stage table).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kexaone.pipeline.chain import LABELS
from kexaone.report.stage_table import (BPB_TOLERANCE, COLUMNS, FALLBACK_TOLERANCE, NOISE_Z, StageRow, StagesData,
                                        Verdict, changes, collect_stages, regressions, verdicts)

Series = tuple[list[float], list[float]]  # (x, y)


@dataclass(frozen=True)
class Missing:
    """A section's input that does not exist (yet), and why."""

    reason: str


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _last_tenth(xs: list) -> list:
    return xs[-max(1, len(xs) // 10):]


# ---------------------------------------------------------------------------------------------- section data
@dataclass
class StageTime:
    name: str
    status: str  # "not run", or the stage record's status
    seconds: float | None = None  # wall seconds of all attempts; None while running (the report's own stage)
    cpu_seconds: float | None = None  # of the last attempt
    attempts: int = 0


@dataclass
class ModelData:
    model_dir: str
    config: Any  # KExaoneConfig
    parameters: dict[str, int]


@dataclass
class TokenizerRow:
    group: str
    bytes: int
    superbpe_bytes_per_token: float
    bpe_bytes_per_token: float

    @property
    def ratio(self) -> float:
        return self.superbpe_bytes_per_token / self.bpe_bytes_per_token


@dataclass
class TokenizerData:
    rows: list[TokenizerRow]
    total: TokenizerRow | None  # all groups together (None when there are no tokens)
    train_bytes: int | None
    vocab_size: int | None
    baseline_vocab_size: int | None
    seconds: float | None
    baseline_seconds: float | None
    superword_share: float | None


@dataclass
class LossCurves:
    """Training loss per curriculum stage ({stage: (step, loss)}), the training CE and the held-out CE."""

    by_stage: dict[str, Series]
    ce: Series | None
    heldout: Series | None


@dataclass
class StageLoss:
    name: str
    first_step: int
    last_step: int
    tokens: int
    loss_start: float  # mean over the first tenth of the stage
    loss_end: float  # mean over the last tenth
    tokens_per_s: float | None


@dataclass
class MtpData:
    steps: list[int]
    ce: list[float]
    mtp: list[float]
    ce_end: float
    mtp_end: float


@dataclass
class MaxVioData:
    steps: list[int]
    by_layer: dict[str, list[float]]
    first: float  # mean over MoE layers at the first record
    last: float  # mean over MoE layers, averaged over the last tenth of the records
    first_step: int


@dataclass
class ExpertLoadData:
    step: int
    load_LE: Any  # numpy [L, E] of the last saved step
    layer_names: list[str]


@dataclass
class PretrainData:
    last_step: int
    tokens: int | None
    seconds: float | None
    final_train_loss: float  # mean total loss over the last 10 records
    stages: list[StageLoss]
    curves: LossCurves
    mtp: MtpData | None
    max_vio: MaxVioData | Missing
    expert_load: ExpertLoadData | Missing | None  # None: the stage recorded no output directory
    probes: list[dict[str, Any]] = field(default_factory=list)
    """Records of kind "probe" (induction / key-value recall accuracy during training, kexaone.eval.induction)."""
    probe_onsets: dict[str, int | None] = field(default_factory=dict)


@dataclass
class HeldoutRow:
    domain: str
    language: str
    documents: int
    tokens: int
    loss: float
    bits_per_byte: float
    untrained_bits_per_byte: float | None


@dataclass
class TaskRow:
    task: str
    items: int
    accuracy: float
    stderr: float
    chance: float
    untrained: float | None
    scoring: str
    examples: list[dict[str, Any]]

    @property
    def baseline(self) -> float:
        """The better of chance and the untrained model."""
        return max(self.chance, self.untrained or 0.0)

    @property
    def above_baseline(self) -> bool:
        """More than two standard errors above the baseline."""
        return self.accuracy - 2 * self.stderr > self.baseline


@dataclass
class EvalData:
    heldout: list[HeldoutRow]
    heldout_bpb: float | None  # byte-weighted over all groups
    heldout_bpb_untrained: float | None
    tasks: list[TaskRow]


@dataclass
class GenerationData:
    samples: list[dict[str, Any]]
    speed: dict[str, Any] | None  # the fastest draft length (SpeedResult)
    speed_runs: list[dict[str, Any]]  # every draft length measured


@dataclass
class ReportData:
    """Everything the report says about one run directory."""

    budget: str | None
    machine: dict[str, Any]
    params: dict[str, Any]
    times: list[StageTime]
    total_seconds: float | None
    stage_seconds: dict[str, float]
    stage_cpu_seconds: dict[str, float]
    model: ModelData | Missing
    tokenizer: TokenizerData | Missing
    pretrain: PretrainData | Missing
    eval: EvalData | Missing
    generation: GenerationData | Missing
    stages: StagesData


# ---------------------------------------------------------------------------------------------- reading
class _Run:
    """Paths and stage records of one run directory."""

    def __init__(self, run_dir: Path):
        from kexaone.pipeline.stages import read_state

        self.dir = run_dir
        self.state = read_state(run_dir)
        if not self.state:
            raise FileNotFoundError(f"{run_dir} has no stages.json: not a speedrun directory")
        self.stages: dict[str, dict[str, Any]] = self.state.get("stages", {})
        self.params: dict[str, Any] = self.state.get("params", {})

    def outputs(self, stage: str, key: str) -> dict[str, Any] | Missing:
        """The outputs of a finished stage that recorded `key`, else Missing."""
        rec = self.stages.get(stage)
        if not rec or rec.get("status") != "done":
            return Missing(f"the {stage} stage has not finished.")
        out = rec.get("outputs") or {}
        if not out.get(key):  # e.g. pre-training run without export: no model directory
            return Missing(f"the {stage} stage recorded no {key}.")
        return out

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.dir / p

    def json(self, rel: str) -> Any:
        with open(self.path(rel), encoding="utf-8") as f:
            return json.load(f)


def _stage_wall(rec: dict[str, Any]) -> float:
    return (rec.get("seconds") or 0.0) + (rec.get("prior_seconds") or 0.0)


def _times(run: _Run) -> list[StageTime]:
    rows = []
    for name in run.state.get("order", list(run.stages)):
        rec = run.stages.get(name)
        if rec is None:
            rows.append(StageTime(name, "not run"))
        elif rec.get("status") == "running" and rec.get("seconds") is None:
            rows.append(StageTime(name, "running", None, None, rec.get("attempts", 1)))
        else:
            rows.append(StageTime(name, rec.get("status", "?"), _stage_wall(rec), rec.get("cpu_seconds"),
                                  rec.get("attempts", 1)))
    return rows


def _model_config(run: _Run, model_dir: str):
    from kexaone.config import KExaoneConfig

    return KExaoneConfig.from_json_file(run.path(model_dir) / "config.json")


def _model(run: _Run) -> ModelData | Missing:
    out = run.outputs("pretrain", "model_dir")
    if isinstance(out, Missing):
        return out
    from kexaone.model.info import count_parameters

    cfg = _model_config(run, out["model_dir"])
    return ModelData(out["model_dir"], cfg, count_parameters(cfg))


def _tokenizer(run: _Run) -> TokenizerData | Missing:
    out = run.outputs("tokenizer", "eval")
    if isinstance(out, Missing):
        return out
    ev = run.json(out["eval"])
    rows = [TokenizerRow(r["group"], r["bytes"], r["bytes"] / max(1, r["superbpe_tokens"]),
                         r["bytes"] / max(1, r["bpe_tokens"])) for r in ev["rows"]]
    n_bytes = sum(r["bytes"] for r in ev["rows"])
    sb, bp = sum(r["superbpe_tokens"] for r in ev["rows"]), sum(r["bpe_tokens"] for r in ev["rows"])
    total = TokenizerRow("all", n_bytes, n_bytes / sb, n_bytes / bp) if sb and bp else None
    return TokenizerData(rows, total, ev.get("train_bytes"), ev.get("vocab_size"), ev.get("baseline_vocab_size"),
                         ev.get("seconds"), ev.get("baseline_seconds"), ev.get("superword_share"))


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def loss_curves(records: Iterable[dict[str, Any]]) -> LossCurves:
    """The loss curves of a metrics file's records (kexaone.train.metrics): training loss grouped by the records'
    curriculum stage ("pretrain" without one), training CE, held-out CE."""
    by_stage: dict[str, Series] = {}
    ce: Series = ([], [])
    held: Series = ([], [])
    for r in records:
        if r.get("kind") == "train" and _is_number(r.get("loss")):
            xs, ys = by_stage.setdefault(str(r.get("stage", "pretrain")), ([], []))
            xs.append(r["step"])
            ys.append(r["loss"])
            if _is_number(r.get("ce")):
                ce[0].append(r["step"])
                ce[1].append(r["ce"])
        elif r.get("kind") == "eval" and _is_number(r.get("loss")):
            held[0].append(r["step"])
            held[1].append(r["loss"])
    return LossCurves(by_stage, ce if ce[0] else None, held if held[0] else None)


def _moe_layer_names(run: _Run, out: dict[str, Any], n: int) -> list[str]:
    """'layer i' for the model's sparse layers (what the rows of balance statistics are), else 'MoE k'."""
    if out.get("model_dir"):
        cfg = _model_config(run, out["model_dir"])
        sparse = [f"layer {i}" for i in range(cfg.num_hidden_layers) if cfg.is_sparse(i)]
        if len(sparse) == n:
            return sparse
    return [f"MoE {k}" for k in range(n)]


def _max_vio(run: _Run, out: dict[str, Any], train: list[dict[str, Any]]) -> MaxVioData | Missing:
    mv = [r for r in train if isinstance(r.get("max_vio_layers"), list) and r["max_vio_layers"]]
    if not mv:
        return Missing("no MaxVio records (a model without MoE layers, or an older metrics file).")
    n_layers = len(mv[0]["max_vio_layers"])
    names = _moe_layer_names(run, out, n_layers)
    return MaxVioData(steps=[r["step"] for r in mv],
                      by_layer={names[i]: [r["max_vio_layers"][i] for r in mv] for i in range(n_layers)},
                      first=sum(mv[0]["max_vio_layers"]) / n_layers,
                      last=_mean(sum(r["max_vio_layers"]) / n_layers for r in _last_tenth(mv)),
                      first_step=mv[0]["step"])


def _expert_load(run: _Run, out: dict[str, Any]) -> ExpertLoadData | Missing | None:
    if not out.get("out_dir"):
        return None
    from kexaone.train.metrics import read_expert_loads

    try:
        steps, loads = read_expert_loads(run.path(out["out_dir"]))
    except FileNotFoundError:  # raised only when the run saved no expert-load matrix
        return Missing("no expert-load matrices were saved.")
    return ExpertLoadData(steps[-1], loads[-1], _moe_layer_names(run, out, loads.shape[1]))


def _pretrain(run: _Run) -> PretrainData | Missing:
    out = run.outputs("pretrain", "metrics")
    if isinstance(out, Missing):
        return out
    from kexaone.train.metrics import read_metrics

    recs = read_metrics(run.path(out["metrics"]))
    train = [r for r in recs if r.get("kind") == "train" and _is_number(r.get("loss"))]
    if not train:
        return Missing("no training records in the metrics file.")
    cfg_rec = next((r for r in recs if r.get("kind") == "config"), {})
    per_step = cfg_rec.get("tokens_per_step") or (train[0].get("tokens", 0) // max(1, train[0]["step"]))
    curves = loss_curves(recs)
    stages = []
    for name in curves.by_stage:
        rs = [r for r in train if str(r.get("stage", "pretrain")) == name]
        tps = [r["tok_per_s"] for r in rs if _is_number(r.get("tok_per_s"))]
        stages.append(StageLoss(name, rs[0]["step"], rs[-1]["step"],
                                int(rs[-1].get("tokens", 0) - rs[0].get("tokens", 0) + per_step),
                                _mean(r["loss"] for r in rs[:max(1, len(rs) // 10)]),
                                _mean(r["loss"] for r in _last_tenth(rs)), _mean(tps) if tps else None))
    from kexaone.eval.induction import probe_onsets

    probes = [r for r in recs if r.get("kind") == "probe"]
    mtp_recs = [r for r in train if _is_number(r.get("mtp")) and _is_number(r.get("ce"))]
    mtp = None
    if mtp_recs:
        last = _last_tenth(mtp_recs)
        mtp = MtpData([r["step"] for r in mtp_recs], [r["ce"] for r in mtp_recs], [r["mtp"] for r in mtp_recs],
                      ce_end=_mean(r["ce"] for r in last), mtp_end=_mean(r["mtp"] for r in last))
    return PretrainData(last_step=train[-1]["step"], tokens=train[-1].get("tokens"), seconds=out.get("seconds"),
                        final_train_loss=float(_mean(r["loss"] for r in train[-10:])), stages=stages, curves=curves,
                        mtp=mtp, max_vio=_max_vio(run, out, train), expert_load=_expert_load(run, out),
                        probes=probes, probe_onsets=probe_onsets(probes) if probes else {})


def _byte_weighted_bpb(rows: Iterable[dict[str, Any]]) -> float | None:
    rows = list(rows)
    n_bytes = sum(r["bytes"] for r in rows)
    return sum(r["bits_per_byte"] * r["bytes"] for r in rows) / n_bytes if n_bytes else None


def _eval(run: _Run) -> EvalData | Missing:
    out = run.outputs("evaluate", "eval")
    if isinstance(out, Missing):
        return out
    ev = run.json(out["eval"])
    held = ev.get("heldout", [])
    base = {(r["domain"], r["language"]): r for r in ev.get("heldout_untrained", [])}
    rows = []
    for r in held:
        u = base.get((r["domain"], r["language"]))
        rows.append(HeldoutRow(r["domain"], r["language"], r["documents"], r["tokens"], r["loss"],
                               r["bits_per_byte"], u["bits_per_byte"] if u else None))
    tasks = [TaskRow(t["task"], t["items"], t["accuracy"], t["stderr"], t["chance"], t.get("untrained_accuracy"),
                     t.get("scoring", ""), t.get("examples", [])) for t in ev.get("tasks", [])]
    return EvalData(rows, _byte_weighted_bpb(held) if held else None,
                    _byte_weighted_bpb(base.values()) if held and base else None, tasks)


def _generation(run: _Run) -> GenerationData | Missing:
    out = run.outputs("generate", "generation")
    if isinstance(out, Missing):
        return out
    gen = run.json(out["generation"])
    speed = gen.get("speed") or None
    return GenerationData(gen.get("samples", []), speed, gen.get("speed_by_draft_tokens") or ([speed] if speed else []))


def collect(run_dir: str | os.PathLike, machine: dict[str, Any]) -> ReportData:
    """Read a speedrun directory into ReportData. Raises FileNotFoundError when it has no stages.json."""
    run = _Run(Path(run_dir))
    timed = {n: r for n, r in run.stages.items() if r.get("seconds") is not None}
    return ReportData(
        budget=run.params.get("budget", {}).get("name"), machine=machine, params=run.params, times=_times(run),
        total_seconds=sum(map(_stage_wall, timed.values())) if timed else None,
        stage_seconds={n: _stage_wall(r) for n, r in timed.items()},
        stage_cpu_seconds={n: r["cpu_seconds"] for n, r in run.stages.items() if r.get("cpu_seconds") is not None},
        model=_model(run), tokenizer=_tokenizer(run), pretrain=_pretrain(run), eval=_eval(run),
        generation=_generation(run), stages=collect_stages(run))


def speedup(run: dict[str, Any]) -> float | None:
    """MTP speculative over plain tokens/s of one speed measurement."""
    return run["mtp_tokens_per_s"] / run["plain_tokens_per_s"] if run["plain_tokens_per_s"] else None


def headline(data: ReportData) -> dict[str, Any]:
    """The headline numbers (report.json): only those whose inputs exist."""
    s: dict[str, Any] = {"budget": data.budget, "machine": data.machine}
    if data.total_seconds is not None:
        s["total_seconds"] = data.total_seconds
    s["stage_seconds"] = data.stage_seconds
    s["stage_cpu_seconds"] = data.stage_cpu_seconds
    if isinstance(data.tokenizer, TokenizerData) and data.tokenizer.total is not None:
        s["tokenizer_gain"] = data.tokenizer.total.ratio
    p = data.pretrain
    if isinstance(p, PretrainData):
        s["final_train_loss"] = p.final_train_loss
        if p.mtp is not None:
            s["final_mtp_loss"] = p.mtp.mtp_end
        if isinstance(p.max_vio, MaxVioData):
            s["max_vio_first"], s["max_vio_last"] = p.max_vio.first, p.max_vio.last
    e = data.eval
    if isinstance(e, EvalData):
        if e.heldout:
            s["heldout_bpb"] = e.heldout_bpb
            if e.heldout_bpb_untrained is not None:
                s["heldout_bpb_untrained"] = e.heldout_bpb_untrained
        if e.tasks:
            s["tasks"] = [{"task": t.task, "accuracy": t.accuracy, "baseline": t.baseline, "chance": t.chance,
                           "untrained": t.untrained} for t in e.tasks]
    st = data.stages
    if st.rows:
        s["stages"] = {"models": st.ran, "rows": [
            {"name": r.name, "values": {k: r.values[k] for k in st.ran if k in r.values},
             "change": changes(r, st.ran) if r.kind != "seconds" else {}} for r in st.rows],
            "verdicts": [{**asdict(v), "status": v.status} for v in verdicts(st)],
            "regressions": [asdict(v) for v in regressions(st)]}
    if st.final_model is not None:
        s["final_model"] = st.final_model
    g = data.generation
    if isinstance(g, GenerationData) and g.speed:
        s["mtp_speedup"] = speedup(g.speed)
        s["acceptance_rate"] = g.speed.get("acceptance_rate")
        s["plain_tokens_per_s"] = g.speed["plain_tokens_per_s"]
        s["mtp_tokens_per_s"] = g.speed["mtp_tokens_per_s"]
        s["mtp_draft_tokens"] = g.speed.get("draft_tokens")
    return s

"""The speedrun report card: reads a run directory (stages.json and the files each stage wrote) and writes
report.md, report.html (self-contained, plots embedded) and report.json (the headline numbers, machine-readable).

Every number comes from this run's files; nothing is typed in. A section whose inputs are missing (a stage not run
yet, an older run) says so instead of failing, so a partial run still gets a partial report.

File formats read (written by kexaone.pipeline.recipe):
- `tokenizer/tokenizer_eval.json`: {"vocab_size", "baseline_vocab_size", "train_bytes", "superword_share",
  "seconds", "baseline_seconds", "rows": [{"group", "bytes", "superbpe_tokens", "bpe_tokens"}]}
- the pre-training directory: `metrics.jsonl` (records of kind "config" / "train" / "eval" / "stage", see
  kexaone.train.metrics) and `expert_load/step_*.npy` ([L, E] load matrices)
- `evaluate/eval.json`: {"heldout": [HeldoutResult], "heldout_untrained": [...], "tasks": [TaskResult]}
- `generate/generation.json`: {"samples": [Sample], "speed": SpeedResult}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kexaone.report.document import Details, Document, Figure, Heading, Para, Table, write_document
from kexaone.utils.io import atomic_write_text


def _load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _f(x: Any, digits: int = 3) -> str:
    """Format a number for a table ('n/a' for None or non-finite)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _human_bytes(n: int | None) -> str:
    if not n:
        return "n/a"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    v = float(n)
    while v >= 1024 and i < len(units) - 1:
        v /= 1024
        i += 1
    return f"{v:.1f} {units[i]}"


class _Run:
    """Paths and parsed files of one run directory."""

    def __init__(self, run_dir: Path):
        from kexaone.pipeline.stages import read_state

        self.dir = run_dir
        self.state = read_state(run_dir)
        if not self.state:
            raise FileNotFoundError(f"{run_dir} has no stages.json: not a speedrun directory")
        self.stages: dict[str, dict[str, Any]] = self.state.get("stages", {})
        self.params: dict[str, Any] = self.state.get("params", {})

    def outputs(self, stage: str) -> dict[str, Any] | None:
        rec = self.stages.get(stage)
        return rec.get("outputs") if rec and rec.get("status") == "done" else None

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.dir / p


# ---------------------------------------------------------------------------------------------- sections
def _section_summary(run: _Run, summary: dict[str, Any]) -> list:
    rows = []
    if "total_seconds" in summary:
        rows.append(["wall-clock time of all stages", f"{summary['total_seconds'] / 60:.1f} min"])
    if summary.get("stage_cpu_seconds"):
        rows.append(["CPU time of all stages", f"{sum(summary['stage_cpu_seconds'].values()) / 60:.1f} min"])
    if summary.get("final_train_loss") is not None:
        rows.append(["final training loss (total)", _f(summary["final_train_loss"])])
    if summary.get("heldout_bpb") is not None:
        rows.append(["held-out bits per byte (all groups), trained / untrained",
                     f"{_f(summary['heldout_bpb'])} / {_f(summary.get('heldout_bpb_untrained'))}"])
    for t in summary.get("tasks", []):
        rows.append([f"task {t['task']}: accuracy (baseline)", f"{_pct(t['accuracy'])} ({_pct(t['baseline'])})"])
    if summary.get("mtp_speedup") is not None:
        drafts = summary.get("mtp_draft_tokens")
        rows.append(["MTP speculative vs plain decoding", f"{summary['mtp_speedup']:.2f}x "
                     f"({f'{drafts} draft tokens, ' if drafts else ''}acceptance "
                     f"{_pct(summary.get('acceptance_rate'))})"])
    if summary.get("tokenizer_gain") is not None:
        rows.append(["SuperBPE bytes/token vs plain BPE", f"{summary['tokenizer_gain']:.3f}x"])
    if not rows:
        return [Para("No stage has finished yet.")]
    return [Heading("Summary"), Table(["what", "value"], rows)]


def _section_machine(machine: dict[str, Any]) -> list:
    git = machine.get("git", {})
    rows = [["CPU", str(machine.get("cpu"))],
            ["cores (usable / torch threads)", f"{machine.get('cores_usable')} / {machine.get('torch_threads')}"],
            ["memory", _human_bytes(machine.get("memory_bytes"))],
            ["accelerator", str(machine.get("accelerator") or "none")],
            ["OS", str(machine.get("os"))], ["Python", str(machine.get("python"))],
            ["torch", str(machine.get("torch"))],
            ["git revision", git.get("commit", "unknown") + (" (uncommitted changes)" if git.get("dirty") else "")],
            ["report written", str(machine.get("date"))]]
    return [Heading("Machine and code"), Table(["item", "value"], rows)]


def _section_params(run: _Run) -> list:
    blocks: list = [Heading("Run parameters")]
    budget = run.params.get("budget", {})
    rows = [[k, json.dumps(v) if isinstance(v, (dict, list)) else str(v)] for k, v in run.params.items()
            if k != "budget"]
    rows += [[f"budget.{k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)] for k, v in budget.items()]
    blocks.append(Table(["parameter", "value"], rows))
    return blocks


def _section_model(run: _Run) -> list:
    out = run.outputs("pretrain")
    if not out or not out.get("model_dir"):
        return [Heading("Model"), Para("not available: the pretrain stage has not finished.")]
    from kexaone.config import KExaoneConfig

    cfg = KExaoneConfig.from_json_file(run.path(out["model_dir"]) / "config.json")
    blocks: list = [Heading("Model")]
    n_sliding = sum(map(cfg.is_sliding, range(cfg.num_hidden_layers)))
    arch = [["vocabulary", _f(cfg.vocab_size)], ["hidden size", _f(cfg.hidden_size)],
            ["layers (sliding / global)",
             f"{cfg.num_hidden_layers} ({n_sliding} / {cfg.num_hidden_layers - n_sliding})"],
            ["sliding window", str(cfg.sliding_window)],
            ["heads (q / kv) x head_dim", f"{cfg.num_attention_heads} / {cfg.num_key_value_heads} x {cfg.head_dim}"],
            ["dense FFN (layer 0, MTP)", _f(cfg.intermediate_size)],
            ["experts (routed top-k + shared) x width",
             f"{cfg.num_experts} (top-{cfg.num_experts_per_tok} + {cfg.num_shared_experts}) x "
             f"{cfg.moe_intermediate_size}"],
            ["MTP layers", str(cfg.num_nextn_predict_layers)],
            ["loss weights (MTP / aux) and bias-update rate",
             f"{cfg.mtp_loss_weight} / {cfg.aux_loss_coef}, {cfg.bias_update_rate}"]]
    blocks.append(Table(["architecture", "value"], arch))
    try:
        from kexaone.model.info import count_parameters

        counts = count_parameters(cfg)
        blocks.append(Table(["parameters", "count"], [[k, _f(v) if isinstance(v, (int, float)) else str(v)]
                                                      for k, v in counts.items()]))
    except Exception as e:  # the parameter counter is another module; a failure must not lose the report
        blocks.append(Para(f"parameter counts not available: {type(e).__name__}: {e}"))
    blocks.append(Para(f"Model directory (Hugging Face layout): {out['model_dir']}"))
    return blocks


def _section_times(run: _Run) -> list:
    rows = []
    for name in run.state.get("order", list(run.stages)):
        rec = run.stages.get(name)
        if rec is None:
            rows.append([name, "not run", "n/a", "n/a", "0"])
            continue
        if rec.get("status") == "running" and rec.get("seconds") is None:
            rows.append([name, "running (this report)", "n/a", "n/a", str(rec.get("attempts", 1))])
            continue
        secs = (rec.get("seconds") or 0.0) + (rec.get("prior_seconds") or 0.0)
        cpu = rec.get("cpu_seconds")
        rows.append([name, rec.get("status", "?"), f"{secs:.1f}", "n/a" if cpu is None else f"{cpu:.1f}",
                     str(rec.get("attempts", 1))])
    return [Heading("Time per stage"),
            Para("Wall-clock seconds (all attempts) and CPU seconds of the last attempt (user + system, this process "
                 "and its workers). On a shared machine the wall time depends on the load; the CPU time is about "
                 "what the stage costs on one otherwise idle core."),
            Table(["stage", "status", "wall seconds", "CPU seconds", "attempts"], rows)]


def _section_tokenizer(run: _Run, plots: Any, summary: dict[str, Any]) -> list:
    out = run.outputs("tokenizer")
    blocks: list = [Heading("Tokenizer: SuperBPE vs plain BPE")]
    if not out or not out.get("eval"):
        return blocks + [Para("not available: the tokenizer stage has not finished.")]
    ev = _load_json(run.path(out["eval"]))
    rows, groups, sb, bp = [], [], [], []
    tot_bytes = tot_sb = tot_bp = 0
    for r in ev["rows"]:
        s_bpt = r["bytes"] / max(1, r["superbpe_tokens"])
        b_bpt = r["bytes"] / max(1, r["bpe_tokens"])
        rows.append([r["group"], _f(r["bytes"]), _f(s_bpt, 2), _f(b_bpt, 2), f"{s_bpt / b_bpt:.3f}x"])
        groups.append(r["group"])
        sb.append(s_bpt)
        bp.append(b_bpt)
        tot_bytes += r["bytes"]
        tot_sb += r["superbpe_tokens"]
        tot_bp += r["bpe_tokens"]
    if tot_sb and tot_bp:
        gain = (tot_bytes / tot_sb) / (tot_bytes / tot_bp)
        summary["tokenizer_gain"] = gain
        rows.append(["all", _f(tot_bytes), _f(tot_bytes / tot_sb, 2), _f(tot_bytes / tot_bp, 2), f"{gain:.3f}x"])
    blocks.append(Para(
        f"Both tokenizers were trained on the same {_f(ev.get('train_bytes'))} bytes with {_f(ev.get('vocab_size'))} "
        f"(SuperBPE) and {_f(ev.get('baseline_vocab_size'))} (plain BPE) vocabulary entries; SuperBPE took "
        f"{_f(ev.get('seconds'), 1)} s, the baseline {_f(ev.get('baseline_seconds'), 1)} s. Superword tokens: "
        f"{_pct(ev.get('superword_share'))} of the vocabulary. Measured on held-out text never used for training."))
    blocks.append(Table(["text", "bytes", "SuperBPE bytes/token", "plain BPE bytes/token", "ratio"], rows))
    if groups:
        blocks.append(Figure(plots.bytes_per_token_bars(groups, sb, bp), "tokenizer",
                             "bytes per token (higher packs more text into each token)"))
    return blocks


def _section_pretrain(run: _Run, plots: Any, summary: dict[str, Any]) -> list:
    out = run.outputs("pretrain")
    blocks: list = [Heading("Pre-training")]
    if not out or not out.get("metrics"):
        return blocks + [Para("not available: the pretrain stage has not finished.")]
    from kexaone.train.metrics import read_metrics

    recs = read_metrics(run.path(out["metrics"]))
    train = [r for r in recs if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in recs if r.get("kind") == "eval" and isinstance(r.get("loss"), (int, float))]
    if not train:
        return blocks + [Para("no training records in the metrics file.")]
    summary["final_train_loss"] = float(sum(r["loss"] for r in train[-10:]) / len(train[-10:]))
    cfg_rec = next((r for r in recs if r.get("kind") == "config"), {})
    per_step = cfg_rec.get("tokens_per_step") or (train[0].get("tokens", 0) // max(1, train[0]["step"]))
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for r in train:
        by_stage.setdefault(str(r.get("stage", "pretrain")), []).append(r)
    rows = []
    for name, rs in by_stage.items():
        head, tail = rs[:max(1, len(rs) // 10)], rs[-max(1, len(rs) // 10):]
        tps = [r["tok_per_s"] for r in rs if isinstance(r.get("tok_per_s"), (int, float))]
        stage_tokens = rs[-1].get("tokens", 0) - rs[0].get("tokens", 0) + per_step
        rows.append([name, f"{rs[0]['step']}-{rs[-1]['step']}", _f(int(stage_tokens)),
                     _f(sum(r["loss"] for r in head) / len(head)), _f(sum(r["loss"] for r in tail) / len(tail)),
                     _f(sum(tps) / len(tps), 0) if tps else "n/a"])
    blocks.append(Para(f"{train[-1]['step']} optimizer steps, {_f(train[-1].get('tokens'))} tokens, "
                       f"in {_f(out.get('seconds'), 1)} s. Loss is the total (CE + MTP + aux) averaged over the first "
                       "and last tenth of each curriculum stage."))
    blocks.append(Table(["curriculum stage", "steps", "tokens", "loss at start", "loss at end", "tokens/s"], rows))
    series = {n: ([r["step"] for r in rs], [r["loss"] for r in rs]) for n, rs in by_stage.items()}
    held = ([r["step"] for r in evals], [r["loss"] for r in evals]) if evals else None
    blocks.append(Figure(plots.loss_curves(series, held), "loss_curves",
                         "training loss coloured by curriculum stage; black: held-out CE"))
    mtp = [r for r in train if isinstance(r.get("mtp"), (int, float)) and isinstance(r.get("ce"), (int, float))]
    if mtp:
        last = mtp[-max(1, len(mtp) // 10):]
        ce_end = sum(r["ce"] for r in last) / len(last)
        mtp_end = sum(r["mtp"] for r in last) / len(last)
        summary["final_mtp_loss"] = mtp_end
        blocks.append(Heading("Multi-token prediction", 3))
        blocks.append(Para(f"The MTP head predicts token t+2 from the final hidden state at t and token t+1. At the "
                           f"end of training its loss is {mtp_end:.3f} nats against {ce_end:.3f} for the main "
                           "next-token prediction (it sees one token less of the future it predicts)."))
        blocks.append(Figure(plots.mtp_curve([r["step"] for r in mtp], [r["ce"] for r in mtp], [r["mtp"] for r in mtp]),
                             "mtp_loss", "main next-token CE and MTP (t+2) loss"))
    blocks += _section_balance(run, out, train, plots, summary)
    return blocks


def _moe_layer_names(run: _Run, out: dict[str, Any], n: int) -> list[str]:
    """'layer i' for the model's sparse layers (what the rows of balance statistics are), else 'MoE k'."""
    if out.get("model_dir"):
        from kexaone.config import KExaoneConfig

        cfg = KExaoneConfig.from_json_file(run.path(out["model_dir"]) / "config.json")
        sparse = [f"layer {i}" for i in range(cfg.num_hidden_layers) if cfg.is_sparse(i)]
        if len(sparse) == n:
            return sparse
    return [f"MoE {k}" for k in range(n)]


def _section_balance(run: _Run, out: dict[str, Any], train: list[dict[str, Any]], plots: Any,
                     summary: dict[str, Any]) -> list:
    blocks: list = [Heading("MoE load balance", 3)]
    mv = [r for r in train if isinstance(r.get("max_vio_layers"), list) and r["max_vio_layers"]]
    if mv:
        n_layers = len(mv[0]["max_vio_layers"])
        names = _moe_layer_names(run, out, n_layers)
        layers = {names[i]: [r["max_vio_layers"][i] for r in mv] for i in range(n_layers)}
        first = sum(mv[0]["max_vio_layers"]) / n_layers
        k = max(1, len(mv) // 10)
        last = sum(sum(r["max_vio_layers"]) / n_layers for r in mv[-k:]) / k
        summary["max_vio_first"], summary["max_vio_last"] = first, last
        blocks.append(Para(f"MaxVio (max expert load over mean load, minus 1; 0 is perfect balance), mean over MoE "
                           f"layers: {first:.3f} at step {mv[0]['step']}, {last:.3f} over the last tenth of training."))
        blocks.append(Figure(plots.maxvio_curve([r["step"] for r in mv], layers), "max_vio", "MaxVio per MoE layer"))
    else:
        blocks.append(Para("no MaxVio records (a model without MoE layers, or an older metrics file)."))
    if out.get("out_dir"):
        try:
            from kexaone.train.metrics import read_expert_loads

            steps, loads = read_expert_loads(run.path(out["out_dir"]))
            names = _moe_layer_names(run, out, loads.shape[1])
            blocks.append(Figure(plots.expert_load_heatmap(loads[-1], names), "expert_load",
                                 f"share of routed tokens per expert at step {steps[-1]} (rows: MoE layers)"))
        except FileNotFoundError:
            blocks.append(Para("no expert-load matrices were saved."))
    return blocks


def _section_eval(run: _Run, plots: Any, summary: dict[str, Any]) -> list:
    out = run.outputs("evaluate")
    blocks: list = [Heading("Evaluation")]
    if not out or not out.get("eval"):
        return blocks + [Para("not available: the evaluate stage has not finished.")]
    ev = _load_json(run.path(out["eval"]))
    held, base = ev.get("heldout", []), {(r["domain"], r["language"]): r for r in ev.get("heldout_untrained", [])}
    if held:
        rows = []
        for r in held:
            u = base.get((r["domain"], r["language"]))
            rows.append([r["domain"], r["language"], _f(r["documents"]), _f(r["tokens"]), _f(r["loss"]),
                         _f(r["bits_per_byte"]), _f(u["bits_per_byte"]) if u else "n/a"])
        tb = sum(r["bytes"] for r in held)
        bits = sum(r["bits_per_byte"] * r["bytes"] for r in held)
        summary["heldout_bpb"] = bits / tb if tb else None
        if base:
            ub = sum(u["bits_per_byte"] * u["bytes"] for u in base.values())
            summary["heldout_bpb_untrained"] = ub / max(1, sum(u["bytes"] for u in base.values()))
        blocks.append(Heading("Held-out loss per domain and language", 3))
        blocks.append(Para("Documents never seen in training; bits per byte compares across tokenizers."))
        blocks.append(Table(["domain", "language", "documents", "tokens", "loss (nats/token)", "bits/byte",
                             "bits/byte untrained"], rows))
    tasks = ev.get("tasks", [])
    if tasks:
        rows, names, acc, chance, untrained = [], [], [], [], []
        summary["tasks"] = []
        for t in tasks:
            b = max(t["chance"], t.get("untrained_accuracy") or 0.0)
            verdict = "above" if t["accuracy"] - 2 * t["stderr"] > b else "not clearly above"
            rows.append([t["task"], _f(t["items"]), f"{_pct(t['accuracy'])} +/- {_pct(t['stderr'])}",
                         _pct(t["chance"]), _pct(t.get("untrained_accuracy")), verdict, t.get("scoring", "")])
            names.append(t["task"])
            acc.append(t["accuracy"])
            chance.append(t["chance"])
            untrained.append(t.get("untrained_accuracy"))
            summary["tasks"].append({"task": t["task"], "accuracy": t["accuracy"], "baseline": b,
                                     "chance": t["chance"], "untrained": t.get("untrained_accuracy")})
        blocks.append(Heading("Held-out synthetic tasks", 3))
        blocks.append(Para("Accuracy +/- one binomial standard error; 'above' means more than two standard errors "
                           "above the better of chance and the untrained model."))
        blocks.append(Table(["task", "items", "accuracy", "chance", "untrained model", "vs baseline", "scoring"],
                            rows))
        blocks.append(Figure(plots.accuracy_bars(names, acc, chance, untrained), "tasks", "accuracy per task"))
        for t in tasks:
            for ex in t.get("examples", [])[:2]:
                blocks.append(Details(f"{t['task']}: {'correct' if ex['correct'] else 'wrong'} (answer "
                                      f"{ex['answer']!r})", f"{ex['prompt']}\n--- model ---\n{ex['output']}"))
    return blocks


def _section_generation(run: _Run, summary: dict[str, Any]) -> list:
    out = run.outputs("generate")
    blocks: list = [Heading("Generation")]
    if not out or not out.get("generation"):
        return blocks + [Para("not available: the generate stage has not finished.")]
    gen = _load_json(run.path(out["generation"]))
    samples = gen.get("samples", [])
    if samples:
        blocks.append(Heading("Sample answers", 3))
        blocks.append(Para("Sampled at temperature 1.0, top-p 0.95 (the K-EXAONE recommendation)."))
        for s in samples:
            body = (f"user: {s['prompt']}\n--- reasoning ---\n{s.get('reasoning') or ''}\n--- answer ---\n"
                    f"{s.get('content', '')}")
            blocks.append(Details(f"{s['mode']}: {s['prompt'][:80]} ({s['tokens']} tokens, {s['seconds']:.1f} s)",
                                  body))
    sp = gen.get("speed")
    if sp:
        speedup = sp["mtp_tokens_per_s"] / sp["plain_tokens_per_s"] if sp["plain_tokens_per_s"] else None
        summary["mtp_speedup"] = speedup
        summary["acceptance_rate"] = sp.get("acceptance_rate")
        summary["plain_tokens_per_s"] = sp["plain_tokens_per_s"]
        summary["mtp_tokens_per_s"] = sp["mtp_tokens_per_s"]
        summary["mtp_draft_tokens"] = sp.get("draft_tokens")
        runs = gen.get("speed_by_draft_tokens") or [sp]
        blocks.append(Heading("Decode speed", 3))
        blocks.append(Para(
            f"Greedy decoding of {sp['new_tokens']} new tokens per prompt, batch 1, median of {sp['repeats']} "
            f"interleaved repeats; each draft length is measured side by side with its own plain runs. Speculative "
            f"output identical to plain: {_f(all(r.get('identical') for r in runs))}. The summary quotes the fastest "
            f"draft length ({sp['draft_tokens']})."))
        rows = []
        for r in runs:
            ratio = r["mtp_tokens_per_s"] / r["plain_tokens_per_s"] if r["plain_tokens_per_s"] else None
            rows.append([f"MTP, {r['draft_tokens']} draft token{'s' if r['draft_tokens'] != 1 else ''}",
                         _f(r["plain_tokens_per_s"], 1), _f(r["mtp_tokens_per_s"], 1),
                         _f(r.get("tokens_per_forward"), 2), _pct(r.get("acceptance_rate")),
                         f"{ratio:.2f}x" if ratio else "n/a"])
        blocks.append(Table(["mode", "plain tokens/s", "speculative tokens/s", "tokens per main-model forward",
                             "acceptance rate", "speed-up"], rows))
    return blocks


# ---------------------------------------------------------------------------------------------- entry point
def build_report(run_dir: str | os.PathLike, machine: dict[str, Any] | None = None,
                 plots: Any = None) -> tuple[Document, dict[str, Any]]:
    """(the report document, the headline numbers) of a speedrun directory."""
    from kexaone.report import plots as default_plots
    from kexaone.report.machine import machine_info

    run = _Run(Path(run_dir))
    plots = plots or default_plots
    machine = machine if machine is not None else machine_info()
    summary: dict[str, Any] = {"budget": run.params.get("budget", {}).get("name"), "machine": machine}
    done = [r for r in run.stages.values() if r.get("seconds") is not None]
    if done:
        summary["total_seconds"] = sum((r.get("seconds") or 0.0) + (r.get("prior_seconds") or 0.0) for r in done)
    summary["stage_seconds"] = {n: (r.get("seconds") or 0.0) + (r.get("prior_seconds") or 0.0)
                                for n, r in run.stages.items() if r.get("seconds") is not None}
    summary["stage_cpu_seconds"] = {n: r["cpu_seconds"] for n, r in run.stages.items()
                                    if r.get("cpu_seconds") is not None}
    sections: list[Callable[[], list]] = [
        lambda: _section_machine(machine),
        lambda: _section_params(run),
        lambda: _section_times(run),
        lambda: _section_model(run),
        lambda: _section_tokenizer(run, plots, summary),
        lambda: _section_pretrain(run, plots, summary),
        lambda: _section_eval(run, plots, summary),
        lambda: _section_generation(run, summary),
    ]
    body: list = []
    for make in sections:
        try:
            body += make()
        except (OSError, ValueError, KeyError, TypeError) as e:
            # One unreadable input must not cost the whole report: say what is missing, keep the rest.
            body += [Para(f"(a section could not be built: {type(e).__name__}: {e})")]
    title = f"kexaone speedrun report ({summary['budget'] or 'unknown'} budget)"
    doc = Document(title, _section_summary(run, summary) + body)
    return doc, summary


def write_report(run_dir: str | os.PathLike, machine: dict[str, Any] | None = None) -> dict[str, str]:
    """Write report.md, report.html and report.json into run_dir; returns their paths (relative to run_dir)."""
    run_dir = Path(run_dir)
    doc, summary = build_report(run_dir, machine=machine)
    write_document(doc, run_dir / "report.md", run_dir / "report.html")
    atomic_write_text(run_dir / "report.json", json.dumps(summary, indent=2, default=str) + "\n")
    return {"markdown": "report.md", "html": "report.html", "json": "report.json"}


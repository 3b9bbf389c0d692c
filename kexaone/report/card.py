"""The speedrun report card: renders what `kexaone.report.data` computed from a run directory as report.md,
report.html (self-contained, plots embedded) and report.json (the headline numbers, machine-readable).

Every number comes from this run's files; nothing is typed in. A section whose inputs do not exist yet says so
(`data.Missing`), so a partial run still gets a partial report; any other error raises. This module only formats:
the numbers are computed in `data.py`, the figures drawn in `plots.py`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from kexaone.report import data as D
from kexaone.report.document import Details, Document, Figure, Heading, Para, Table, write_document
from kexaone.utils.io import atomic_write_text


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


def _not_available(title: str, missing: D.Missing, level: int = 2) -> list:
    return [Heading(title, level), Para(f"not available: {missing.reason}")]


# ---------------------------------------------------------------------------------------------- sections
def _section_summary(s: dict[str, Any]) -> list:
    rows = []
    if "total_seconds" in s:
        rows.append(["wall-clock time of all stages", f"{s['total_seconds'] / 60:.1f} min"])
    if s.get("stage_cpu_seconds"):
        rows.append(["CPU time of all stages", f"{sum(s['stage_cpu_seconds'].values()) / 60:.1f} min"])
    if s.get("final_train_loss") is not None:
        rows.append(["final training loss (total)", _f(s["final_train_loss"])])
    if s.get("heldout_bpb") is not None:
        rows.append(["held-out bits per byte (all groups), trained / untrained",
                     f"{_f(s['heldout_bpb'])} / {_f(s.get('heldout_bpb_untrained'))}"])
    for t in s.get("tasks", []):
        rows.append([f"task {t['task']}: accuracy (baseline)", f"{_pct(t['accuracy'])} ({_pct(t['baseline'])})"])
    if s.get("mtp_speedup") is not None:
        drafts = s.get("mtp_draft_tokens")
        rows.append(["MTP speculative vs plain decoding", f"{s['mtp_speedup']:.2f}x "
                     f"({f'{drafts} draft tokens, ' if drafts else ''}acceptance {_pct(s.get('acceptance_rate'))})"])
    if s.get("tokenizer_gain") is not None:
        rows.append(["SuperBPE bytes/token vs plain BPE", f"{s['tokenizer_gain']:.3f}x"])
    if s.get("final_model"):
        rows.append(["final model (generation, chat)", D.LABELS.get(s["final_model"], s["final_model"])])
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


def _section_params(params: dict[str, Any]) -> list:
    def value(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (dict, list)) else str(v)

    rows = [[k, value(v)] for k, v in params.items() if k != "budget"]
    rows += [[f"budget.{k}", value(v)] for k, v in params.get("budget", {}).items()]
    return [Heading("Run parameters"), Table(["parameter", "value"], rows)]


def _section_times(times: list[D.StageTime]) -> list:
    rows = []
    for t in times:
        if t.status == "not run":
            rows.append([t.name, "not run", "n/a", "n/a", "0"])
        elif t.seconds is None:
            rows.append([t.name, "running (this report)", "n/a", "n/a", str(t.attempts)])
        else:
            cpu = "n/a" if t.cpu_seconds is None else f"{t.cpu_seconds:.1f}"
            rows.append([t.name, t.status, f"{t.seconds:.1f}", cpu, str(t.attempts)])
    return [Heading("Time per stage"),
            Para("Wall-clock seconds (all attempts) and CPU seconds of the last attempt (user + system, this process "
                 "and its workers). On a shared machine the wall time depends on the load; the CPU time is about "
                 "what the stage costs on one otherwise idle core."),
            Table(["stage", "status", "wall seconds", "CPU seconds", "attempts"], rows)]


def _stage_cell(row: D.StageRow, key: str, ran: list[str], delta: dict[str, float]) -> str:
    if key not in ran:
        return "-"
    if key not in row.values:
        return ""  # this model was not measured on this row (e.g. NIAH only before and after extension)
    v = row.values[key]
    if row.kind == "percent":
        text = _pct(v) + (f" ({100 * delta[key]:+.1f} pts)" if key in delta else "")
    elif row.kind == "seconds":
        text = f"{v:.1f}"
    else:
        text = _f(v) + (f" ({delta[key]:+.3f})" if key in delta else "")
    return text


def _section_stages(st: D.StagesData) -> list:
    if not st.rows:
        return []
    labels = [label for _, label in D.COLUMNS]

    def table_rows(rows: list[D.StageRow]) -> list[list[str]]:
        out = []
        for r in rows:
            delta = D.changes(r, st.ran) if r.kind != "seconds" else {}
            name = r.name + (" (lower is better)" if r.better == "lower" else "")
            out.append([name] + [_stage_cell(r, k, st.ran, delta) for k, _ in D.COLUMNS])
        return out

    final = f" Generation (samples, MTP speed) used the {D.LABELS.get(st.final_model, st.final_model)} model." \
        if st.final_model else ""
    blocks: list = [
        Heading("Stage by stage"),
        Para("One column per model: the untrained initial model, then the model each stage wrote. In brackets: the "
             "change over the previous stage that has the number (percentage points for rates). '-': the stage did "
             "not run; empty: not measured for that model. Held-out text, tasks, safety (refusal rule) and tool "
             "calls were measured by the evaluate stage through the harness (later stages may use fewer task items "
             "than the base model, see budget.stage_eval); NIAH, sft-chat, the RL pass rate and the preference "
             "score were measured by their own stage before and after training." + final),
        Table(["measurement"] + labels, table_rows([r for r in st.rows if not r.detail]))]
    blocks += _section_verdicts(st)
    detail = [r for r in st.rows if r.detail]
    if detail:
        blocks += [Heading("Held-out bits per byte per group, every model", 3),
                   Table(["group"] + labels, table_rows(detail))]
    for f in st.figures:
        blocks.append(Figure(f.png, f.name, f"{D.LABELS.get(f.stage, f.stage)}: {f.caption}"))
    return blocks


def _verdict_value(v: D.Verdict, x: float) -> str:
    return _pct(x) if v.kind == "percent" else _f(x)


def _verdict_text(v: D.Verdict) -> str:
    return f"{v.row} {_verdict_value(v, v.before)} -> {_verdict_value(v, v.after)}"


def _section_verdicts(st: D.StagesData) -> list:
    """Does each stage improve what it exists for, and does anything regress beyond its tolerance?"""
    verdicts, regressions = D.verdicts(st), D.regressions(st)
    if not verdicts:
        return []
    rows = [[D.LABELS.get(v.stage, v.stage), v.row, f"{_verdict_value(v, v.before)} -> {_verdict_value(v, v.after)}",
             _verdict_value(v, v.tolerance), v.status] for v in verdicts]
    blocks: list = [
        Heading("Does each stage do its job?", 3),
        Para(f"Each stage's own measurement before and after it. Tolerance: {D.NOISE_Z:g} standard errors of the "
             "difference for rates and scores (paired over the same held-out prompts where the stage recorded "
             "per-prompt results, as RL and preference learning do; otherwise binomial from the item or prompt count, "
             f"{100 * D.FALLBACK_TOLERANCE:.0f} points where the count was not recorded), "
             f"{100 * D.BPB_TOLERANCE:.0f}% of the previous value for bits per byte. 'improved' and 'worse' mean a "
             "move beyond the tolerance."),
        Table(["stage", "measurement", "before -> after", "tolerance", "verdict"], rows)]
    if regressions:
        blocks.append(Para("Regressions beyond tolerance (a stage's model against the previous model): " + "; ".join(
            f"{D.LABELS.get(v.stage, v.stage)}: {_verdict_text(v)} (tolerance {_verdict_value(v, v.tolerance)})"
            for v in regressions) + "."))
    else:
        blocks.append(Para("No measurement regresses beyond its tolerance from one model to the next."))
    return blocks


def _section_model(model: D.ModelData | D.Missing) -> list:
    if isinstance(model, D.Missing):
        return _not_available("Model", model)
    cfg = model.config
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
    counts = [[k, _f(v) if isinstance(v, (int, float)) else str(v)] for k, v in model.parameters.items()]
    return [Heading("Model"), Table(["architecture", "value"], arch), Table(["parameters", "count"], counts),
            Para(f"Model directory (Hugging Face layout): {model.model_dir}")]


def _section_tokenizer(tok: D.TokenizerData | D.Missing, plots: Any) -> list:
    title = "Tokenizer: SuperBPE vs plain BPE"
    if isinstance(tok, D.Missing):
        return _not_available(title, tok)
    rows = [[r.group, _f(r.bytes), _f(r.superbpe_bytes_per_token, 2), _f(r.bpe_bytes_per_token, 2),
             f"{r.ratio:.3f}x"] for r in tok.rows + ([tok.total] if tok.total else [])]
    blocks: list = [Heading(title), Para(
        f"Both tokenizers were trained on the same {_f(tok.train_bytes)} bytes with {_f(tok.vocab_size)} "
        f"(SuperBPE) and {_f(tok.baseline_vocab_size)} (plain BPE) vocabulary entries; SuperBPE took "
        f"{_f(tok.seconds, 1)} s, the baseline {_f(tok.baseline_seconds, 1)} s. Superword tokens: "
        f"{_pct(tok.superword_share)} of the vocabulary. Measured on held-out text never used for training."),
        Table(["text", "bytes", "SuperBPE bytes/token", "plain BPE bytes/token", "ratio"], rows)]
    if tok.rows:
        blocks.append(Figure(plots.bytes_per_token_bars([r.group for r in tok.rows],
                                                        [r.superbpe_bytes_per_token for r in tok.rows],
                                                        [r.bpe_bytes_per_token for r in tok.rows]), "tokenizer",
                             "bytes per token (higher packs more text into each token)"))
    return blocks


def _section_pretrain(p: D.PretrainData | D.Missing, plots: Any) -> list:
    title = "Pre-training"
    if isinstance(p, D.Missing):
        return _not_available(title, p)
    rows = [[s.name, f"{s.first_step}-{s.last_step}", _f(s.tokens), _f(s.loss_start), _f(s.loss_end),
             _f(s.tokens_per_s, 0)] for s in p.stages]
    blocks: list = [
        Heading(title),
        Para(f"{p.last_step} optimizer steps, {_f(p.tokens)} tokens, in {_f(p.seconds, 1)} s. Loss is the total "
             "(CE + MTP + aux) averaged over the first and last tenth of each curriculum stage."),
        Table(["curriculum stage", "steps", "tokens", "loss at start", "loss at end", "tokens/s"], rows),
        Figure(plots.loss_curves(p.curves.by_stage, p.curves.heldout, p.curves.ce), "loss_curves",
               "training loss coloured by curriculum stage; dashed grey: training CE; black: held-out CE")]
    if p.mtp is not None:
        m = p.mtp
        blocks += [Heading("Multi-token prediction", 3),
                   Para(f"The MTP head predicts token t+2 from the final hidden state at t and token t+1. At the "
                        f"end of training its loss is {m.mtp_end:.3f} nats against {m.ce_end:.3f} for the main "
                        "next-token prediction (it sees one token less of the future it predicts)."),
                   Figure(plots.mtp_curve(m.steps, m.ce, m.mtp), "mtp_loss", "main next-token CE and MTP (t+2) loss")]
    if p.probes:
        onsets = ", ".join(f"{k} {'at step ' + str(v) if v is not None else 'not yet'}"
                           for k, v in p.probe_onsets.items())
        blocks += [Heading("In-context copying probes", 3),
                   Para("Accuracy of the copying probes scored during training: induction, key-value recall "
                        "and, in runs that score it, the answer tokens of held-out retrieval documents (onset: "
                        f"{onsets}; dashed lines mark it)."),
                   Figure(plots.probe_curves(p.probes), "probes", "copying probe accuracy per step")]
    return blocks + _section_balance(p, plots)


def _section_balance(p: D.PretrainData, plots: Any) -> list:
    blocks: list = [Heading("MoE load balance", 3)]
    mv = p.max_vio
    if isinstance(mv, D.Missing):
        blocks.append(Para(mv.reason))
    else:
        blocks.append(Para(f"MaxVio (max expert load over mean load, minus 1; 0 is perfect balance), mean over MoE "
                           f"layers: {mv.first:.3f} at step {mv.first_step}, {mv.last:.3f} over the last tenth of "
                           "training."))
        blocks.append(Figure(plots.maxvio_curve(mv.steps, mv.by_layer), "max_vio", "MaxVio per MoE layer"))
    load = p.expert_load
    if isinstance(load, D.Missing):
        blocks.append(Para(load.reason))
    elif load is not None:
        blocks.append(Figure(plots.expert_load_heatmap(load.load_LE, load.layer_names), "expert_load",
                             f"share of routed tokens per expert at step {load.step} (rows: MoE layers)"))
    return blocks


def _section_eval(e: D.EvalData | D.Missing, plots: Any) -> list:
    title = "Evaluation"
    if isinstance(e, D.Missing):
        return _not_available(title, e)
    blocks: list = [Heading(title),
                    Para("The pre-trained (base) model in detail, measured through the evaluation harness (`kexaone "
                         "eval`'s code path on the local model); its own files are in evaluate/harness/<stage> "
                         "(results.json, results.md, per-sample JSONL) for every model.")]
    if e.heldout:
        rows = [[r.domain, r.language, _f(r.documents), _f(r.tokens), _f(r.loss), _f(r.bits_per_byte),
                 _f(r.untrained_bits_per_byte)] for r in e.heldout]
        blocks += [Heading("Held-out loss per domain and language", 3),
                   Para("Documents never seen in training; bits per byte compares across tokenizers."),
                   Table(["domain", "language", "documents", "tokens", "loss (nats/token)", "bits/byte",
                          "bits/byte untrained"], rows)]
    if e.tasks:
        rows = [[t.task, _f(t.items), f"{_pct(t.accuracy)} +/- {_pct(t.stderr)}", _pct(t.chance), _pct(t.untrained),
                 "above" if t.above_baseline else "not clearly above", t.scoring] for t in e.tasks]
        blocks += [Heading("Held-out synthetic tasks", 3),
                   Para("Accuracy +/- one binomial standard error; 'above' means more than two standard errors "
                        "above the better of chance and the untrained model."),
                   Table(["task", "items", "accuracy", "chance", "untrained model", "vs baseline", "scoring"], rows),
                   Figure(plots.accuracy_bars([t.task for t in e.tasks], [t.accuracy for t in e.tasks],
                                              [t.chance for t in e.tasks], [t.untrained for t in e.tasks]),
                          "tasks", "accuracy per task")]
        for t in e.tasks:
            for ex in t.examples[:2]:
                blocks.append(Details(f"{t.task}: {'correct' if ex['correct'] else 'wrong'} (answer "
                                      f"{ex['answer']!r})", f"{ex['prompt']}\n--- model ---\n{ex['output']}"))
    return blocks


def _section_generation(g: D.GenerationData | D.Missing) -> list:
    title = "Generation"
    if isinstance(g, D.Missing):
        return _not_available(title, g)
    blocks: list = [Heading(title)]
    if g.samples:
        blocks += [Heading("Sample answers", 3),
                   Para("Sampled at temperature 1.0, top-p 0.95 (the K-EXAONE recommendation).")]
        for s in g.samples:
            body = (f"user: {s['prompt']}\n--- reasoning ---\n{s.get('reasoning') or ''}\n--- answer ---\n"
                    f"{s.get('content', '')}")
            blocks.append(Details(f"{s['mode']}: {s['prompt'][:80]} ({s['tokens']} tokens, {s['seconds']:.1f} s)",
                                  body))
    sp = g.speed
    if sp:
        rows = []
        for r in g.speed_runs:
            ratio = D.speedup(r)
            rows.append([f"MTP, {r['draft_tokens']} draft token{'s' if r['draft_tokens'] != 1 else ''}",
                         _f(r["plain_tokens_per_s"], 1), _f(r["mtp_tokens_per_s"], 1),
                         _f(r.get("tokens_per_forward"), 2), _pct(r.get("acceptance_rate")),
                         f"{ratio:.2f}x" if ratio else "n/a"])
        blocks += [Heading("Decode speed", 3), Para(
            f"Greedy decoding of {sp['new_tokens']} new tokens per prompt, batch 1, median of {sp['repeats']} "
            f"interleaved repeats; each draft length is measured side by side with its own plain runs. Speculative "
            f"output identical to plain: {_f(all(r.get('identical') for r in g.speed_runs))}. The summary quotes the "
            f"fastest draft length ({sp['draft_tokens']})."
            + (f" Drafts score token ids below {sp['draft_vocab']} only (the draft vocabulary)."
               if sp.get("draft_vocab") else "")),
            Table(["mode", "plain tokens/s", "speculative tokens/s", "tokens per main-model forward",
                   "acceptance rate", "speed-up"], rows)]
    return blocks


# ---------------------------------------------------------------------------------------------- entry points
def render(data: D.ReportData, plots: Any = None) -> tuple[Document, dict[str, Any]]:
    """(the report document, the headline numbers) of computed report data; `plots` defaults to report.plots."""
    from kexaone.report import plots as default_plots

    plots = plots or default_plots
    summary = D.headline(data)
    body = (_section_stages(data.stages) + _section_machine(data.machine) + _section_params(data.params)
            + _section_times(data.times) + _section_model(data.model) + _section_tokenizer(data.tokenizer, plots)
            + _section_pretrain(data.pretrain, plots) + _section_eval(data.eval, plots)
            + _section_generation(data.generation))
    title = f"kexaone speedrun report ({data.budget or 'unknown'} budget)"
    return Document(title, _section_summary(summary) + body), summary


def build_report(run_dir: str | os.PathLike, machine: dict[str, Any] | None = None,
                 plots: Any = None) -> tuple[Document, dict[str, Any]]:
    """(the report document, the headline numbers) of a speedrun directory; machine defaults to this one."""
    from kexaone.report.machine import machine_info

    return render(D.collect(run_dir, machine if machine is not None else machine_info()), plots)


def write_report(run_dir: str | os.PathLike, machine: dict[str, Any] | None = None) -> dict[str, str]:
    """Write report.md, report.html and report.json into run_dir; returns their paths (relative to run_dir)."""
    run_dir = Path(run_dir)
    doc, summary = build_report(run_dir, machine=machine)
    write_document(doc, run_dir / "report.md", run_dir / "report.html")
    atomic_write_text(run_dir / "report.json", json.dumps(summary, indent=2, default=str) + "\n")
    return {"markdown": "report.md", "html": "report.html", "json": "report.json"}

"""kexaone.report: the report card built from a run directory (files in the formats the stages write)."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from kexaone.pipeline.stages import Stage, StageRunner
from kexaone.report.card import build_report, write_report
from kexaone.report.document import Details, Document, Figure, Heading, Para, Table, to_html, to_markdown
from kexaone.report.machine import machine_info
from kexaone.train.metrics import MetricsLogger

MACHINE = {"cpu": "Test CPU", "cores": 2, "cores_usable": 2, "torch_threads": 2, "memory_bytes": 8 << 30,
           "os": "Linux", "python": "3.11", "torch": "2.13.0", "accelerator": None, "date": "2026-01-01T00:00:00",
           "git": {"commit": "abc123", "dirty": False}}


def _tokenizer_stage(ctx):
    ev = {"vocab_size": 1024, "baseline_vocab_size": 1024, "train_bytes": 5000, "superword_share": 0.2,
          "seconds": 1.5, "baseline_seconds": 0.5,
          "rows": [{"group": "facts/en", "bytes": 1200, "superbpe_tokens": 300, "bpe_tokens": 400},
                   {"group": "code/py", "bytes": 800, "superbpe_tokens": 200, "bpe_tokens": 200}]}
    (ctx.stage_dir / "tokenizer_eval.json").write_text(json.dumps(ev))
    return {"eval": ctx.rel(ctx.stage_dir / "tokenizer_eval.json")}


def _pretrain_stage(ctx):
    log = MetricsLogger(ctx.stage_dir)
    log.log({"kind": "config", "step": 0, "tokens_per_step": 100})
    for step in range(1, 31):
        stage = "foundation" if step <= 10 else ("expertise" if step <= 20 else "reasoning")
        log.log({"kind": "train", "step": step, "loss": 5.0 - 0.1 * step, "ce": 4.9 - 0.1 * step,
                 "mtp": 5.5 - 0.1 * step, "aux": 1.0, "tokens": 100 * step, "stage": stage, "tok_per_s": 1000.0,
                 "max_vio": 1.0 / step, "max_vio_layers": [1.0 / step, 2.0 / step]})
        if step % 10 == 0:
            log.log({"kind": "eval", "step": step, "loss": 5.0 - 0.1 * step, "bpb": 2.0})
            log.log({"kind": "probe", "step": step, "induction_acc": step / 30, "recall_acc": 0.05})
            log.save_expert_load(step, np.full((2, 4), 0.25, dtype=np.float32))
    log.close()
    return {"metrics": ctx.rel(ctx.stage_dir / "metrics.jsonl"), "out_dir": ctx.rel(ctx.stage_dir), "seconds": 12.0}


def _evaluate_stage(ctx):
    ev = {"heldout": [{"domain": "facts", "language": "en", "documents": 3, "tokens": 90, "bytes": 300,
                       "loss": 2.0, "bits_per_byte": 0.9}],
          "heldout_untrained": [{"domain": "facts", "language": "en", "documents": 3, "tokens": 90, "bytes": 300,
                                 "loss": 7.0, "bits_per_byte": 3.0}],
          "tasks": [{"task": "arithmetic", "items": 100, "correct": 60, "accuracy": 0.6, "chance": 0.1,
                     "stderr": 0.049, "untrained_accuracy": 0.05,
                     "examples": [{"prompt": "2+2=<x>", "answer": "4", "output": "4 | ok", "correct": True}]}]}
    (ctx.stage_dir / "eval.json").write_text(json.dumps(ev))
    return {"eval": ctx.rel(ctx.stage_dir / "eval.json")}


def _generate_stage(ctx):
    gen = {"samples": [{"mode": "reasoning", "prompt": "What is 2+3?", "text": "...", "reasoning": "2+3 = 5",
                        "content": "5 <b>", "tokens": 12, "seconds": 0.4, "parse_errors": []}],
           "speed": {"new_tokens": 64, "draft_tokens": 2, "plain_tokens_per_s": 100.0, "mtp_tokens_per_s": 150.0,
                     "acceptance_rate": 0.7, "tokens_per_forward": 2.1, "identical": True, "repeats": 3}}
    gen["speed_by_draft_tokens"] = [
        {**gen["speed"], "draft_tokens": 1, "plain_tokens_per_s": 102.0, "mtp_tokens_per_s": 122.4,
         "acceptance_rate": 0.8, "tokens_per_forward": 1.8}, gen["speed"]]
    (ctx.stage_dir / "generation.json").write_text(json.dumps(gen))
    return {"generation": ctx.rel(ctx.stage_dir / "generation.json")}


@pytest.fixture
def run_dir(tmp_path):
    stages = [Stage("tokenizer", _tokenizer_stage), Stage("pretrain", _pretrain_stage),
              Stage("evaluate", _evaluate_stage), Stage("generate", _generate_stage)]
    StageRunner(tmp_path, stages, {"budget": {"name": "tiny"}, "seed": 0}, log=lambda s: None).run()
    return tmp_path


def test_report_numbers_come_from_the_run_files(run_dir):
    doc, summary = build_report(run_dir, machine=MACHINE)
    assert summary["budget"] == "tiny"
    # tokenizer: (2000/500) / (2000/600) bytes per token
    assert summary["tokenizer_gain"] == pytest.approx((2000 / 500) / (2000 / 600))
    assert summary["final_train_loss"] == pytest.approx(sum(5.0 - 0.1 * s for s in range(21, 31)) / 10)
    assert summary["max_vio_first"] == pytest.approx(1.5)
    assert summary["heldout_bpb"] == pytest.approx(0.9) and summary["heldout_bpb_untrained"] == pytest.approx(3.0)
    assert summary["tasks"] == [{"task": "arithmetic", "accuracy": 0.6, "baseline": 0.1, "chance": 0.1,
                                 "untrained": 0.05}]
    assert summary["mtp_speedup"] == pytest.approx(1.5) and summary["acceptance_rate"] == 0.7
    assert summary["mtp_draft_tokens"] == 2
    speed_rows = [r for b in doc.blocks if isinstance(b, Table) and "speculative tokens/s" in b.headers
                  for r in b.rows]
    assert [r[0] for r in speed_rows] == ["MTP, 1 draft token", "MTP, 2 draft tokens"]
    assert speed_rows[0][-1] == "1.20x" and speed_rows[1][-1] == "1.50x"
    assert set(summary["stage_seconds"]) == {"tokenizer", "pretrain", "evaluate", "generate"}
    assert all(v > 0 for v in summary["stage_seconds"].values())
    figures = [b.name for b in doc.blocks if isinstance(b, Figure)]
    assert {"tokenizer", "loss_curves", "mtp_loss", "max_vio", "expert_load", "tasks", "probes"} <= set(figures)
    probe_text = next(b.text for b in doc.blocks if isinstance(b, Para) and "probes scored during" in b.text)
    assert "induction at step 20" in probe_text and "recall not yet" in probe_text


def test_write_report_files_are_self_contained_and_parse(run_dir):
    paths = write_report(run_dir, machine=MACHINE)
    md = (run_dir / paths["markdown"]).read_text()
    html = (run_dir / paths["html"]).read_text()
    summary = json.loads((run_dir / paths["json"]).read_text())
    assert summary["mtp_speedup"] == pytest.approx(1.5)
    # every image in the HTML is an embedded PNG; no external resources at all
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in html and "https://" not in html
    # markdown links figures that exist next to it
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (run_dir / rel).is_file()
    # the decode-speed table row parses back to the measured numbers
    row = next(line for line in md.splitlines() if line.startswith("| MTP, 2 draft tokens"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) == 100.0 and float(cells[2]) == 150.0 and cells[-1] == "1.50x"
    # user text is escaped in HTML (a sample answer contains "<b>")
    assert "5 &lt;b&gt;" in html and "5 <b>" not in html
    # a task example containing '|' does not break the markdown table structure
    assert "4 | ok" in md  # inside a fenced details block, verbatim


def test_partial_run_still_reports(tmp_path):
    StageRunner(tmp_path, [Stage("tokenizer", _tokenizer_stage)], {"budget": {"name": "tiny"}},
                log=lambda s: None).run()
    doc, summary = build_report(tmp_path, machine=MACHINE)
    text = to_markdown(doc, tmp_path / "figs", "figs")
    assert "not available: the pretrain stage has not finished" in text
    assert "tokenizer_gain" in summary and "mtp_speedup" not in summary


def test_report_needs_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="stages.json"):
        build_report(tmp_path, machine=MACHINE)


def test_document_escaping_and_rendering(tmp_path):
    png = b"\x89PNG\r\n\x1a\nfake"
    doc = Document("T <1>", [Heading("H"), Para("a < b & c"), Table(["x|y", "z"], [["1|2", "3"]]),
                             Figure(png, "fig_1", "cap"), Details("s", "```code```")])
    md = to_markdown(doc, tmp_path / "f", "f")
    assert "| x\\|y | z |" in md and "| 1\\|2 | 3 |" in md
    assert "````text\n```code```\n````" in md
    assert (tmp_path / "f" / "fig_1.png").read_bytes() == png
    html = to_html(doc)
    assert "<title>T &lt;1&gt;</title>" in html and "a &lt; b &amp; c" in html
    assert base64.b64encode(png).decode() in html
    with pytest.raises(ValueError, match="figure name"):
        to_markdown(Document("t", [Figure(png, "bad name")]), tmp_path / "f", "f")


def test_machine_info_describes_this_machine():
    info = machine_info()
    assert info["cores"] >= 1 and info["torch"]
    assert info["memory_bytes"] is None or info["memory_bytes"] > 0
    assert set(info["git"]) == {"commit", "dirty"}
    json.dumps(info)


def test_report_data_is_computed_apart_from_rendering(run_dir):
    from kexaone.report.data import Missing, collect, headline

    data = collect(run_dir, MACHINE)
    assert data.model == Missing("the pretrain stage recorded no model_dir.")
    tok = data.tokenizer
    assert [(r.group, r.bytes) for r in tok.rows] == [("facts/en", 1200), ("code/py", 800)]
    assert tok.rows[0].superbpe_bytes_per_token == 4.0 and tok.rows[0].bpe_bytes_per_token == 3.0
    assert tok.total.ratio == pytest.approx((2000 / 500) / (2000 / 600))
    p = data.pretrain
    assert [(s.name, s.first_step, s.last_step, s.tokens) for s in p.stages] == [
        ("foundation", 1, 10, 1000), ("expertise", 11, 20, 1000), ("reasoning", 21, 30, 1000)]
    assert p.stages[0].loss_start == pytest.approx(4.9) and p.stages[2].loss_end == pytest.approx(2.0)
    assert p.curves.heldout == ([10, 20, 30], [4.0, 3.0, 2.0])
    assert p.curves.ce[0] == list(range(1, 31)) and p.curves.ce[1][0] == pytest.approx(4.8)
    assert p.max_vio.first_step == 1 and list(p.max_vio.by_layer) == ["MoE 0", "MoE 1"]
    assert p.expert_load.step == 30 and p.expert_load.load_LE.shape == (2, 4)
    assert data.eval.tasks[0].above_baseline and data.eval.heldout[0].untrained_bits_per_byte == 3.0
    assert headline(data) == build_report(run_dir, machine=MACHINE)[1]


def test_model_section_counts_parameters_of_the_saved_config(tmp_path):
    from kexaone.config import KExaoneConfig
    from kexaone.model.info import count_parameters

    def pretrain(ctx):
        (ctx.stage_dir / "model").mkdir()
        KExaoneConfig.preset("tiny").save_json(ctx.stage_dir / "model" / "config.json")
        return {"model_dir": ctx.rel(ctx.stage_dir / "model")}

    StageRunner(tmp_path, [Stage("pretrain", pretrain)], {"budget": {"name": "tiny"}}, log=lambda s: None).run()
    doc, _ = build_report(tmp_path, machine=MACHINE)
    (counts,) = [b for b in doc.blocks if isinstance(b, Table) and b.headers == ["parameters", "count"]]
    total = count_parameters(KExaoneConfig.preset("tiny"))["total"]
    assert ["total", f"{total:,}"] in counts.rows


def test_errors_in_finished_stages_raise_instead_of_becoming_report_text(tmp_path, run_dir):
    (run_dir / "tokenizer" / "tokenizer_eval.json").write_text("{not json")
    with pytest.raises(json.JSONDecodeError):
        build_report(run_dir, machine=MACHINE)

    def broken(ctx):
        (ctx.stage_dir / "model").mkdir()
        (ctx.stage_dir / "model" / "config.json").write_text('{"hidden_size": "wide"}')
        return {"model_dir": ctx.rel(ctx.stage_dir / "model")}

    StageRunner(tmp_path / "b", [Stage("pretrain", broken)], {}, log=lambda s: None).run()
    with pytest.raises((ValueError, TypeError)):
        build_report(tmp_path / "b", machine=MACHINE)


def test_missing_expert_loads_are_a_named_condition(run_dir):
    (run_dir / "pretrain" / "expert_load.jsonl").unlink()
    doc, summary = build_report(run_dir, machine=MACHINE)
    assert any(isinstance(b, Para) and b.text == "no expert-load matrices were saved." for b in doc.blocks)
    assert "expert_load" not in [b.name for b in doc.blocks if isinstance(b, Figure)]
    assert summary["max_vio_first"] == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------- stage by stage
def _model_stage(name):
    def fn(ctx):
        (ctx.stage_dir / "run" / "model").mkdir(parents=True)
        (ctx.stage_dir / "run" / "loss_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
        out = {"model_dir": ctx.rel(ctx.stage_dir / "run" / "model"), "seconds": 2.0}
        if name == "sft":
            ev = {"base": {"score": 0.1, "well_formed": 0.2}, "sft": {"score": 0.4, "well_formed": 0.9}}
            (ctx.stage_dir / "sft_eval.json").write_text(json.dumps(ev))
            out.update(eval=ctx.rel(ctx.stage_dir / "sft_eval.json"), init="pretrain")
        if name == "rl":
            out.update(heldout_before={"pass_rate": 0.25}, heldout_after={"pass_rate": 0.5}, init="sft")
        return out
    return Stage(name, fn)


def _stages_evaluate(ctx):
    ev = _evaluate_stage(ctx)
    data = json.loads((ctx.stage_dir / "eval.json").read_text())

    def model(stage, bpb, acc, safe):
        return {"stage": stage, "heldout_bpb": bpb, "tasks": {"arithmetic": {"accuracy": acc}},
                "heldout": [{"domain": "facts", "language": "en", "bytes": 300, "bits_per_byte": bpb}],
                "safety": {"safe_rate": safe, "over_refusal_rate": 0.5}, "tools": {"pass_rate": 0.0}}

    data["models"] = [model("untrained", 3.0, 0.05, 0.0), model("pretrain", 0.9, 0.6, 0.25),
                      model("sft", 0.8, 0.7, 0.75), model("rl", 0.85, 0.75, 0.75)]
    (ctx.stage_dir / "eval.json").write_text(json.dumps(data))
    return ev


def test_stage_table_has_one_column_per_stage_and_dashes_for_stages_not_run(tmp_path):
    stages = [Stage("tokenizer", _tokenizer_stage), Stage("pretrain", _pretrain_stage), _model_stage("sft"),
              _model_stage("rl"), Stage("evaluate", _stages_evaluate),
              Stage("generate", lambda ctx: {**_generate_stage(ctx), "model_stage": "rl"})]
    StageRunner(tmp_path, stages, {"budget": {"name": "tiny"}, "seed": 0}, log=lambda s: None).run()
    doc, summary = build_report(tmp_path, machine=MACHINE)
    st = summary["stages"]
    assert st["models"] == ["untrained", "pretrain", "sft", "rl"] and summary["final_model"] == "rl"
    rows = {r["name"]: r for r in st["rows"]}
    bpb = rows["held-out bits per byte (all groups)"]
    assert bpb["values"] == {"untrained": 3.0, "pretrain": 0.9, "sft": 0.8, "rl": 0.85}
    assert bpb["change"] == pytest.approx({"pretrain": -2.1, "sft": -0.1, "rl": 0.05})
    assert rows["sft-chat score (SFT stage)"]["values"] == {"pretrain": 0.1, "sft": 0.4}
    assert rows["RL held-out pass rate (RL stage)"]["change"] == {"rl": 0.25}
    assert rows["safety: safe rate on harmful items"]["change"] == {"pretrain": 0.25, "sft": 0.5, "rl": 0.0}
    table = next(b for b in doc.blocks if isinstance(b, Table) and b.headers[0] == "measurement")
    assert table.headers == ["measurement", "untrained", "base", "extended", "SFT", "RL", "preference"]
    row = next(r for r in table.rows if r[0].startswith("held-out bits per byte (all groups)"))
    assert row[1:] == ["3.000", "0.900 (-2.100)", "-", "0.800 (-0.100)", "0.850 (+0.050)", "-"]
    row = next(r for r in table.rows if r[0].startswith("safety: safe rate"))
    assert row[3:6] == ["-", "75.0% (+50.0 pts)", "75.0% (+0.0 pts)"]
    row = next(r for r in table.rows if r[0].startswith("sft-chat score"))
    assert row[1:] == ["", "10.0%", "-", "40.0% (+30.0 pts)", "", "-"]
    figures = {b.name for b in doc.blocks if isinstance(b, Figure)}
    assert "sft_loss" in figures and "rl_reward" not in figures  # rl wrote no reward curve here: left out


def test_verdicts_and_regressions_use_stated_tolerances():
    """Each stage's own measurement gets a verdict against its tolerance (2 standard errors of the difference from
    the item counts, 5 points without them, 3% for bits per byte); every wrong-way move beyond tolerance is listed."""
    import math

    from kexaone.report.stage_table import StageRow, StagesData, regressions, verdicts

    ran = ["untrained", "pretrain", "sft", "rl"]
    rows = [StageRow("bpb", {"untrained": 3.0, "pretrain": 0.9, "sft": 0.92, "rl": 1.0}, better="lower",
                     purpose="pretrain"),
            StageRow("pass", {"sft": 0.10, "rl": 0.25}, kind="percent", purpose="rl", stderr={"sft": 0.03, "rl": 0.04}),
            StageRow("chat", {"pretrain": 0.10, "sft": 0.13}, kind="percent", purpose="sft"),
            StageRow("safe", {"pretrain": 0.5, "sft": 0.6, "rl": 0.2}, kind="percent",
                     stderr={"pretrain": 0.05, "sft": 0.05, "rl": 0.05}),
            StageRow("time", {"pretrain": 3.0, "sft": 9.0}, kind="seconds", better=""),
            StageRow("bpb of one group", {"pretrain": 0.5, "sft": 0.9}, better="lower", detail=True)]
    st = StagesData(ran=ran, rows=rows)
    got = {v.stage: v for v in verdicts(st)}
    assert set(got) == {"pretrain", "rl", "sft"}
    assert got["pretrain"].status == "improved" and got["pretrain"].tolerance == pytest.approx(0.09)
    assert got["rl"].tolerance == pytest.approx(2 * math.sqrt(0.03 ** 2 + 0.04 ** 2))  # 0.1
    assert got["rl"].status == "improved"  # +0.15
    assert got["sft"].tolerance == 0.05 and got["sft"].status == "within tolerance"  # no counts: 5 points
    worse = {(v.row, v.stage) for v in regressions(st)}
    # bpb 0.92 -> 1.0 is beyond 3% of 0.92 (0.0276); 0.9 -> 0.92 is not; safe 0.6 -> 0.2 is beyond 2 * 0.0707
    assert worse == {("bpb", "rl"), ("safe", "rl")}


def test_paired_tolerance_over_the_same_prompts():
    """Before and after on the same prompts: the tolerance is 2 paired standard errors (the standard deviation of
    the per-prompt differences over sqrt(n), as scipy's paired t-test computes it), preferred to the separate ones;
    rl and pref rows get it from the per-prompt results their held-out evaluations record."""
    import math
    import statistics

    from kexaone.report.stage_table import StageRow, _stage_rows, paired_se, tolerance

    before = [0.0, 0.5, 1.0, 0.25, 0.75, 0.5]
    after = [0.25, 0.5, 1.0, 0.5, 1.0, 0.5]
    d = [b - a for a, b in zip(before, after)]
    reference = math.sqrt(sum((x - statistics.fmean(d)) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
    assert paired_se(before, after) == pytest.approx(reference)
    stats = pytest.importorskip("scipy.stats")
    t = stats.ttest_rel(after, before).statistic
    assert statistics.fmean(d) / paired_se(before, after) == pytest.approx(t)
    assert paired_se(before, after[:-1]) is None and paired_se([1.0], [0.0]) is None and paired_se(None, after) is None

    row = StageRow("pass", {"sft": 0.5, "rl": 0.625}, kind="percent", stderr={"sft": 0.2, "rl": 0.2},
                   paired_se={"rl": paired_se(before, after)})
    assert tolerance(row, "sft", "rl") == pytest.approx(2 * reference)
    assert tolerance(StageRow("pass", row.values, kind="percent", stderr=row.stderr), "sft", "rl") == \
        pytest.approx(2 * math.sqrt(0.08))

    class Run:  # the two stage records _stage_rows reads
        stages = {"rl": {"status": "done", "seconds": 1.0, "outputs": {
            "init": "sft", "heldout_before": {"pass_rate": 0.5, "n_prompts": 6, "per_prompt_pass": before},
            "heldout_after": {"pass_rate": 0.625, "n_prompts": 6, "per_prompt_pass": after}}}}

    rl_row = next(r for r in _stage_rows(Run()) if r.purpose == "rl")
    assert rl_row.paired_se == {"rl": pytest.approx(reference)}

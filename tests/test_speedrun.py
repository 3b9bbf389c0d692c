"""The stage runner (resume, redo, parameter checks, locking) and the `tiny` speedrun end to end, including a run
killed after its tokenizer stage and resumed."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kexaone.pipeline.budgets import BUDGETS, Budget, get_budget
from kexaone.pipeline.recipe import STAGE_NAMES
from kexaone.pipeline.stages import STATE_FILE, Stage, StageRunner, read_state

REPO = Path(__file__).resolve().parents[1]


def _quiet(_msg: str) -> None:
    pass


class Recorder:
    """Stage functions that count their calls and write a file into their directory."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.interrupt: set[str] = set()
        self.resumed: dict[str, bool] = {}

    def stage(self, name: str) -> Stage:
        def fn(ctx):
            self.calls.append(name)
            self.resumed[name] = ctx.resumed
            (ctx.stage_dir / "made.txt").write_text(name)
            if name in self.interrupt:
                self.interrupt.discard(name)
                time.sleep(0.01)
                raise KeyboardInterrupt
            if name in self.fail:
                self.fail.discard(name)
                raise RuntimeError(f"{name} broke")
            prev = {k: v.get("n") for k, v in ctx.outputs.items()}
            return {"n": len(self.calls), "seen": prev, "file": ctx.rel(ctx.stage_dir / "made.txt")}

        return Stage(name, fn)

    def stages(self, names=("a", "b", "c")) -> list[Stage]:
        return [self.stage(n) for n in names]


def test_runs_in_order_passes_outputs_and_skips_done_stages(tmp_path):
    rec = Recorder()
    out = StageRunner(tmp_path, rec.stages(), {"x": 1}, log=_quiet).run()
    assert rec.calls == ["a", "b", "c"]
    assert out["c"]["seen"] == {"a": 1, "b": 2}
    assert out["a"]["file"] == "a/made.txt"
    state = read_state(tmp_path)
    assert [state["stages"][n]["status"] for n in "abc"] == ["done"] * 3
    assert all(state["stages"][n]["seconds"] > 0 for n in "abc")
    # a second run does nothing but returns the same outputs
    out2 = StageRunner(tmp_path, rec.stages(), {"x": 1}, log=_quiet).run()
    assert rec.calls == ["a", "b", "c"] and out2 == out


def test_failed_stage_is_recorded_and_retried_keeping_its_directory(tmp_path):
    rec = Recorder()
    rec.fail.add("b")
    with pytest.raises(RuntimeError, match="b broke"):
        StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run()
    st = read_state(tmp_path)["stages"]
    assert st["a"]["status"] == "done" and st["b"]["status"] == "failed" and "b broke" in st["b"]["error"]
    assert "c" not in st
    StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run()
    assert rec.calls == ["a", "b", "b", "c"]
    assert rec.resumed["b"] is True and rec.resumed["c"] is False
    assert read_state(tmp_path)["stages"]["b"]["attempts"] == 2


def test_interrupted_stage_stays_running_and_resumes_with_its_time(tmp_path):
    rec = Recorder()
    rec.interrupt.add("b")
    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run()
    st = read_state(tmp_path)["stages"]["b"]
    assert st["status"] == "running" and st["seconds"] >= 0.01
    assert (tmp_path / "b" / "made.txt").exists()
    StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run()
    st = read_state(tmp_path)["stages"]["b"]
    assert st["status"] == "done" and st["prior_seconds"] >= 0.01 and rec.resumed["b"]
    assert rec.calls == ["a", "b", "b", "c"]


def test_from_stage_redoes_that_stage_and_later_ones_from_scratch(tmp_path):
    rec = Recorder()
    StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run()
    (tmp_path / "b" / "stale.txt").write_text("old")
    StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run(from_stage="b")
    assert rec.calls == ["a", "b", "c", "b", "c"]
    assert not (tmp_path / "b" / "stale.txt").exists()
    assert rec.resumed["b"] is False


def test_until_stops_early_and_bad_stage_names_are_refused(tmp_path):
    rec = Recorder()
    out = StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run(until="a")
    assert list(out) == ["a"] and rec.calls == ["a"]
    with pytest.raises(ValueError, match="from_stage='zz' is not a stage"):
        StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run(from_stage="zz")
    with pytest.raises(ValueError, match="unique"):
        StageRunner(tmp_path, [rec.stage("a"), rec.stage("a")], {})


def test_changed_parameters_are_refused_unless_a_stage_is_redone(tmp_path):
    rec = Recorder()
    StageRunner(tmp_path, rec.stages(), {"budget": "tiny", "seed": 0}, log=_quiet).run()
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        StageRunner(tmp_path, rec.stages(), {"budget": "tiny", "seed": 1}, log=_quiet).run()
    StageRunner(tmp_path, rec.stages(), {"budget": "tiny", "seed": 1}, log=_quiet).run(from_stage="c")
    assert read_state(tmp_path)["params"]["seed"] == 1
    assert rec.calls == ["a", "b", "c", "c"]


def test_a_second_process_cannot_drive_the_same_directory(tmp_path):
    rec = Recorder()
    seen = {}

    def nested(ctx):
        try:
            StageRunner(tmp_path, rec.stages(), {}, log=_quiet).run()
        except ValueError as e:
            seen["error"] = str(e)
        return {}

    StageRunner(tmp_path, [Stage("outer", nested)], {}, log=_quiet).run()
    assert "another process" in seen["error"]


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        StageRunner(tmp_path, Recorder().stages(), {}, log=_quiet).run()


def test_budgets_are_consistent():
    assert set(BUDGETS) == {"tiny", "default", "large"}
    for b in BUDGETS.values():
        assert b.train_steps >= 1 and b.seq_len >= 16 and 0 < b.lr < 1
    assert BUDGETS["tiny"].train_tokens < BUDGETS["default"].train_tokens < BUDGETS["large"].train_tokens
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        get_budget("huge")
    # every stage's spend is in the budget and survives the JSON round trip of stages.json
    for b in BUDGETS.values():
        assert Budget.from_dict(json.loads(json.dumps(b.to_dict()))) == b
        assert b.sft.steps >= 1 and b.rl.rounds >= 1 and b.pref.epochs >= 1 and b.extend.factor > 1
    assert BUDGETS["tiny"].sft.steps < BUDGETS["default"].sft.steps
    with pytest.raises(ValueError, match=r"SFTBudget has no field\(s\) \['stepz'\]"):
        Budget.from_dict({**BUDGETS["tiny"].to_dict(), "sft": {"stepz": 3}})


def test_copy_warmup_steps_come_on_top_of_the_curriculum(tmp_path):
    from kexaone.pipeline.recipe import pretrain_config
    from kexaone.pipeline.stages import StageContext

    b = BUDGETS["tiny"].replace(copy_warmup_steps=7)
    ctx = StageContext(out_dir=tmp_path, stage_dir=tmp_path / "pretrain", params={"budget": b.to_dict(), "seed": 0},
                       outputs={"tokenizer": {"dir": "tokenizer/tokenizer"}})
    cfg = pretrain_config(ctx, resume=False)
    assert cfg.copy_warmup_steps == 7 and cfg.max_steps == b.train_steps + 7
    assert BUDGETS["default"].copy_warmup_steps == 0  # not adopted: it would not fit the hour (README, issue 17)


@pytest.mark.parametrize("stage", ["rl", "pref"])
def test_interrupted_rl_or_pref_leaves_its_stage_unfinished(tmp_path, monkeypatch, stage):
    """A signal during RL or preference learning ends the stage as interrupted (the runner keeps it 'running' and
    the next run redoes it), not as a failure on the missing after-training evaluation."""
    from types import SimpleNamespace

    import kexaone.rl.cli as rl_cli
    import kexaone.rl.pref_cli as pref_cli
    from kexaone.pipeline import rl_stage
    from kexaone.pipeline.stages import StageContext

    stopped = SimpleNamespace(interrupted=True, signal_name="SIGTERM", steps=3,
                              rl={"heldout": {"before": {"pass_rate": 0.1}}},
                              pref={"heldout": {"before": {"reward_mean": 0.5}}})
    monkeypatch.setattr(rl_cli, "run_rl", lambda cfg: stopped)
    monkeypatch.setattr(pref_cli, "run_pref", lambda cfg: stopped)
    monkeypatch.setattr(rl_stage, "newest_model", lambda ctx, name: ("sft", str(tmp_path / "sft")))
    ctx = StageContext(out_dir=tmp_path, stage_dir=tmp_path / stage,
                       params={"budget": BUDGETS["tiny"].to_dict(), "seed": 0}, outputs={})
    with pytest.raises(KeyboardInterrupt, match=rf"{stage} interrupted \(SIGTERM\) at step 3"):
        (rl_stage.stage_rl if stage == "rl" else rl_stage.stage_pref)(ctx)


# ---------------------------------------------------------------------------------------------- end to end
def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KEXAONE_CACHE"] = str(tmp_path / "cache")  # token caches of this test stay in its tmp dir
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _speedrun(out: Path, tmp_path: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kexaone", "speedrun", "--budget", "tiny", "--out", str(out), *extra],
                          cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def _numbers(cell: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*\.?\d*", cell)]


def _check_model_dir_loads_in_transformers(model_dir: Path) -> None:
    """The speedrun's final directory is a Hugging Face checkpoint: transformers loads model and tokenizer and
    computes the same logits as kexaone."""
    import torch

    transformers = pytest.importorskip("transformers")
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.tokenizer import KExaoneTokenizer

    tok = KExaoneTokenizer.from_dir(model_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = "The code word for room 7306 is"
    ids = tok.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    ours = KExaoneForCausalLM.from_pretrained(model_dir).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        a = ours(x).logits
        b = theirs(x).logits
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=0), float((a - b).abs().max())


@pytest.mark.slow
def test_tiny_speedrun_killed_after_tokenizer_resumes_and_reports(tmp_path):
    from kexaone.train.checkpoint import CheckpointManager

    out = tmp_path / "run"
    # 1. start, and SIGKILL the process once the tokenizer stage is done and pre-training has saved a checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "kexaone", "speedrun", "--budget", "tiny", "--out", str(out)],
                            cwd=REPO, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            state = read_state(out) if (out / STATE_FILE).exists() else {}
            tok_done = state.get("stages", {}).get("tokenizer", {}).get("status") == "done"
            if tok_done and CheckpointManager(out / "pretrain" / "checkpoints").latest() is not None:
                break
            if proc.poll() is not None:
                pytest.fail(f"speedrun exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("no pre-training checkpoint appeared in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert read_state(out)["stages"]["pretrain"]["status"] == "running"
    tok_record = read_state(out)["stages"]["tokenizer"]
    tok_mtime = (out / "tokenizer" / "tokenizer" / "tokenizer.json").stat().st_mtime_ns

    # 2. run again: the tokenizer stage is skipped, the rest runs to the report
    res = _speedrun(out, tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "[tokenizer] already done" in res.stderr
    state = read_state(out)
    assert state["stages"]["tokenizer"] == tok_record
    assert (out / "tokenizer" / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tok_mtime
    assert [n for n in STAGE_NAMES if state["stages"][n]["status"] == "done"] == list(STAGE_NAMES)
    # the chain: each post-training stage started from the model of the one before it
    assert [state["stages"][n]["outputs"]["init"] for n in ("sft", "rl", "pref")] == ["extend", "sft", "rl"]
    assert state["stages"]["generate"]["outputs"]["model_stage"] == "pref"
    # pre-training continued from its checkpoint: a second attempt, and every step logged exactly once
    pre = state["stages"]["pretrain"]
    assert pre["attempts"] == 2 and pre["outputs"]["resumed"] is True
    steps = [json.loads(line)["step"] for line in (out / "pretrain" / "metrics.jsonl").open()
             if json.loads(line).get("kind") == "train"]
    assert steps == list(range(1, get_budget("tiny").train_steps + 1))

    # 3. the report exists and its numbers are sane
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    summary = json.loads((out / "report.json").read_text())
    assert "data:image/png;base64," in html and "<img" in html
    assert math.isfinite(summary["final_train_loss"]) and 0 < summary["final_train_loss"] < 20
    assert 0 < summary["heldout_bpb"] < 20
    assert summary["tasks"] and all(0.0 <= t["accuracy"] <= 1.0 and 0.0 <= t["baseline"] <= 1.0
                                    for t in summary["tasks"])
    assert summary["mtp_speedup"] > 0 and summary["plain_tokens_per_s"] > 0
    speed = json.loads((out / "generate" / "generation.json").read_text())["speed"]
    assert speed["draft_vocab"] == 512 and speed["identical"]  # drafts from the draft vocabulary, same output
    assert "Drafts score token ids below 512" in md
    assert all(v > 0 for v in summary["stage_seconds"].values())
    # time table in the markdown: every finished stage has a positive time
    timed = "|".join(n for n in STAGE_NAMES if n != "report")
    rows = [line for line in md.splitlines() if re.match(rf"\| ({timed}) \| done", line)]
    assert len(rows) == len(STAGE_NAMES) - 1 and all(_numbers(r.split("|")[3])[0] > 0 for r in rows)
    _check_stage_table(md, summary)
    # evaluation table: accuracies are percentages in [0, 100]
    for line in md.splitlines():
        if line.startswith("| ") and ("above" in line) and "%" in line:
            pct = _numbers(line.split("|")[3])[0]
            assert 0 <= pct <= 100
    # the final model directory is in the HF layout and loads back
    model_dir = out / state["stages"]["pretrain"]["outputs"]["model_dir"]
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    assert list(model_dir.glob("*.safetensors"))
    _check_model_dir_loads_in_transformers(model_dir)

    # 4. a third run does nothing
    res = _speedrun(out, tmp_path, "--status")
    assert res.returncode == 0 and res.stdout.count("done") == len(STAGE_NAMES)

    # 5. --from sft redoes sft and every later stage, keeping the earlier ones
    before = read_state(out)["stages"]
    res = _speedrun(out, tmp_path, "--from", "sft")
    assert res.returncode == 0, res.stderr[-4000:]
    after = read_state(out)["stages"]
    redone = STAGE_NAMES[STAGE_NAMES.index("sft"):]
    for name in STAGE_NAMES:
        if name in redone:
            assert f"[{name}] redoing" in res.stderr and after[name]["started_at"] >= before["report"]["started_at"]
            assert after[name]["status"] == "done" and after[name]["attempts"] == 1
        else:
            assert after[name] == before[name] and f"[{name}] already done" in res.stderr
    _check_stage_table((out / "report.md").read_text(), json.loads((out / "report.json").read_text()))

    # 6. with a rubric judge (a scripted endpoint), the preference stage adds its rubric reward and the card shows
    # every rubric dimension before and after; the judge is a new parameter, so it needs --from
    from scripted_openai import ScriptedServer

    judge = ScriptedServer()
    judge.chat_fn = lambda text: 'Fine.\n{"helpfulness": 4, "instruction_following": 10, "safety": 10, ' \
                                 '"language": 10, "fluency": 1}'
    try:
        res = _speedrun(out, tmp_path, "--judge-endpoint", judge.url + "/v1")
        assert res.returncode != 0 and "--from" in res.stderr
        res = _speedrun(out, tmp_path, "--from", "pref", "--judge-endpoint", judge.url + "/v1")
        assert res.returncode == 0, res.stderr[-4000:]
        assert any(path.endswith("/chat/completions") and "[Rubric]" in body["messages"][-1]["content"]
                   for path, body in judge.requests)
    finally:
        judge.close()
    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["stages"]["rows"]}
    helpful = rows["preference rubric: helpfulness, held-out (judge, 0-1)"]["values"]
    assert helpful == pytest.approx({"rl": 1 / 3, "pref": 1 / 3})  # (4 - 1) / 9 from both models
    assert rows["preference rubric: fluency, held-out (judge, 0-1)"]["values"] == {"rl": 0.0, "pref": 0.0}
    assert "preference rubric: safety, held-out (judge, 0-1)" in (out / "report.md").read_text()
    res = _speedrun(out, tmp_path, "--rubric", "r.json")
    assert res.returncode != 0 and "--rubric needs --judge-endpoint" in res.stderr


def _check_stage_table(md: str, summary: dict) -> None:
    """The card's stage-by-stage table: one column per stage, every stage's model measured with real numbers."""
    header = next(line for line in md.splitlines() if line.startswith("| measurement |"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "measurement", "untrained", "base", "extended", "SFT", "RL", "preference"]
    stages = summary["stages"]
    assert stages["models"] == ["untrained", "pretrain", "extend", "sft", "rl", "pref"]
    rows = {r["name"]: r for r in stages["rows"]}
    bpb = rows["held-out bits per byte (all groups)"]["values"]
    assert set(bpb) == set(stages["models"]) and all(0 < v < 20 for v in bpb.values())
    per_model = [n for n in rows if n.startswith("task ") or n.startswith("safety:") or n.startswith("tool calls")]
    assert len(per_model) >= 7  # four synthetic tasks, safe rate, over-refusal, tool pass rate
    for name in per_model:
        assert set(rows[name]["values"]) == set(stages["models"]), name
        assert all(0.0 <= v <= 1.0 for v in rows[name]["values"].values()), name
    # what the stages measured themselves sits in the columns before and after each stage
    own = {"NIAH": ("pretrain", "extend"), "sft-chat score": ("extend", "sft"), "RL held-out": ("sft", "rl"),
           "preference score": ("rl", "pref")}
    for prefix, cols in own.items():
        row = next(r for n, r in rows.items() if n.startswith(prefix))
        assert tuple(row["values"]) == cols and all(math.isfinite(v) for v in row["values"].values())
        assert set(row["change"]) == {cols[1]}
    assert all(v > 0 for v in rows["time of the stage (wall seconds)"]["values"].values())
    # the markdown shows those numbers (a change in brackets after the first column), no placeholder
    line = next(x for x in md.splitlines() if x.startswith("| held-out bits per byte (all groups)"))
    cells = [c.strip() for c in line.strip("|").split("|")][1:]
    assert all(_numbers(c) for c in cells) and all("(" in c for c in cells[1:])


def test_auto_threads_counts_cores_busy_now():
    import sys

    from kexaone.speedrun import auto_threads
    from kexaone.utils.cpu import _sampled_busy_cores, usable_cores

    cores = usable_cores()
    assert 1 <= auto_threads(0.05) <= cores
    busy = _sampled_busy_cores(0.05)
    if sys.platform.startswith("linux"):
        assert busy is not None and 0.0 <= busy <= cores + 1e-9

"""`kexaone ablate`'s grid: finished runs are skipped, a grid stopped mid-way finishes the rest on re-run, an
unfinished run resumes from its checkpoint, auto seeds, bad input. Training and evaluation are replaced by fakes
that write what the real ones write (metrics.jsonl, result.json), except in the `slow` end-to-end test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kexaone.pipeline import ablate as A
from kexaone.pipeline.ablate_variants import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake(monkeypatch):
    calls = {"train": [], "eval": []}
    bpb = {"baseline": [1.00, 1.02, 1.01, 1.01], "no-mtp": [1.5, 1.5, 1.5], "bpe": [1.02, 1.0, 1.01]}

    def train(out, budget, variant, seed, threads, log):
        calls["train"].append((variant.name, seed))
        d = A.run_dir(out, variant.name, seed) / "train"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "metrics.jsonl", "w") as f:
            for s in range(1, 4):
                f.write(json.dumps({"kind": "train", "step": s, "loss": 5.0 - s, "max_vio": 0.5 / s,
                                    "tok_per_s": 100.0 * s}) + "\n")
        return {"steps": 3, "tokens": 30, "final_loss": 2.0, "eval_loss": 2.1}

    def evaluate(out, budget, variant, seed, log):
        calls["eval"].append((variant.name, seed))
        return {"heldout_bpb": bpb[variant.name][seed], "heldout_bpb_by_group": {"code/py": 1.0}, "tasks": {},
                "niah": {"256": 0.0, "1024": 0.0}, "kv_cache_bytes_32k": 1.0, "induction": None,
                "mtp_acceptance": None, "spec_speedup": None}

    monkeypatch.setattr(A, "_train", train)
    monkeypatch.setattr(A, "_evaluate", evaluate)
    monkeypatch.setattr(A, "prepare_shared", lambda out, budget, log=print: None)
    return calls


def test_rerun_skips_finished_and_a_stopped_grid_finishes(tmp_path, fake):
    budget = A.BUDGETS["smoke"]
    variants = ["baseline", "no-mtp", "bpe"]

    def boom(v, s):
        raise RuntimeError("killed after the first run")

    with pytest.raises(RuntimeError, match="killed"):
        A.ablate(tmp_path, budget, variants, 1, log=lambda m: None, after_run=boom)
    assert fake["train"] == [("baseline", 0)]
    assert A.is_finished(tmp_path, "baseline", 0) and not A.is_finished(tmp_path, "baseline", 1)
    logs = []
    A.ablate(tmp_path, budget, variants, 1, log=logs.append)
    # the finished run is not redone; the rest (baseline gets 2 seeds) ran once each
    assert fake["train"] == [("baseline", 0), ("baseline", 1), ("no-mtp", 0), ("bpe", 0)]
    assert "[ablate] baseline seed 0: finished earlier, skipped" in logs
    n = len(fake["train"])
    A.ablate(tmp_path, budget, variants, 1, log=lambda m: None)
    assert len(fake["train"]) == n and len(fake["eval"]) == n
    s = json.loads((A.run_dir(tmp_path, "no-mtp", 0) / "summary.json").read_text())
    assert s["tok_per_s"] == 200.0 and s["max_vio_final"] == pytest.approx(0.5 / 3)
    assert s["curves"]["loss"] == [[1, 4.0], [2, 3.0], [3, 2.0]]
    assert "| no-mtp | 1 |" in (tmp_path / "ablations.md").read_text()


def test_auto_seeds_within_3_standard_errors(tmp_path, fake):
    A.ablate(tmp_path, A.BUDGETS["smoke"], ["baseline", "no-mtp", "bpe"], 1, max_seeds=3, log=lambda m: None)
    runs = sorted(fake["train"])
    # no-mtp is far outside the noise: one seed; bpe is within it: seeds up to 3, and the baseline with it
    assert [r for r in runs if r[0] == "no-mtp"] == [("no-mtp", 0)]
    assert [r for r in runs if r[0] == "bpe"] == [("bpe", 0), ("bpe", 1), ("bpe", 2)]
    assert [r for r in runs if r[0] == "baseline"] == [("baseline", 0), ("baseline", 1), ("baseline", 2)]


def test_other_budget_in_same_dir_is_refused(tmp_path, fake):
    A.ablate(tmp_path, A.BUDGETS["smoke"], ["baseline"], 1, log=lambda m: None)
    with pytest.raises(ValueError, match="was started with budget 'smoke'"):
        A.ablate(tmp_path, A.BUDGETS["cpu-quick"], ["baseline"], 1, log=lambda m: None)


def test_unfinished_run_resumes_from_its_checkpoint(tmp_path):
    budget = A.BUDGETS["smoke"]
    assert A.train_config(tmp_path, budget, VARIANTS["baseline"], 0).resume is False
    ck = A.run_dir(tmp_path, "baseline", 0) / "train" / "checkpoints" / "step_3"
    ck.mkdir(parents=True)
    cfg = A.train_config(tmp_path, budget, VARIANTS["baseline"], 0)
    assert cfg.resume is True and cfg.seed == 0 and cfg.max_steps == budget.train_steps


def test_training_curves_last_record_wins_and_cut_lines(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"kind": "train", "step": 1, "loss": 3.0}\n{"kind": "eval", "step": 1, "loss": 9}\n'
                 '{"kind": "train", "step": 1, "loss": 2.5, "max_vio": 0.2}\n{"kind": "tra')
    c = A.training_curves(p)
    assert c["loss"] == [(1, 2.5)] and c["max_vio"] == [(1, 0.2)] and c["tok_per_s"] == []


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kexaone", "ablate", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_cli_bad_input(tmp_path):
    r = _cli("--budget", "smoke", "--variants", "nope", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "unknown variant(s) ['nope']" in r.stderr and "no-qk-norm" in r.stderr
    r = _cli("--budget", "huge", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "unknown ablation budget 'huge'" in r.stderr
    r = _cli("--list", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 0 and "capacity-1.25" in r.stdout and "budget smoke" in r.stdout


@pytest.mark.slow
def test_smoke_end_to_end_kill_and_resume(tmp_path, cache, monkeypatch):
    """The real pipeline on the smoke budget: a grid stopped after its first run finishes on re-run, every metric
    is filled in, and a re-run redoes nothing."""
    monkeypatch.setenv("KEXAONE_CACHE", str(cache))
    budget = A.BUDGETS["smoke"]

    def boom(v, s):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        A.ablate(tmp_path, budget, ["no-mtp"], 1, log=lambda m: None, after_run=boom)
    first = A.run_dir(tmp_path, "baseline", 0) / "summary.json"
    mtime = first.stat().st_mtime
    A.ablate(tmp_path, budget, ["no-mtp"], 1, log=lambda m: None)
    assert first.stat().st_mtime == mtime
    s = json.loads((A.run_dir(tmp_path, "no-mtp", 0) / "summary.json").read_text())
    assert s["steps"] == budget.train_steps and s["heldout_bpb"] > 0 and s["mtp_acceptance"] is None
    b = json.loads(first.read_text())
    assert b["spec_speedup"] is not None and b["kv_cache_bytes_32k"] > 0 and set(b["niah"]) == {"256", "1024"}
    assert len(b["curves"]["loss"]) == budget.train_steps


def test_parallel_jobs_run_as_subprocesses(tmp_path, monkeypatch):
    """--jobs: each pending run is a `kexaone ablate --run-one` process; a finished run's process exits at once,
    a failing one is reported with its log."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    budget = A.BUDGETS["smoke"]
    A.check_params(tmp_path, budget)
    for v in ("baseline", "no-mtp"):
        d = A.run_dir(tmp_path, v, 0)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"variant": v, "seed": 0}))
    logs = []
    A._run_parallel(tmp_path, budget, [("baseline", 0), ("no-mtp", 0)], 2, 1, logs.append)
    assert sum("exit 0" in m for m in logs) == 2
    with pytest.raises(RuntimeError, match=r"runs failed .*\('not-a-variant', 0\)"):
        A._run_parallel(tmp_path, budget, [("not-a-variant", 0)], 2, 1, lambda m: None)
    assert "not-a-variant" in (A.run_dir(tmp_path, "not-a-variant", 0) / "log.txt").read_text()


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    with A.run_lock(d):
        assert (d / "lock").read_text() == str(os.getpid())
        with pytest.raises(RuntimeError, match=rf"being run by process {os.getpid()}"):
            with A.run_lock(d):
                pass
    assert not (d / "lock").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (d / "lock").write_text(dead.stdout.strip())  # its process has exited
    with A.run_lock(d):
        assert (d / "lock").read_text() == str(os.getpid())


def test_a_stopped_grid_stops_its_runs_first(tmp_path):
    """SIGTERM to `kexaone ablate --jobs 2` reaches each running run (which saves a checkpoint and exits) before the
    grid exits; no run process is left training on its own."""
    import signal
    import time

    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from kexaone.pipeline import ablate as A
child = '''
import signal, sys, time
from pathlib import Path
d = Path(sys.argv[1])
def stop(*_):
    (d / "stopped").write_text("SIGTERM")
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
(d / "started").write_text("")
time.sleep(60)
'''
A.run_one_command = lambda out, budget, v, s, threads: [sys.executable, "-c", child, str(A.run_dir(out, v, s))]
A._sigterm_stops_the_grid()
try:
    A._run_parallel(Path({str(tmp_path)!r}), A.BUDGETS["smoke"], [("baseline", 0), ("no-mtp", 0)], 2, 1, print)
except KeyboardInterrupt as e:
    print("grid stopped by", e)
    sys.exit(130)
"""
    grid = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    runs = [A.run_dir(tmp_path, v, 0) for v in ("baseline", "no-mtp")]
    deadline = time.monotonic() + 60
    while not all((d / "started").exists() for d in runs):
        assert time.monotonic() < deadline and grid.poll() is None, grid.stdout.read() if grid.poll() else ""
        time.sleep(0.1)
    grid.send_signal(signal.SIGTERM)
    out, _ = grid.communicate(timeout=60)
    assert grid.returncode == 130 and "grid stopped by SIGTERM" in out, out
    assert out.count("stopping (SIGTERM to pid") == 2
    # each run got the signal and exited before the grid did
    assert all((d / "stopped").read_text() == "SIGTERM" for d in runs)

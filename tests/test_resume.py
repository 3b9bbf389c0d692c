"""Exact resume through the real command line: a run of N steps equals a run stopped by SIGTERM (in a subprocess)
and resumed with --resume, to the last bit of every weight; a SIGKILL in the middle of writing a checkpoint leaves
the previous checkpoint loadable and the run resumable, again bit-identical. Uses the embedded synthetic data and
default tokenizer (tiny sizes), cached once per module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kexaone.train.checkpoint import CheckpointManager

STEPS = 12
ARGS = ["--preset", "tiny", "--synthetic-size", "tiny", "--seq-len", "32", "--batch-size", "4",
        "--max-steps", str(STEPS), "--save-every", "4", "--eval-every", "0", "--eval-batches", "0",
        "--threads", "1", "--no-progress", "--no-tensorboard", "--no-export", "--lr", "3e-3", "--peak-flops", "1e12"]


def env(cache: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", KEXAONE_CACHE=str(cache), PYTHONWARNINGS="ignore")
    return e


def pretrain(out: Path, cache: Path, *extra: str) -> int:
    """The same run in this process (no signal involved, so no subprocess needed: saves the import time)."""
    import argparse

    from kexaone.train.pretrain import add_arguments, config_from_args, run_pretraining

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args([*ARGS, "--out", str(out), *extra]))
    old_env, old_threads = os.environ.get("KEXAONE_CACHE"), torch.get_num_threads()
    os.environ["KEXAONE_CACHE"] = str(cache)
    try:
        res = run_pretraining(cfg)
    finally:
        torch.set_num_threads(old_threads)
        if old_env is None:
            del os.environ["KEXAONE_CACHE"]
        else:
            os.environ["KEXAONE_CACHE"] = old_env
    assert not res.interrupted and res.steps == STEPS
    return 0


def final_weights(out: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def train_losses(out: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    out = tmp_path_factory.mktemp("reference")
    pretrain(out, cache)
    return out


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def test_sigterm_then_resume_is_bit_identical(reference, cache, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "kexaone", "pretrain", *ARGS, "--out", str(out)],
                            env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(l).get("step", 0) >= 3 and json.loads(l)["kind"] == "train"
                                    for l in metrics.read_text().splitlines() if l.endswith("}")):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]  # documented: interrupted, checkpoint saved
    stopped = CheckpointManager(out / "checkpoints").latest_step()
    assert stopped is not None and 3 <= stopped < STEPS, stopped
    assert "--resume" in err

    pretrain(out, cache, "--resume")
    assert_bit_identical(final_weights(reference), final_weights(out))
    # The metrics log reads as one run: every step once, with the reference's exact losses.
    assert train_losses(out) == train_losses(reference)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(reference, cache, tmp_path):
    out = tmp_path / "run"
    # In the child: torch.save of the step-8 checkpoint writes half its bytes, then the process is SIGKILLed.
    script = textwrap.dedent(f"""
        import io, os, signal, sys, torch
        real_save = torch.save
        def save(obj, f, *a, **k):
            name = str(getattr(f, "name", f))
            if "step_00000008" in name:
                buf = io.BytesIO(); real_save(obj, buf, *a, **k)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *a, **k)
        torch.save = save
        from kexaone.cli import main
        sys.exit(main(["pretrain", *{ARGS!r}, "--out", {str(out)!r}]))
    """)
    p = subprocess.run([sys.executable, "-c", script], env=env(cache), capture_output=True, text=True, timeout=240)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    mgr = CheckpointManager(out / "checkpoints")
    assert mgr.latest_step() == 4  # the half-written step 8 is not a checkpoint
    state = mgr.load()
    assert state["step"] == 4 and set(state) >= {"model", "optimizer", "scheduler", "data", "rng"}
    pretrain(out, cache, "--resume")
    assert_bit_identical(final_weights(reference), final_weights(out))
    assert [c.name for c in mgr.checkpoints()] == ["step_00000004", "step_00000008", "step_00000012"]

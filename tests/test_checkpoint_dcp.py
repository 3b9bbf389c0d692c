"""Sharded checkpoints through torch.distributed.checkpoint (CheckpointManager.save(..., sharded=...)).

- Atomic: a process killed (SIGKILL) after its shards are on disk but before the checkpoint is sealed leaves the
  previous checkpoint the one `latest()` returns, complete and loadable; the next save removes the debris.
- A truncated shard makes the checkpoint incomplete (size check in the manifest).
- Resharding through the trainer (slow): an FSDP run of 4 ranks x 1 row saves at step 2; it is resumed on 2 ranks
  x 2 rows and on 1 process x 4 rows (the same global batch). Steps 3-4 of each resumed run match the
  uninterrupted single-process run to 1e-6 relative (the tolerance between world sizes in test_distributed.py:
  only the order of sums differs), and the 1-process resume equals the 4-rank run's own steps to the same
  tolerance.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_launch_support import pretrain_in_process, records, torchrun

from kexaone.train.checkpoint import CheckpointError, CheckpointManager

pytestmark = pytest.mark.multiprocess  # selected by scripts/repeat_multiprocess.sh

KILLER = r'''
import sys, time, torch, torch.distributed.checkpoint as dcp
from pathlib import Path
from kexaone.train import checkpoint as ck
d, stage = Path(sys.argv[1]), sys.argv[2]
m = ck.CheckpointManager(d)
w = {"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5)}
if stage == "first":
    m.save(1, {"step": 1, "extra": {"x": torch.zeros(2)}}, sharded={"model": w})
else:
    real = dcp.save
    def slow_save(*a, **k):  # every shard is written, then the process is killed before the manifest
        real(*a, **k)
        (d / "READY").write_text("1")
        time.sleep(600)
    dcp.save = slow_save
    m.save(2, {"step": 2, "extra": {"x": torch.zeros(2)}}, sharded={"model": {k: v + 1 for k, v in w.items()}})
'''


def _run(script, *args, wait=True):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(script), *map(str, args)]
    if wait:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_during_sharded_save_keeps_previous_checkpoint(tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    d = tmp_path / "ckpts"
    p = _run(script, d, "first")
    assert p.returncode == 0, p.stderr[-3000:]
    proc = _run(script, d, "second", wait=False)
    deadline = time.time() + 120
    while not (d / "READY").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    m = CheckpointManager(d)
    assert m.latest().name == "step_00000001"
    assert any(p.name.startswith(".tmp-step_00000002") for p in d.iterdir())  # the killed save's debris
    state = m.load()
    assert state["step"] == 1 and "model" not in state and torch.equal(state["extra"]["x"], torch.zeros(2))
    w = m.model_tensors()
    assert torch.equal(w["a"], torch.arange(12.0).reshape(3, 4)) and torch.equal(w["b"], torch.ones(5))
    target = {"model": {"a": torch.empty(3, 4), "b": torch.empty(5)}}
    m.load_sharded(m.latest(), target)
    assert torch.equal(target["model"]["a"], w["a"])
    # the next save (another, dead pid) clears the debris and moves `latest`
    m.save(3, {"step": 3}, sharded={"model": {"a": torch.zeros(3, 4)}})
    assert m.latest().name == "step_00000003"
    assert not any(p.name.startswith(".tmp-") for p in d.iterdir())


def test_truncated_shard_is_incomplete(tmp_path):
    m = CheckpointManager(tmp_path)
    path = m.save(1, {"step": 1}, sharded={"model": {"w": torch.randn(64, 64)}})
    assert m.latest() == path
    shard = next(f for f in (path / "sharded").iterdir() if f.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:100])
    assert m.latest() is None
    with pytest.raises(CheckpointError, match="truncated"):
        m.load(path)


def test_load_sharded_refuses_a_full_checkpoint(tmp_path):
    m = CheckpointManager(tmp_path)
    path = m.save(1, {"model": {"w": torch.ones(2)}})
    with pytest.raises(CheckpointError, match="no sharded"):
        m.load_sharded(path, {"model": {"w": torch.empty(2)}})
    assert torch.equal(m.model_tensors(path)["w"], torch.ones(2))


# ------------------------------------------------------------------------------------------------ resharding
STEPS = 4
ARGS = ["--preset", "tiny", "--synthetic-size", "tiny", "--seq-len", "32", "--max-steps", str(STEPS),
        "--save-every", "2", "--eval-every", "0", "--eval-batches", "0", "--threads", "1", "--no-progress",
        "--no-tensorboard", "--no-export", "--lr", "3e-3", "--precision", "fp32", "--peak-flops", "1e12",
        "--device", "cpu", "--parallel", "fsdp"]


def _pretrain(world: int, out, cache, *extra: str) -> None:
    rows = str(4 // world)  # the same global batch of 4 rows at every world size
    p = torchrun(world, "-m", "kexaone", "pretrain", *ARGS, "--batch-size", rows, "--out", str(out), *extra,
                 env={"KEXAONE_CACHE": str(cache)}, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert "terminate called" not in p.stderr


def _back_to_step_2(src, dst) -> None:
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / f"step_{STEPS:08d}")
    (dst / "checkpoints" / "latest").write_text("step_00000002\n")


@pytest.mark.slow
def test_saved_by_four_ranks_resumes_on_two_and_one(tmp_path, cache):
    single = pretrain_in_process([a for a in ARGS if a not in ("--parallel", "fsdp")], tmp_path / "single", cache,
                                 STEPS)
    four = tmp_path / "four"
    _pretrain(4, four, cache)
    ck2 = four / "checkpoints" / "step_00000002"
    assert len([f for f in (ck2 / "sharded").iterdir() if f.suffix == ".distcp"]) == 4  # one file per rank
    ref = {r["step"]: r["loss"] for r in records(single, "train")}
    got4 = {r["step"]: r["loss"] for r in records(four, "train")}
    assert all(got4[s] == pytest.approx(ref[s], rel=1e-6) for s in ref)

    two = tmp_path / "two"
    _back_to_step_2(four, two)
    _pretrain(2, two, cache, "--resume")
    got2 = {r["step"]: r["loss"] for r in records(two, "train")}
    assert sorted(got2) == [1, 2, 3, 4]
    for s in (3, 4):
        assert got2[s] == pytest.approx(ref[s], rel=1e-6), (s, got2[s], ref[s])

    one = tmp_path / "one"
    _back_to_step_2(four, one)
    non_fsdp = [a for a in ARGS if a not in ("--parallel", "fsdp")]
    pretrain_in_process([*non_fsdp, "--resume"], one, cache, STEPS)
    got1 = {r["step"]: r["loss"] for r in records(one, "train")}
    for s in (3, 4):
        assert got1[s] == pytest.approx(ref[s], rel=1e-6), (s, got1[s], ref[s])
        assert got1[s] == pytest.approx(got4[s], rel=1e-6)
    # the 1-process run's final checkpoint is a plain one; its weights are close to the uninterrupted run's
    w1 = CheckpointManager(single / "checkpoints").model_tensors()
    wr = CheckpointManager(one / "checkpoints").model_tensors()
    for k in w1:
        torch.testing.assert_close(wr[k], w1[k], atol=1e-4, rtol=1e-3, msg=k)

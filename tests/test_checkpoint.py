"""CheckpointManager: round trip, atomicity under exceptions and SIGKILL, pruning, corruption detection,
weights_only safety, unwritable directories, and bit-exact RNG restore."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from kexaone.train import checkpoint as ckpt
from kexaone.train.checkpoint import (
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    check_writable,
    restore_rng_state,
    step_of,
)

REPO = Path(__file__).resolve().parents[1]


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 4, generator=g)
    return {
        "model": {"w": w, "tied": w, "b": torch.zeros(4, dtype=torch.bfloat16)},  # "tied" shares w's storage
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(8, 4, generator=g)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0], "kind": "muon"}]},
        "trainer": {"step": seed, "tokens": 1234, "name": "run", "history": [1.5, 2.5]},
        "step": seed, "lr": 0.1 + seed, "stage": None, "resumed": True, "name": "run",  # scalars: manifest
    }


def _assert_state_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_state_equal(x, y)
    else:
        assert a == b


def test_round_trip_layout_and_metadata(tmp_path):
    cm = CheckpointManager(tmp_path / "ckpt", keep=3)
    assert cm.latest() is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        cm.load()
    state = _state(1)
    path = cm.save(7, state, metadata={"loss": 2.5})
    assert path.name == "step_00000007" and step_of(path) == 7
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.safetensors", "optimizer.pt",
                                                      "trainer.pt"]
    assert json.loads((path / "manifest.json").read_text())["values"] == {"step": 1, "lr": 1.1, "stage": None,
                                                                         "resumed": True, "name": "run"}
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_00000007"
    loaded = cm.load()
    _assert_state_equal(state, loaded)
    assert list(loaded) == list(state) and type(loaded["step"]) is int and type(loaded["lr"]) is float
    assert cm.metadata()["metadata"] == {"loss": 2.5} and cm.metadata()["step"] == 7
    assert cm.latest_step() == 7
    # every .pt file loads with weights_only=True on its own
    torch.load(path / "optimizer.pt", weights_only=True)


def test_refuses_state_weights_only_cannot_read_and_keeps_previous(tmp_path):
    cm = CheckpointManager(tmp_path)
    cm.save(1, _state(1))
    with pytest.raises(ValueError, match="weights_only"):
        cm.save(2, {"model": _state(2)["model"], "extra": {"arr": np.zeros(3)}})
    with pytest.raises(ValueError, match="entry name"):
        cm.save(2, {"../evil": 1})
    with pytest.raises(ValueError, match="step"):
        cm.save(-1, _state(1))
    assert cm.latest().name == "step_00000001"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    _assert_state_equal(_state(1), cm.load())


def test_exception_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cm = CheckpointManager(tmp_path)
    cm.save(1, _state(1))
    real = ckpt._write_torch
    calls = []

    def failing(obj, path, key):
        calls.append(key)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(obj, path, key)

    monkeypatch.setattr(ckpt, "_write_torch", failing)
    with pytest.raises(OSError, match="disk full"):
        cm.save(2, _state(2))
    assert calls == ["optimizer", "trainer"]
    assert cm.latest().name == "step_00000001"
    assert not (tmp_path / "step_00000002").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    _assert_state_equal(_state(1), cm.load())


def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    # A child process saves step 1, then is SIGKILLed halfway through writing step 2 (after the model file, inside
    # the optimizer file). The parent must still find and load step 1; the next save cleans the leftover.
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from kexaone.train import checkpoint as ckpt
        from tests.test_checkpoint import _state
        cm = ckpt.CheckpointManager({str(tmp_path)!r})
        cm.save(1, _state(1))
        real = ckpt._write_torch
        def dying(obj, path, key):
            with open(path, "wb") as f:
                f.write(b"half a file")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt._write_torch = dying
        cm.save(2, _state(2))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-step_00000002")]
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").exists()
    cm = CheckpointManager(tmp_path)
    assert cm.latest().name == "step_00000001"
    _assert_state_equal(_state(1), cm.load())
    cm.save(2, _state(2))  # the dead writer's temp dir is removed by the next save
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
    _assert_state_equal(_state(2), cm.load())


def test_pruning_keeps_last_k(tmp_path):
    cm = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        cm.save(step, {"trainer": {"step": step}})
    assert [p.name for p in cm.checkpoints()] == ["step_00000030", "step_00000040"]
    assert cm.latest().name == "step_00000040"
    CheckpointManager(tmp_path, keep=None).save(50, {"trainer": {"step": 50}})
    assert len(cm.checkpoints()) == 3
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)


def test_resume_from_older_step_follows_the_new_timeline(tmp_path):
    cm = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20):
        cm.save(step, {"trainer": {"step": step}})
    # Resumed from step 10, then saved step 15: the pointer names 15, and the abandoned step 20 counts as the
    # older save, so it is the first to be pruned when the next checkpoint arrives.
    cm.save(15, {"trainer": {"step": 15}})
    assert cm.latest().name == "step_00000015"
    assert [p.name for p in cm.checkpoints()] == ["step_00000020", "step_00000015"]
    cm.save(16, {"trainer": {"step": 16}})
    assert [p.name for p in cm.checkpoints()] == ["step_00000015", "step_00000016"]
    # re-saving an existing step replaces it
    cm.save(16, {"trainer": {"step": 160}})
    assert cm.load()["trainer"]["step"] == 160


def test_corruption_is_detected_and_latest_falls_back(tmp_path):
    cm = CheckpointManager(tmp_path, keep=5)
    cm.save(1, _state(1))
    p2 = cm.save(2, _state(2))
    # a truncated file: step 2 is no longer complete, latest falls back to step 1
    data = (p2 / "optimizer.pt").read_bytes()
    (p2 / "optimizer.pt").write_bytes(data[: len(data) // 2])
    assert cm.latest().name == "step_00000001"
    with pytest.raises(CheckpointError, match="bytes"):
        cm.load(p2)
    # same size, flipped byte: only the sha256 check sees it
    p3 = cm.save(3, _state(3))
    raw = bytearray((p3 / "trainer.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (p3 / "trainer.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        cm.load(p3)
    # a missing manifest: not a checkpoint
    (p3 / "manifest.json").unlink()
    assert cm.latest().name == "step_00000001"
    with pytest.raises(FileNotFoundError):
        cm.load(tmp_path / "step_00000099")


def test_latest_pointer_lagging_after_crash(tmp_path):
    cm = CheckpointManager(tmp_path)
    cm.save(1, {"trainer": {"step": 1}})
    cm.save(2, {"trainer": {"step": 2}})
    # simulate a crash between the rename of step 2 and the pointer update
    (tmp_path / "latest").write_text("step_00000001\n")
    assert cm.latest().name == "step_00000001"  # complete, consistent
    (tmp_path / "latest").write_text("garbage\n")
    assert cm.latest().name == "step_00000002"
    (tmp_path / "latest").unlink()
    assert cm.latest().name == "step_00000002"


def test_unwritable_directory_raises_clear_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="afile"):
        check_writable(afile)
    with pytest.raises(NotADirectoryError, match="parent is a file"):
        check_writable(afile / "sub")
    ok = check_writable(tmp_path / "new" / "dir")
    assert ok.is_dir() and list(ok.iterdir()) == []  # the probe file is gone
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                CheckpointManager(ro).check_writable()
        finally:
            ro.chmod(0o700)


def test_rng_state_restores_bit_exactly(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave numpy with a cached gaussian half-way
    state = capture_rng_state()
    cm = CheckpointManager(tmp_path)
    cm.save(1, {"rng": state})

    def draw():
        return (random.random(), [random.getrandbits(64) for _ in range(3)], np.random.randn(5).tolist(),
                torch.rand(5), torch.randint(0, 1000, (5,)))

    first = draw()
    draw()  # move every generator on
    restore_rng_state(cm.load()["rng"])
    second = draw()
    assert first[0] == second[0] and first[1] == second[1] and first[2] == second[2]
    assert torch.equal(first[3], second[3]) and torch.equal(first[4], second[4])
    manifest = json.loads((tmp_path / "step_00000001" / "manifest.json").read_text())
    assert manifest["files"]["rng"]["file"] == "rng.pt"

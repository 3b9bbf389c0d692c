"""TrainConfig validation and file loading, CLI flag merging, the metrics logger (JSONL resume truncation,
expert-load files, plot) and the single-process distributed helpers. No model needed: fast."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from kexaone.train.config import TrainConfig, load_config_file
from kexaone.train.distributed import DistInfo, all_reduce_sum, any_true, init_distributed, wrap_model
from kexaone.train.metrics import MetricsLogger, plot_loss_curve, read_expert_loads, read_metrics
from kexaone.train.pretrain import add_arguments, config_from_args
from kexaone.train.run import check_output_dir


def test_defaults_and_derived_numbers():
    c = TrainConfig()
    assert c.total_steps() == 100
    c = TrainConfig(tokens=10_000, seq_len=50, batch_size=4, grad_accum=2)
    assert c.tokens_per_step() == 400
    assert c.total_steps() == 25  # ceil(10000 / 400)
    assert c.total_steps(world_size=2) == 13  # ceil(10000 / 800)
    assert TrainConfig(max_steps=7, tokens=10**9).total_steps() == 7  # max_steps wins
    assert TrainConfig(max_steps=1000).resolved_warmup() == 20  # 2 %
    assert TrainConfig(max_steps=10, warmup_steps=50).resolved_warmup() == 10  # capped at the run


@pytest.mark.parametrize("field,value,needle", [
    ("precision", "fp16", "fp32"), ("optimizer", "sgd", "muon"), ("seq_len", 0, ">= 1"),
    ("lr", float("nan"), "finite"), ("max_steps", 0, ">= 1"), ("betas", (0.9, 1.5), "[0, 1)"),
    ("aux_loss_coef", -1.0, ">= 0"), ("data", [""], "path[@weight]"), ("adamw_lr", 0.0, "> 0"),
    ("adamw_lr", float("inf"), "finite"),
])
def test_bad_values_name_the_field(field, value, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig(**{field: value})
    assert field in str(e.value) and needle in str(e.value)


def test_json_and_toml_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"preset": "small", "lr": 1e-3, "data": ["x.txt@2"]}))
    (tmp_path / "b.toml").write_text('preset = "small"\nlr = 0.001\nbetas = [0.8, 0.9]\n'
                                     '[model_overrides]\nnum_hidden_layers = 2\n')
    a = TrainConfig.from_file(tmp_path / "a.json")
    b = TrainConfig.from_file(tmp_path / "b.toml")
    assert (a.preset, a.lr, a.data) == ("small", 1e-3, ["x.txt@2"])
    assert b.betas == (0.8, 0.9) and b.model_overrides == {"num_hidden_layers": 2}
    (tmp_path / "bad.json").write_text('{"lr": 1e-3, "lrr": 2}')
    with pytest.raises(ValueError, match="unknown TrainConfig field.*lrr"):
        TrainConfig.from_file(tmp_path / "bad.json")
    (tmp_path / "broken.toml").write_text("lr = = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config_file(tmp_path / "broken.toml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(tmp_path / "missing.json")
    (tmp_path / "c.yaml").write_text("lr: 1")
    with pytest.raises(ValueError, match=".json or .toml"):
        load_config_file(tmp_path / "c.yaml")


def test_flags_override_config_file(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"preset": "small", "lr": 1e-3, "seq_len": 128}))
    p = argparse.ArgumentParser()
    add_arguments(p)
    c = config_from_args(p.parse_args(["--config", str(tmp_path / "c.json"), "--lr", "2e-3", "--data", "a.txt",
                                       "--data", "b.txt@3", "--resume", "--no-progress"]))
    assert (c.preset, c.lr, c.seq_len) == ("small", 2e-3, 128)  # file values survive unless a flag is given
    assert c.data == ["a.txt", "b.txt@3"] and c.resume and not c.progress
    c = config_from_args(p.parse_args([]))
    assert c == TrainConfig()  # no flags: exactly the dataclass defaults


def test_metrics_logger_resume_truncates(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log({"kind": "train", "step": 1, "loss": 2.0})
    pos = log.position()
    log.log({"kind": "train", "step": 2, "loss": float("nan")})  # NaN is written as a string, the file stays JSON
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    log = MetricsLogger(tmp_path, resume_offset=pos)  # resumed from a checkpoint taken after step 1
    log.log({"kind": "train", "step": 2, "loss": 1.5})
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [(r["step"], r["loss"]) for r in recs] == [(1, 2.0), (2, 1.5)]


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "x", enabled=False)
    log.log({"step": 1})
    assert log.save_expert_load(1, np.ones((2, 3))) is None
    assert not (tmp_path / "x").exists()


def test_expert_loads_and_plot(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in (2, 1):
        log.save_expert_load(step, torch.full((3, 4), float(step)))
        log.log({"kind": "train", "step": step, "loss": 3.0 - step})
    log.log({"kind": "stage", "step": 1, "stage": "reasoning"})
    log.log({"kind": "eval", "step": 2, "loss": 1.2})
    log.close()
    steps, loads = read_expert_loads(tmp_path)
    assert steps == [1, 2] and loads.shape == (2, 3, 4) and loads[1, 0, 0] == 2.0
    # one file for the whole run, not one per step
    assert sorted(p.name for p in tmp_path.iterdir() if "expert_load" in p.name) == ["expert_load.jsonl"]
    png = plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError):
        read_expert_loads(tmp_path / "none")


def test_output_dir_checks(tmp_path):
    check_output_dir(tmp_path / "new" / "deep")
    assert (tmp_path / "new" / "deep").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises((NotADirectoryError, PermissionError)):
        check_output_dir(tmp_path / "file")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("permissions are not enforced for this user")
        with pytest.raises(PermissionError, match="not writable"):
            check_output_dir(ro)
    finally:
        ro.chmod(0o700)


def test_single_process_distributed_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert any_true(True, info) and not any_true(False, info)
    assert all_reduce_sum([1.0, 2.0], info) == [1.0, 2.0]
    m = torch.nn.Linear(2, 2)
    assert wrap_model(m, info) is m
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        init_distributed("cpu")
    with pytest.raises(ValueError, match="device"):
        DistInfo() and init_distributed("tpu")


def test_thread_count_choice(monkeypatch):
    from kexaone.train.run import set_threads

    old = torch.get_num_threads()
    try:
        assert set_threads(TrainConfig(threads=1), DistInfo()) == 1  # an explicit count wins
        torch.set_num_threads(2)
        monkeypatch.setattr("kexaone.utils.cpu.busy_cores", lambda *a: 64.0)  # a machine already fully busy
        assert set_threads(TrainConfig(), DistInfo()) == 1
        torch.set_num_threads(2)
        monkeypatch.setattr("kexaone.utils.cpu.busy_cores", lambda *a: 0.0)
        monkeypatch.setattr("kexaone.utils.cpu.usable_cores", lambda: 2)
        # idle: at most cores / ranks threads per process
        assert set_threads(TrainConfig(), DistInfo(world_size=2)) == 1
        torch.set_num_threads(2)
        assert set_threads(TrainConfig(), DistInfo()) == 2
    finally:
        torch.set_num_threads(old)


def test_expert_loads_resumed_torn_and_legacy(tmp_path):
    """A resumed run repeats steps (the last record wins), a crash can tear the last line (skipped), and runs
    written before expert_load.jsonl kept one .npy per step (still read)."""
    legacy = tmp_path / "expert_load"
    legacy.mkdir()
    np.save(legacy / "step_00000001.npy", np.full((2, 2), 1.0, dtype=np.float32))
    log = MetricsLogger(tmp_path)
    log.save_expert_load(2, np.full((2, 2), 2.0))
    log.save_expert_load(3, np.full((2, 2), 3.0))
    log.close()
    resumed = MetricsLogger(tmp_path, resume_offset=0)
    resumed.save_expert_load(3, np.full((2, 2), 30.0))
    resumed.close()
    with open(tmp_path / "expert_load.jsonl", "a") as f:
        f.write('{"step": 4, "load": [[4.0, 4')
    steps, loads = read_expert_loads(tmp_path)
    assert steps == [1, 2, 3] and loads[:, 0, 0].tolist() == [1.0, 2.0, 30.0]

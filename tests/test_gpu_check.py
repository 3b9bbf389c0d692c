"""benchmarks/gpu_check.py as a CPU dry run: every check either runs on CPU and passes its comparison, or is skipped
with the reason; a broken check becomes a FAIL row instead of ending the run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU path")
def test_dry_run_runs_every_cpu_check_and_skips_cuda_ones(capsys):
    torch.manual_seed(0)
    checks = gpu_check.run(torch.device("cpu"))
    by = {c.name: c for c in checks}
    assert list(by) == ["grouped_experts", "attention", "fp8_train_step", "mtp_decode", "server"]
    assert by["fp8_train_step"].status == "skipped" and "CUDA" in by["fp8_train_step"].detail
    for name in ("grouped_experts", "attention", "mtp_decode", "server"):
        assert by[name].status == "ok", (name, by[name].detail)
    assert "torch._grouped_mm" in by["grouped_experts"].detail
    assert "equals plain" in by["mtp_decode"].detail
    table = gpu_check.table(checks, torch.device("cpu"))
    assert table.count("\n| ") == 6 and "dry run" in table


def test_a_failing_check_is_a_row_not_a_crash(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kernel missing")

    monkeypatch.setattr(gpu_check, "check_attention", boom)
    checks = gpu_check.run(torch.device("cpu"))
    row = next(c for c in checks if c.name == "attention")
    assert row.status == "FAIL" and "kernel missing" in row.detail
    with pytest.raises(ValueError, match="GPU results only"):
        gpu_check.main(["--device", "cpu", "--write"])


def test_serving_dtype_default_is_bf16_on_cuda_only():
    from kexaone.engine.cli_generate import default_serving_dtype

    assert default_serving_dtype("cuda") is torch.bfloat16
    assert default_serving_dtype("cuda:1") is torch.bfloat16
    assert default_serving_dtype("cpu") is None

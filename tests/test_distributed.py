"""Data-parallel training under torchrun (gloo on CPU, 127.0.0.1): 2 ranks x 2 rows give the same loss curve and
weights as 1 process x 4 rows (the same global batch), rank 0 alone writes metrics and checkpoints.

Tolerance: fp32, so the only difference is the order of floating-point sums (gradients are all-reduced across
ranks instead of summed inside one matmul): per-step losses must agree to 1e-6 relative (measured 3e-8) and the
final weights to atol 1e-4 after 6 Muon steps (measured 2.3e-5); a wrong data split, loss weighting or missed
all-reduce is off by 1e-2 or more."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kexaone.train.checkpoint import CheckpointManager
from test_launch_support import pretrain_in_process, records, torchrun_pretrain

pytestmark = pytest.mark.multiprocess  # selected by scripts/repeat_multiprocess.sh

STEPS = 6
ARGS = ["--preset", "tiny", "--synthetic-size", "tiny", "--seq-len", "32", "--max-steps", str(STEPS),
        "--save-every", "3", "--eval-every", "3", "--eval-batches", "2", "--threads", "1", "--no-progress",
        "--no-tensorboard", "--no-export", "--lr", "3e-3", "--precision", "fp32", "--peak-flops", "1e12",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache) -> Path:
    """One process, 4 rows per step (in this process: no launcher needed)."""
    return pretrain_in_process(ARGS, tmp_path_factory.mktemp("single"), cache, STEPS)


def torchrun(out: Path, cache: Path, *extra: str, export: bool = False) -> subprocess.CompletedProcess:
    return torchrun_pretrain([a for a in ARGS if not (export and a == "--no-export")], out, cache, *extra)


def test_two_gloo_ranks_match_one_process(single, cache, tmp_path):
    out = tmp_path / "ddp"
    p = torchrun(out, cache)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    one, two = records(single, "train"), records(out, "train")
    assert [r["step"] for r in two] == list(range(1, STEPS + 1))  # rank 0 alone logs: each step once
    assert [r["tokens"] for r in two] == [r["tokens"] for r in one]  # global batch = 2 ranks x 2 rows
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), (a["step"], a["loss"], b["loss"])
        assert b["max_vio"] == pytest.approx(a["max_vio"], abs=1e-9)  # all-reduced expert counts
    ev1, ev2 = records(single, "eval"), records(out, "eval")
    assert len(ev2) == 2 and all(b["loss"] == pytest.approx(a["loss"], rel=1e-6) for a, b in zip(ev1, ev2))
    w1 = load_file(str(single / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
    w2 = load_file(str(out / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=1e-3, msg=k)
    # Expert biases (buffers) stay identical across ranks and equal the single-process ones.
    bias = [k for k in w1 if k.endswith("e_score_correction_bias")]
    assert bias and all(torch.equal(w1[k], w2[k]) for k in bias)


@pytest.mark.slow  # two torchrun launches: ~80 s on the shared 2-core machine
def test_fsdp2_matches_and_resumes_bit_identically(single, cache, tmp_path):
    """FSDP2 (fully_shard per decoder layer, Muon on gathered matrices): same tolerance against the single process;
    then a resume from its step-3 checkpoint (a Distributed Checkpoint: each rank writes its shards) reproduces
    its own step-6 weights bit for bit."""
    out = tmp_path / "fsdp"
    p = torchrun(out, cache, "--parallel", "fsdp", export=True)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    # The HF export gathers the shards: it holds exactly the final checkpoint's weights.
    from kexaone.model.transformer import KExaoneForCausalLM

    exported = KExaoneForCausalLM.from_pretrained(out / "model").state_dict()
    for a, b in zip(records(single, "train"), records(out, "train")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), (a["step"], a["loss"], b["loss"])
    final = out / "checkpoints" / f"step_{STEPS:08d}"
    w1 = load_file(str(single / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
    assert not (final / "model.safetensors").exists() and (final / "sharded" / ".metadata").is_file()  # DCP shards
    w_fsdp = CheckpointManager(out / "checkpoints").model_tensors(final)
    for k in w1:
        torch.testing.assert_close(w_fsdp[k], w1[k], atol=1e-4, rtol=1e-3, msg=k)
    assert all(torch.equal(exported[k], v) for k, v in w_fsdp.items())
    # Forget the last checkpoint and continue from step 3.
    import shutil

    shutil.rmtree(final)
    (out / "checkpoints" / "latest").write_text("step_00000003\n")
    p = torchrun(out, cache, "--parallel", "fsdp", "--resume")
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    w_resumed = CheckpointManager(out / "checkpoints").model_tensors(final)
    assert all(torch.equal(w_fsdp[k], w_resumed[k]) for k in w_fsdp)

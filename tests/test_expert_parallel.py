"""Expert parallelism (kexaone.train.expert_parallel) on 2 gloo ranks (127.0.0.1) against one process.

Each rank holds 4 of the tiny preset's 8 experts and 2 of the 4 sequences. The MoE layer's output and the
gradients of every parameter (router, shared expert, the local expert slices) must equal the single-process
computation on the concatenated batch to 1e-5 (fp32; only the order of sums differs). The loss is the mean over
ranks of each rank's loss, as under DDP: replicated gradients are averaged by hand here (what DDP does), expert
gradients are divided by the world size by the EP hook. Also: the gathered state dict holds all experts and equals
the single-process weights, slicing it back gives the local slices, and bad world sizes raise ValueError."""

from __future__ import annotations

import pytest
import torch
from test_launch_support import pretrain_in_process, records, torchrun, torchrun_pretrain

from kexaone.config import KExaoneConfig
from kexaone.model.moe import KExaoneMoE

B_PER_RANK, T, WORLD = 2, 8, 2

WORKER = r'''
import sys, torch, torch.distributed as dist
from kexaone.config import KExaoneConfig
from kexaone.model.moe import KExaoneMoE
from kexaone.train.expert_parallel import (apply_expert_parallel, gather_expert_state_dict,
                                           slice_expert_state_dict, ddp_ignored_expert_params)
out, B, T = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
cfg = KExaoneConfig.preset("tiny")
layer = KExaoneMoE(cfg).train()
with torch.no_grad():  # a non-zero bias so that routing differs from the plain top-k
    layer.gate.e_score_correction_bias.copy_(torch.linspace(-0.05, 0.05, cfg.num_experts))
x_all = torch.randn(B * world, T, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
p_all = torch.randn(B * world, T, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
names = apply_expert_parallel(layer)
x = x_all[rank * B:(rank + 1) * B].clone().requires_grad_(True)
y = layer(x)
loss = (y * p_all[rank * B:(rank + 1) * B]).sum() + layer.last_aux_loss
loss.backward()
ignored = set(ddp_ignored_expert_params(layer))
assert ignored == set(names), (ignored, names)
grads = {}
for n, p in layer.named_parameters():
    g = p.grad.clone()
    if n not in ignored:  # what DDP does for the replicated parameters
        dist.all_reduce(g)
        g /= world
    grads[n] = g
full = gather_expert_state_dict(layer, layer.state_dict())
back = slice_expert_state_dict(layer, full)
assert all(torch.equal(back[k], v) for k, v in layer.state_dict().items())
try:
    slice_expert_state_dict(layer, {**full, "experts.down_proj": full["experts.down_proj"][:3]})
    bad_shape = "no error"
except ValueError as e:
    bad_shape = str(e)
# Unequal token counts are refused on every rank (same decision everywhere, no hang).
try:
    layer(torch.randn(1 + rank, T, cfg.hidden_size))
    unequal = "no error"
except ValueError as e:
    unequal = str(e)
torch.save({"y": y.detach(), "x_grad": x.grad, "grads": grads, "full": full, "names": names,
            "first": layer.experts.first_expert, "local": layer.experts.num_experts,
            "counts": layer.tokens_per_expert.clone(), "bad_shape": bad_shape, "unequal": unequal},
           f"{out}/rank{rank}.pt")
from kexaone.train.distributed import shutdown_process_group
shutdown_process_group()
'''


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ep")
    script = out / "worker.py"
    script.write_text(WORKER)
    p = torchrun(WORLD, str(script), str(out), str(B_PER_RANK), str(T), timeout=120)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def reference() -> dict:
    """One process, the concatenated batch, loss = mean over ranks of the per-rank losses."""
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("tiny")
    layer = KExaoneMoE(cfg).train()
    with torch.no_grad():
        layer.gate.e_score_correction_bias.copy_(torch.linspace(-0.05, 0.05, cfg.num_experts))
    x_all = torch.randn(B_PER_RANK * WORLD, T, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    p_all = torch.randn(B_PER_RANK * WORLD, T, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    x = x_all.clone().requires_grad_(True)
    y = layer(x)
    # aux loss is a mean over sequences: the global mean equals the mean of the per-rank means (equal B per rank)
    loss = (y * p_all).sum() / WORLD + layer.last_aux_loss
    loss.backward()
    return {"y": y.detach(), "x_grad": x.grad, "grads": {n: p.grad for n, p in layer.named_parameters()},
            "state": layer.state_dict(), "counts": layer.tokens_per_expert.clone()}


def test_forward_matches_single_process(ranks, reference):
    y = torch.cat([r["y"] for r in ranks], dim=0)
    torch.testing.assert_close(y, reference["y"], atol=1e-5, rtol=1e-5)
    # Each rank's input gradient is that of its own loss: the mean-loss gradient times the world size.
    x_grad = torch.cat([r["x_grad"] for r in ranks], dim=0) / WORLD
    torch.testing.assert_close(x_grad, reference["x_grad"], atol=1e-5, rtol=1e-5)


def test_gradients_match_single_process(ranks, reference):
    ref = reference["grads"]
    for r in ranks:
        assert set(r["grads"]) == set(ref)
        assert sorted(r["names"]) == ["experts.down_proj", "experts.gate_up_proj"]
        lo, hi = r["first"], r["first"] + r["local"]
        for n, g in r["grads"].items():
            want = ref[n][lo:hi] if n in r["names"] else ref[n]
            assert g.shape == want.shape, n
            torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-5, msg=n)
    assert [(r["first"], r["local"]) for r in ranks] == [(0, 4), (4, 4)]
    # Expert gradients are really sharded: the two slices together are the whole gradient.
    whole = torch.cat([ranks[0]["grads"]["experts.down_proj"], ranks[1]["grads"]["experts.down_proj"]])
    torch.testing.assert_close(whole, ref["experts.down_proj"], atol=1e-5, rtol=1e-5)


def test_token_counts_are_local_and_sum_to_global(ranks, reference):
    # Counts stay per rank (balance.py all-reduces them): their sum is the single-process count.
    assert torch.equal(ranks[0]["counts"] + ranks[1]["counts"], reference["counts"])


def test_gathered_state_holds_all_experts(ranks, reference):
    for r in ranks:
        assert set(r["full"]) == set(reference["state"])
        for k, v in reference["state"].items():
            assert torch.equal(r["full"][k], v), k


def test_errors(ranks):
    for r in ranks:
        assert "expected 8 experts" in r["bad_shape"]
        assert "same number of tokens" in r["unequal"]


def test_refuses_without_process_group_or_bad_divisibility(monkeypatch):
    from kexaone.train import expert_parallel as ep

    layer = KExaoneMoE(KExaoneConfig.preset("tiny"))
    with pytest.raises(ValueError, match="process group"):
        ep.apply_expert_parallel(layer)
    monkeypatch.setattr(ep, "_world", lambda group: (0, 3))
    with pytest.raises(ValueError, match="8 experts over 3 ranks"):
        ep.apply_expert_parallel(layer)
    monkeypatch.setattr(ep, "_world", lambda group: (0, 1))
    with pytest.raises(ValueError, match="world size > 1"):
        ep.apply_expert_parallel(layer)


# ------------------------------------------------------------------------------------------- through the trainer
STEPS = 4
ARGS = ["--preset", "tiny", "--synthetic-size", "tiny", "--seq-len", "32", "--max-steps", str(STEPS),
        "--save-every", "2", "--eval-every", "0", "--eval-batches", "0", "--threads", "1", "--no-progress",
        "--no-tensorboard", "--lr", "3e-3", "--precision", "fp32", "--peak-flops", "1e12", "--device", "cpu"]


def test_trainer_expert_parallel_matches_one_process_and_saves_all_experts(tmp_path, cache):
    """2 ranks x 2 rows with --expert-parallel against 1 process x 4 rows (same global batch), fp32.

    Tolerance as in test_distributed.py (only the order of sums differs): losses to 1e-6 relative, final weights
    to atol 1e-4 after 4 Muon steps. Checkpoints (each rank writes its experts through DCP) and the HF export
    hold all 8 experts; a resume from the step-2 checkpoint (Muon momentum included) reproduces step 4 bit for
    bit."""
    import shutil

    from safetensors.torch import load_file

    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.checkpoint import CheckpointManager

    single = pretrain_in_process([*ARGS, "--no-export"], tmp_path / "single", cache, STEPS)
    out = tmp_path / "ep"
    r = torchrun_pretrain(ARGS, out, cache, "--expert-parallel")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    one, two = records(single, "train"), records(out, "train")
    assert [x["step"] for x in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6), (a["step"], a["loss"], b["loss"])
        assert b["max_vio"] == pytest.approx(a["max_vio"], abs=1e-9)
        # the clipping norm covers every rank's experts (a rank-local norm would differ by a few per cent)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    final = out / "checkpoints" / f"step_{STEPS:08d}"
    w1 = load_file(str(single / "checkpoints" / f"step_{STEPS:08d}" / "model.safetensors"))
    ckpts = CheckpointManager(out / "checkpoints")
    w2 = ckpts.model_tensors(final)  # each rank wrote its experts' shards (DCP); read back whole
    assert set(w1) == set(w2)
    for k in w1:
        assert w2[k].shape == w1[k].shape, k  # all experts, not one rank's slice
        torch.testing.assert_close(w2[k], w1[k], atol=1e-4, rtol=1e-3, msg=k)
    exported = KExaoneForCausalLM.from_pretrained(out / "model").state_dict()
    assert exported.keys() == w2.keys() and all(torch.equal(exported[k], v) for k, v in w2.items())

    shutil.rmtree(final)
    (out / "checkpoints" / "latest").write_text("step_00000002\n")
    r = torchrun_pretrain(ARGS, out, cache, "--expert-parallel", "--resume", "--no-export")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    w_resumed = ckpts.model_tensors(final)
    assert all(torch.equal(w2[k], w_resumed[k]) for k in w2)


def test_trainer_refuses_expert_parallel_without_ranks_or_with_fsdp(tmp_path):
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.config import TrainConfig
    from kexaone.train.trainer import Trainer

    with pytest.raises(ValueError, match="parallel='ddp' only"):
        TrainConfig(expert_parallel=True, parallel="fsdp")
    model = KExaoneForCausalLM(KExaoneConfig.preset("tiny"))
    with pytest.raises(ValueError, match="world size > 1"):
        Trainer(model, None, [], TrainConfig(expert_parallel=True, max_steps=1, precision="fp32", device="cpu",
                                             out=str(tmp_path)))

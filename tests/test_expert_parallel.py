"""Expert parallelism (kexaone.train.expert_parallel) on 2 and 4 gloo ranks (127.0.0.1) against one process.

Each rank holds 8/W of the tiny preset's 8 experts and 2 of the 2W sequences; both dispatches (all-to-all, the
default, on 2 and 4 ranks; all-gather on 2) are checked. The MoE layer's output and the
gradients of every parameter (router, shared expert, the local expert slices) must equal the single-process
computation on the concatenated batch to 1e-5 (fp32; only the order of sums differs). The loss is the mean over
ranks of each rank's loss, as under DDP: replicated gradients are averaged by hand here (what DDP does), expert
gradients are divided by the world size by the EP hook. Also: the gathered state dict holds all experts and equals
the single-process weights, slicing it back gives the local slices, and bad world sizes raise ValueError. The
forward payload each rank sends (`comm_bytes`, from the actual split sizes) is smaller with all-to-all."""

from __future__ import annotations

import pytest
import torch
from test_launch_support import pretrain_in_process, records, torchrun, torchrun_pretrain

from kexaone.config import KExaoneConfig
from kexaone.model.moe import KExaoneMoE

pytestmark = pytest.mark.multiprocess  # selected by scripts/repeat_multiprocess.sh

B_PER_RANK, T = 2, 8
LAUNCHES = [(2, "all_to_all"), (2, "all_gather"), (4, "all_to_all"), (4, "all_gather")]

WORKER = r'''
import sys, torch, torch.distributed as dist
from kexaone.config import KExaoneConfig
from kexaone.model.moe import KExaoneMoE
from kexaone.train.expert_parallel import (apply_expert_parallel, gather_expert_state_dict,
                                           slice_expert_state_dict, ddp_ignored_expert_params)
out, B, T, dispatch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
cfg = KExaoneConfig.preset("tiny")
layer = KExaoneMoE(cfg).train()
with torch.no_grad():  # a non-zero bias so that routing differs from the plain top-k
    layer.gate.e_score_correction_bias.copy_(torch.linspace(-0.05, 0.05, cfg.num_experts))
x_all = torch.randn(B * world, T, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
p_all = torch.randn(B * world, T, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
names = apply_expert_parallel(layer, dispatch=dispatch)
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
comm = layer.experts.comm_bytes
counts = layer.tokens_per_expert.clone()
# Unequal token counts: all-gather refuses them on every rank (same decision everywhere, no hang); all-to-all
# handles them (with gradients).
try:
    xu = torch.randn(1 + rank, T, cfg.hidden_size, requires_grad=True)
    layer(xu).sum().backward()
    unequal = "no error"
except ValueError as e:
    unequal = str(e)
torch.save({"comm_bytes": comm, "y": y.detach(), "x_grad": x.grad, "grads": grads, "full": full, "names": names,
            "first": layer.experts.first_expert, "local": layer.experts.num_experts,
            "counts": counts, "bad_shape": bad_shape, "unequal": unequal},
           f"{out}/rank{rank}.pt")
from kexaone.train.distributed import shutdown_process_group
shutdown_process_group()
'''


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> dict[tuple[int, str], list[dict]]:
    got = {}
    for world, dispatch in LAUNCHES:
        out = tmp_path_factory.mktemp(f"ep{world}{dispatch}")
        script = out / "worker.py"
        script.write_text(WORKER)
        p = torchrun(world, str(script), str(out), str(B_PER_RANK), str(T), dispatch, timeout=180)
        assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
        assert "terminate called" not in p.stderr
        got[(world, dispatch)] = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]
    return got


@pytest.fixture(params=LAUNCHES, ids=lambda x: f"{x[0]}ranks-{x[1]}")
def case(request, launches) -> tuple[list[dict], dict, int, str]:
    world, dispatch = request.param
    return launches[request.param], _reference(world), world, dispatch


@pytest.fixture
def ranks(case):
    return case[0]


@pytest.fixture
def reference(case):
    return case[1]


_REFS: dict[int, dict] = {}


def _reference(world: int) -> dict:
    if world not in _REFS:
        _REFS[world] = _single_process(world)
    return _REFS[world]


def _single_process(WORLD: int) -> dict:
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
    WORLD = len(ranks)
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
    per = 8 // len(ranks)
    assert [(r["first"], r["local"]) for r in ranks] == [(i * per, per) for i in range(len(ranks))]
    # Expert gradients are really sharded: the slices together are the whole gradient.
    whole = torch.cat([r["grads"]["experts.down_proj"] for r in ranks])
    torch.testing.assert_close(whole, ref["experts.down_proj"], atol=1e-5, rtol=1e-5)


def test_token_counts_are_local_and_sum_to_global(ranks, reference):
    # Counts stay per rank (balance.py all-reduces them): their sum is the single-process count.
    assert torch.equal(sum(r["counts"] for r in ranks), reference["counts"])


def test_gathered_state_holds_all_experts(ranks, reference):
    for r in ranks:
        assert set(r["full"]) == set(reference["state"])
        for k, v in reference["state"].items():
            assert torch.equal(r["full"][k], v), k


def test_errors(case):
    ranks, _, _, dispatch = case
    for r in ranks:
        assert "expected 8 experts" in r["bad_shape"]
        if dispatch == "all_gather":
            assert "same number of tokens" in r["unequal"]
        else:
            assert r["unequal"] == "no error"


def test_all_to_all_sends_fewer_bytes(launches):
    """Forward payload each rank sends for 2 x 8 tokens, K=2, H=64 in fp32 (printed with -s). All-to-all sends each
    remote (token, slot) pair there and back (about 2 x N x K x (W-1)/W rows); all-gather sends every token to every
    rank and all-reduces a [W*N, H] output (about 3 x (W-1) x N rows): a third fewer bytes at 2 ranks, about a third
    of them at 4."""
    got = {key: [r["comm_bytes"] for r in launches[key]] for key in launches}
    print(f"EP forward bytes sent per rank: {got}")
    for w, bound in ((2, 0.9), (4, 0.5)):
        a2a, ag = got[(w, "all_to_all")], got[(w, "all_gather")]
        assert 0 < sum(a2a) < bound * sum(ag), (w, a2a, ag)
    assert all(x < y for x, y in zip(got[(2, "all_to_all")], got[(2, "all_gather")]))


def test_refuses_without_process_group_or_bad_divisibility(monkeypatch):
    from kexaone.train import expert_parallel as ep

    layer = KExaoneMoE(KExaoneConfig.preset("tiny"))
    with pytest.raises(ValueError, match="'all_to_all' or 'all_gather', got 'ring'"):
        ep.apply_expert_parallel(layer, dispatch="ring")
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

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

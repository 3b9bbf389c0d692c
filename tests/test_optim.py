"""build_optimizer: which parameter gets Muon or AdamW, weight decay, state_dict round trips, gradient clipping."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from kexaone.train.muon import MuonAdamW
from kexaone.train.optim import (
    ADAMW,
    ADAMW_NO_DECAY,
    MUON,
    build_optimizer,
    classify_parameter,
    clip_grad_norm_,
    parameter_groups,
)
from kexaone.train.schedule import WSDSchedule, make_scheduler


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared: small matmuls run ~50x faster single-threaded than oversubscribed.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Norm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))


class _Router(nn.Module):
    def __init__(self, e, h):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(e, h) * 0.02)


class _Experts(nn.Module):
    def __init__(self, e, h, i):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(e, 2 * i, h) * 0.02)
        self.down_proj = nn.Parameter(torch.randn(e, h, i) * 0.02)


class _Layer(nn.Module):
    """Shaped like a K-EXAONE decoder layer: attention Linears, QK-norm, MoE (router + expert stacks + shared)."""

    def __init__(self, h=32, e=4, i=16):
        super().__init__()
        self.input_layernorm = _Norm(h)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(h, h, bias=False)
        self.self_attn.k_proj = nn.Linear(h, h // 2, bias=False)
        self.self_attn.q_norm = _Norm(8)
        self.post_attention_layernorm = _Norm(h)
        self.mlp = nn.Module()
        self.mlp.gate = _Router(e, h)
        self.mlp.experts = _Experts(e, h, i)
        self.mlp.shared_experts = nn.Module()
        self.mlp.shared_experts.gate_proj = nn.Linear(h, i, bias=False)

    def forward(self, x_BTH):
        a = self.self_attn.q_proj(x_BTH * self.input_layernorm.weight)
        a = a + self.self_attn.k_proj(a).repeat(1, 1, 2) * self.self_attn.q_norm.weight.mean()
        w = torch.softmax(a @ self.mlp.gate.weight.T, dim=-1)  # [B,T,E]
        h_BTEJ = torch.einsum("bth,ejh->btej", a, self.mlp.experts.gate_up_proj)
        y = torch.einsum("btei,ehi->bteh", torch.nn.functional.silu(h_BTEJ[..., :16]), self.mlp.experts.down_proj)
        y = (y * w.unsqueeze(-1)).sum(2) + self.mlp.shared_experts.gate_proj(a).sum(-1, keepdim=True)
        return (y * self.post_attention_layernorm.weight) + x_BTH


class StandIn(nn.Module):
    """A tiny module named like KExaoneForCausalLM (model.*, lm_head, mtp.*)."""

    def __init__(self, vocab=50, h=32):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, h)
        self.model.layers = nn.ModuleList([_Layer(h)])
        self.model.norm = _Norm(h)
        self.lm_head = nn.Linear(h, vocab, bias=False)
        self.mtp = nn.Module()
        self.mtp.fc = nn.Linear(2 * h, h, bias=False)
        self.mtp.layers = nn.ModuleList([_Layer(h)])
        self.mtp.norm = _Norm(h)
        self.bias_only = nn.Linear(h, h, bias=True)

    def forward(self, ids_BT):
        x = self.model.embed_tokens(ids_BT)
        x = self.bias_only(self.model.layers[0](x))
        hN = x * self.model.norm.weight
        m = self.mtp.fc(torch.cat([hN, x], -1))
        m = self.mtp.layers[0](m) * self.mtp.norm.weight
        return self.lm_head(hN + m)


def _loss(model, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (2, 6), generator=g)
    logits = model(ids)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 50), ids.roll(-1, 1).reshape(-1))


def test_classification_of_every_kind_of_parameter():
    torch.manual_seed(0)
    m = StandIn()
    tags = {name: classify_parameter(name, p) for name, p in m.named_parameters()}
    expected = {
        "model.embed_tokens.weight": ADAMW,
        "lm_head.weight": ADAMW,
        "model.layers.0.mlp.gate.weight": ADAMW,  # router
        "mtp.layers.0.mlp.gate.weight": ADAMW,
        "model.layers.0.self_attn.q_proj.weight": MUON,
        "model.layers.0.self_attn.k_proj.weight": MUON,
        "model.layers.0.mlp.experts.gate_up_proj": MUON,
        "model.layers.0.mlp.experts.down_proj": MUON,
        "model.layers.0.mlp.shared_experts.gate_proj.weight": MUON,  # "gate_proj" is not the router
        "mtp.fc.weight": MUON,
        "mtp.layers.0.self_attn.q_proj.weight": MUON,
        "model.layers.0.input_layernorm.weight": ADAMW_NO_DECAY,
        "model.layers.0.self_attn.q_norm.weight": ADAMW_NO_DECAY,
        "model.norm.weight": ADAMW_NO_DECAY,
        "mtp.norm.weight": ADAMW_NO_DECAY,
        "bias_only.bias": ADAMW_NO_DECAY,
        "bias_only.weight": MUON,
    }
    for name, tag in expected.items():
        assert tags[name] == tag, name
    groups = parameter_groups(m)
    assert [n for n, _ in groups["muon_split2"]] == ["model.layers.0.mlp.experts.gate_up_proj",
                                                     "mtp.layers.0.mlp.experts.gate_up_proj"]


def test_build_muon_optimizer_groups_and_decay():
    m = StandIn()
    opt = build_optimizer(m, kind="muon", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, MuonAdamW) and isinstance(opt, torch.optim.Optimizer)
    by_tag = {g["tag"]: g for g in opt.param_groups}
    assert set(by_tag) == {"adamw", "adamw_no_decay", "muon", "muon_split2"}
    assert by_tag["muon"]["kind"] == "muon" and by_tag["muon_split2"]["split"] == 2
    assert by_tag["adamw_no_decay"]["weight_decay"] == 0.0 and by_tag["adamw"]["weight_decay"] == 0.1
    assert by_tag["muon"]["weight_decay"] == 0.1
    # every trainable parameter is in exactly one group
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in m.parameters()) and len(ids) == len(set(ids))
    adamw_lr = build_optimizer(m, lr=1e-3, adamw_lr=5e-4)
    assert {g["tag"]: g["lr"] for g in adamw_lr.param_groups}["adamw"] == 5e-4


def test_build_adamw_baseline():
    m = StandIn()
    opt = build_optimizer(m, kind="adamw", lr=1e-3, weight_decay=0.1)
    assert type(opt) is torch.optim.AdamW
    decay = {n for g in opt.param_groups if g["weight_decay"] > 0 for n in g["param_names"]}
    no_decay = {n for g in opt.param_groups if g["weight_decay"] == 0 for n in g["param_names"]}
    assert "model.layers.0.mlp.experts.gate_up_proj" in decay and "model.norm.weight" in no_decay
    assert "bias_only.bias" in no_decay and "lm_head.weight" in decay


def test_frozen_parameters_are_left_out():
    m = StandIn()
    m.model.layers[0].mlp.gate.weight.requires_grad_(False)
    opt = build_optimizer(m)
    names = {n for g in opt.param_groups for n in g["param_names"]}
    assert "model.layers.0.mlp.gate.weight" not in names
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(m)


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_state_dict_round_trip_continues_bit_exactly(kind):
    torch.manual_seed(0)
    a = StandIn()
    opt_a = build_optimizer(a, kind=kind, lr=1e-2)
    sched_a = make_scheduler(opt_a, WSDSchedule(max_lr=1e-2, total_steps=8, warmup_steps=2))
    for step in range(3):
        opt_a.zero_grad()
        _loss(a, step).backward()
        opt_a.step()
        sched_a.step()
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict(), "sched": sched_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    torch.manual_seed(123)  # a different init: everything must come from the saved state
    b = StandIn()
    b.load_state_dict(saved["model"])
    opt_b = build_optimizer(b, kind=kind, lr=1e-2)
    sched_b = make_scheduler(opt_b, WSDSchedule(max_lr=1e-2, total_steps=8, warmup_steps=2))
    opt_b.load_state_dict(saved["opt"])
    sched_b.load_state_dict(saved["sched"])
    for step in range(3, 6):
        for model, opt, sched in ((a, opt_a, sched_a), (b, opt_b, sched_b)):
            opt.zero_grad()
            _loss(model, step).backward()
            opt.step()
            sched.step()
        assert [g["lr"] for g in opt_a.param_groups] == [g["lr"] for g in opt_b.param_groups]
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), n


def test_muon_trains_the_stand_in_faster_than_nothing():
    torch.manual_seed(0)
    m = StandIn()
    opt = build_optimizer(m, lr=3e-3)
    first = _loss(m, 0).item()
    for _ in range(20):
        opt.zero_grad()
        _loss(m, 0).backward()
        opt.step()
    assert _loss(m, 0).item() < 0.7 * first


def test_clip_grad_norm():
    p1 = nn.Parameter(torch.zeros(3))
    p2 = nn.Parameter(torch.zeros(4))
    p1.grad = torch.tensor([3.0, 0.0, 0.0])
    p2.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    norm = clip_grad_norm_([p1, p2], max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    total = torch.cat([p1.grad, p2.grad]).norm()
    assert total.item() == pytest.approx(1.0, rel=1e-5)
    # measure only
    p1.grad = torch.tensor([3.0, 0.0, 0.0])
    assert clip_grad_norm_([p1], None).item() == pytest.approx(3.0)
    assert torch.equal(p1.grad, torch.tensor([3.0, 0.0, 0.0]))
    # a non-finite norm leaves the gradients alone (the trainer skips the step)
    p1.grad = torch.tensor([float("inf"), 1.0, 0.0])
    p2.grad = torch.tensor([1.0, 1.0, 1.0, 1.0])
    norm = clip_grad_norm_([p1, p2], max_norm=1.0)
    assert not torch.isfinite(norm)
    assert torch.equal(p2.grad, torch.ones(4))
    # a module works too; no gradients at all gives 0
    assert clip_grad_norm_(nn.Linear(2, 2), 1.0).item() == 0.0


def test_bad_arguments():
    m = StandIn()
    with pytest.raises(ValueError, match="kind"):
        build_optimizer(m, kind="sgd")
    with pytest.raises(ValueError, match="learning rate"):
        build_optimizer(m, lr=0.0)
    with pytest.raises(ValueError, match="ns_dtype"):
        build_optimizer(m, ns_dtype="float16")


_FSDP_SCRIPT = '''
import os, socket, sys
import torch, torch.distributed as dist
from torch import nn
import torch.multiprocessing as mp
torch.set_num_threads(1)
from kexaone.train.optim import build_optimizer


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(24, 40, bias=False)          # 2-D: gathered, orthogonalised, re-sharded
        self.experts = nn.Module()
        self.experts.gate_up_proj = nn.Parameter(torch.randn(4, 32, 40) * 0.1)  # 3-D: whole experts per rank
        self.experts.down_proj = nn.Parameter(torch.randn(4, 40, 16) * 0.1)
        self.norm = nn.Parameter(torch.ones(40))          # 1-D: AdamW on the shard

    def forward(self, x):
        h = self.a(x) * self.norm
        u = torch.einsum("bh,ejh->bej", h, self.experts.gate_up_proj)[..., :16]
        return torch.einsum("bei,ehi->bh", torch.nn.functional.silu(u), self.experts.down_proj).clone()


def train(m):
    opt = build_optimizer(m, lr=1e-2)
    for step in range(2):
        x = torch.randn(8, 24, generator=torch.Generator().manual_seed(step))
        loss = m(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(0)
    m = M()
    fully_shard(m)
    train(m)
    full = {n: p.full_tensor() for n, p in m.named_parameters()}
    if rank == 0:
        torch.save(full, out)
    # Both ranks leave together: a rank tearing gloo down while its peer still has a collective in flight
    # aborted the process once in CI ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    mp.spawn(worker, args=(2, port, sys.argv[1]), nprocs=2)
    torch.manual_seed(0)
    m = M()
    train(m)
    torch.save({n: p.detach() for n, p in m.named_parameters()}, sys.argv[2])
'''


@pytest.mark.slow
@pytest.mark.multiprocess
def test_muon_under_fsdp2_equals_single_process(tmp_path):
    # Two gloo ranks with FSDP2 (fully_shard): 2-D matrices take the gather/orthogonalise/re-shard path, expert
    # stacks sharded along the expert dim are orthogonalised locally. Both ranks see the same batch, so the
    # averaged gradient equals the single-process one and the weights must match it up to float rounding (the
    # gathered matrix is a different allocation, and oneDNN/BLAS may block its matmuls differently: bit-equality
    # held in most runs but not all).
    import subprocess
    import sys

    script = tmp_path / "fsdp_muon.py"
    script.write_text(_FSDP_SCRIPT)
    sharded, single = tmp_path / "sharded.pt", tmp_path / "single.pt"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(script), str(sharded), str(single)], cwd=repo, env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    a = torch.load(sharded, weights_only=True)
    b = torch.load(single, weights_only=True)
    assert set(a) == set(b) == {"a.weight", "experts.gate_up_proj", "experts.down_proj", "norm"}
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_real_tiny_model_assignment():
    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM

    torch.manual_seed(0)
    model = KExaoneForCausalLM(KExaoneConfig.preset("tiny"))
    opt = build_optimizer(model)
    tag_of = {n: g["tag"] for g in opt.param_groups for n in g["param_names"]}
    assert set(tag_of) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert tag_of[name] == "adamw_no_decay", name
        elif "embed_tokens" in name or name.startswith("lm_head") or name.endswith("mlp.gate.weight"):
            assert tag_of[name] == "adamw", name
        elif name.endswith("experts.gate_up_proj"):
            assert tag_of[name] == "muon_split2", name
        else:
            assert tag_of[name] == "muon", name
    assert tag_of["mtp.fc.weight"] == "muon" and tag_of["mtp.norm.weight"] == "adamw_no_decay"

"""Aux-loss-free bias update: MaxVio, the update rule, drift removal, balancing a skewed load, distributed sums."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kexaone.config import KExaoneConfig
from kexaone.model.balance import max_violation, moe_layers, reset_expert_counts, update_expert_biases
from kexaone.model.moe import KExaoneMoE


def small_cfg(**changes) -> KExaoneConfig:
    base = dict(vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, intermediate_size=64, moe_intermediate_size=16, num_experts=16, num_experts_per_tok=2,
                n_group=1, topk_group=1, sliding_window=8, num_nextn_predict_layers=0)
    base.update(changes)
    return KExaoneConfig(**base)


class TwoMoE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.a = KExaoneMoE(cfg)
        self.inner = nn.ModuleList([nn.Linear(4, 4), KExaoneMoE(cfg)])


def test_max_violation():
    assert max_violation(torch.tensor([5, 5, 5, 5])) == 0.0
    assert max_violation(torch.tensor([8, 0, 0, 0])) == pytest.approx(3.0)
    assert max_violation(torch.tensor([3.0, 1.0])) == pytest.approx(0.5)
    assert max_violation(torch.zeros(4)) == 0.0


def test_moe_layers_in_module_order():
    model = TwoMoE(small_cfg())
    assert moe_layers(model) == [model.a, model.inner[1]]


def test_update_rule_sign_and_zero_mean():
    model = TwoMoE(small_cfg(num_experts=4))
    model.a.tokens_per_expert.copy_(torch.tensor([10, 2, 2, 2]))  # mean 4: expert 0 over, others under
    model.inner[1].tokens_per_expert.copy_(torch.tensor([4, 4, 4, 4]))
    stats = update_expert_biases(model, rate=0.1)
    # raw step = 0.1 * sign(mean - load) = [-0.1, 0.1, 0.1, 0.1], minus its mean 0.05
    torch.testing.assert_close(model.a.gate.e_score_correction_bias,
                               torch.tensor([-0.15, 0.05, 0.05, 0.05]), rtol=0, atol=1e-7)
    torch.testing.assert_close(model.inner[1].gate.e_score_correction_bias, torch.zeros(4))
    assert stats.max_vio == pytest.approx([1.5, 0.0])
    assert stats.load.shape == (2, 4) and stats.load.dtype == torch.float64
    assert stats.load[0].tolist() == [10, 2, 2, 2]
    assert int(model.a.tokens_per_expert.sum()) == 0 and int(model.inner[1].tokens_per_expert.sum()) == 0
    with pytest.raises(ValueError, match="rate"):
        update_expert_biases(model, rate=-1.0)


def test_all_layers_at_once_equal_the_one_layer_definition():
    """The update runs on every layer at once; its MaxVio per layer equals `max_violation` of that layer's load, and
    a layer that routed nothing keeps its bias (MaxVio 0)."""
    g = torch.Generator().manual_seed(0)
    model = TwoMoE(small_cfg(num_experts=8))
    loads = torch.randint(0, 50, (8,), generator=g)
    model.a.tokens_per_expert.copy_(loads)
    model.inner[1].gate.e_score_correction_bias.fill_(0.25)
    stats = update_expert_biases(model, rate=1e-3)
    assert stats.max_vio == pytest.approx([max_violation(loads), 0.0], rel=1e-12)
    assert torch.equal(model.inner[1].gate.e_score_correction_bias, torch.full((8,), 0.25))
    step = torch.sign(loads.double().mean() - loads.double()) * 1e-3
    torch.testing.assert_close(model.a.gate.e_score_correction_bias, (step - step.mean()).float(), rtol=0, atol=0)


def test_counts_accumulate_over_micro_batches_until_update():
    torch.manual_seed(0)
    cfg = small_cfg()
    moe = KExaoneMoE(cfg).train()
    x = torch.randn(2, 8, cfg.hidden_size)
    for _ in range(3):  # gradient accumulation: three micro-batches, one update
        moe(x).square().mean().backward()
    stats = update_expert_biases(moe, rate=1e-4)
    assert float(stats.load.sum()) == 3 * 16 * cfg.num_experts_per_tok
    reset_expert_counts(moe)
    assert int(moe.tokens_per_expert.sum()) == 0


def test_bias_update_balances_a_skewed_load():
    torch.manual_seed(1)
    cfg = small_cfg()
    moe = KExaoneMoE(cfg).train()
    with torch.no_grad():  # a router that strongly prefers the first experts
        moe.gate.weight.normal_(0, 0.02)
        moe.gate.weight[:4] += 0.3 * torch.randn(cfg.hidden_size)
    x = torch.randn(4, 64, cfg.hidden_size) + 1.0  # fixed input with a shared direction: a skewed load
    vios = []
    with torch.no_grad():
        for _ in range(60):
            moe(x)
            vios.append(update_expert_biases(moe, rate=5e-3).max_vio[0])
    assert vios[0] > 2.0
    assert vios[-1] < 0.5 * vios[0]
    assert min(vios[-10:]) < 0.6
    assert abs(float(moe.gate.e_score_correction_bias.mean())) < 1e-6


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = small_cfg(num_experts=4)
        moe = KExaoneMoE(cfg)
        # rank 0 routed [6, 0, 0, 2], rank 1 routed [0, 0, 6, 0]: world load [6, 0, 6, 2], mean 3.5
        moe.tokens_per_expert.copy_(torch.tensor([[6, 0, 0, 2], [0, 0, 6, 0]])[rank])
        stats = update_expert_biases(moe, rate=1.0)
        torch.save({"load": stats.load, "bias": moe.gate.e_score_correction_bias.clone()},
                   os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
@pytest.mark.multiprocess
def test_counts_are_summed_across_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        results = [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=True) for r in range(2)]
    for r in results:
        assert r["load"][0].tolist() == [6, 0, 6, 2]
        # sign(3.5 - load) = [-1, 1, -1, 1], mean 0
        torch.testing.assert_close(r["bias"], torch.tensor([-1.0, 1.0, -1.0, 1.0]))

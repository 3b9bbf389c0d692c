"""MoE layer: router and expert parity with transformers' exaone_moe, dropless execution, gradients, aux loss,
expert counting (training only, no double count under activation checkpointing), dtype handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kexaone.config import KExaoneConfig
from kexaone.model.mlp import SwiGLU
from kexaone.model.moe import (GroupedExperts, KExaoneMoE, TopKRouter, _segment_mm, grouped_mm,
                               sequence_aux_loss)

hf_moe = pytest.importorskip("transformers.models.exaone_moe.modeling_exaone_moe")
from transformers import ExaoneMoeConfig  # noqa: E402


def small_cfg(**changes) -> KExaoneConfig:
    base = dict(vocab_size=256, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=12, intermediate_size=96, moe_intermediate_size=24, num_experts=16, num_experts_per_tok=4,
                num_shared_experts=1, n_group=4, topk_group=2, sliding_window=8, num_nextn_predict_layers=0)
    base.update(changes)
    return KExaoneConfig(**base)


def hf_config(cfg: KExaoneConfig) -> ExaoneMoeConfig:
    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("kexaone", "architectures", "model_type")}
    hf = ExaoneMoeConfig(**d)
    hf._experts_implementation = "eager"  # the reference per-expert loop
    return hf


def naive_experts(x_NH, idx_NK, w_NK, gate_up, down):
    """Per-token, per-slot reference: the definition of a routed SwiGLU mixture."""
    i = down.shape[-1]
    out = torch.zeros_like(x_NH)
    for n in range(x_NH.shape[0]):
        for k in range(idx_NK.shape[1]):
            e = int(idx_NK[n, k])
            h = gate_up[e] @ x_NH[n]
            out[n] += w_NK[n, k] * (down[e] @ (F.silu(h[:i]) * h[i:]))
    return out


def sorted_by_index(idx, w):
    order = idx.argsort(dim=-1)
    return idx.gather(1, order), w.gather(1, order)


@pytest.mark.parametrize("changes", [dict(), dict(n_group=1, topk_group=1), dict(norm_topk_prob=False),
                                     dict(n_group=8, topk_group=3, num_experts_per_tok=6, routed_scaling_factor=1.0)])
def test_router_matches_transformers(changes):
    torch.manual_seed(0)
    cfg = small_cfg(**changes)
    ours = TopKRouter(cfg)
    ref = hf_moe.ExaoneMoeTopkRouter(hf_config(cfg))
    with torch.no_grad():
        ours.e_score_correction_bias.normal_(0, 0.3)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(257, cfg.hidden_size)
    scores, w, idx = ours(x)
    logits_ref, w_ref, idx_ref = ref(x)
    assert scores.dtype == torch.float32 and w.dtype == torch.float32 and idx.dtype == torch.long
    torch.testing.assert_close(scores, logits_ref.sigmoid(), rtol=0, atol=1e-7)
    idx_s, w_s = sorted_by_index(idx, w)
    idx_rs, w_rs = sorted_by_index(idx_ref, w_ref)
    assert torch.equal(idx_s, idx_rs)
    torch.testing.assert_close(w_s, w_rs, rtol=0, atol=1e-6)


def test_router_group_limit_is_respected():
    torch.manual_seed(1)
    cfg = small_cfg(n_group=4, topk_group=1, num_experts_per_tok=2)
    router = TopKRouter(cfg)
    _, _, idx = router(torch.randn(300, cfg.hidden_size))
    groups = idx // (cfg.num_experts // cfg.n_group)
    assert torch.equal(groups[:, 0], groups[:, 1])  # both experts from the single allowed group


def test_grouped_experts_equal_naive_loop():
    torch.manual_seed(2)
    cfg = small_cfg()
    experts = GroupedExperts(cfg)
    router = TopKRouter(cfg)
    x = torch.randn(37, cfg.hidden_size)
    _, w, idx = router(x)
    y = experts(x, idx, w)
    ref = naive_experts(x, idx, w, experts.gate_up_proj.detach(), experts.down_proj.detach())
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("changes", [dict(), dict(n_group=1, topk_group=1, num_experts=32, num_experts_per_tok=2),
                                     dict(num_shared_experts=2)])
def test_moe_block_matches_transformers(changes):
    torch.manual_seed(3)
    cfg = small_cfg(**changes)
    ours = KExaoneMoE(cfg)
    with torch.no_grad():
        ours.gate.e_score_correction_bias.normal_(0, 0.2)
    ref = hf_moe.ExaoneMoeSparseMoEBlock(hf_config(cfg))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 19, cfg.hidden_size)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)


def test_dropless_when_router_forced_onto_one_expert():
    torch.manual_seed(4)
    cfg = small_cfg(n_group=1, topk_group=1)
    moe = KExaoneMoE(cfg).train()
    with torch.no_grad():
        moe.gate.e_score_correction_bias[5] = 1e6  # every token must choose expert 5
    x = torch.randn(2, 50, cfg.hidden_size)
    scores, w, idx = moe.gate(x.view(-1, cfg.hidden_size))
    assert bool((idx == 5).any(dim=1).all())
    # every token still reaches exactly top-k distinct experts
    assert all(len(set(row)) == cfg.num_experts_per_tok for row in idx.tolist())
    y = moe(x)
    assert int(moe.tokens_per_expert.sum()) == 100 * cfg.num_experts_per_tok
    assert int(moe.tokens_per_expert[5]) == 100
    ref = naive_experts(x.view(-1, cfg.hidden_size), idx, w, moe.experts.gate_up_proj.detach(),
                        moe.experts.down_proj.detach()) + moe.shared_experts(x.view(-1, cfg.hidden_size))
    torch.testing.assert_close(y.view(-1, cfg.hidden_size), ref, rtol=0, atol=1e-5)


def test_gradients_reach_router_experts_and_shared_not_bias():
    torch.manual_seed(5)
    cfg = small_cfg()
    moe = KExaoneMoE(cfg).train()
    x = torch.randn(2, 11, cfg.hidden_size, requires_grad=True)
    y = moe(x)
    # a plain .sum() gives an expanded (stride-0) gradient, which the CPU grouped matmul backward rejects
    (y.sum() + moe.last_aux_loss).backward()
    names = {n for n, _ in moe.named_parameters()}
    assert "gate.e_score_correction_bias" not in names
    assert not moe.gate.e_score_correction_bias.requires_grad
    for name, p in moe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_expert_gradients_match_transformers():
    torch.manual_seed(6)
    cfg = small_cfg()
    ours = KExaoneMoE(cfg)
    ref = hf_moe.ExaoneMoeSparseMoEBlock(hf_config(cfg))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 13, cfg.hidden_size)
    g = torch.randn(2, 13, cfg.hidden_size)
    (ours(x) * g).sum().backward()
    (ref(x) * g).sum().backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def naive_aux(scores_BTE, idx_BTK):
    b, t, e = scores_BTE.shape
    k = idx_BTK.shape[-1]
    total = 0.0
    for s in range(b):
        f = [0.0] * e
        for tok in range(t):
            for j in range(k):
                f[int(idx_BTK[s, tok, j])] += e / (k * t)
        p = (scores_BTE[s] / scores_BTE[s].sum(-1, keepdim=True)).mean(0).detach()
        total += sum(f[i] * float(p[i]) for i in range(e))
    return total / b


def test_aux_loss_equals_naive_formula():
    torch.manual_seed(7)
    cfg = small_cfg()
    moe = KExaoneMoE(cfg)
    x = torch.randn(3, 10, cfg.hidden_size)
    moe(x)
    scores, _, idx = moe.gate(x.view(-1, cfg.hidden_size))
    expected = naive_aux(scores.view(3, 10, -1), idx.view(3, 10, -1))
    assert moe.last_aux_loss.dim() == 0 and moe.last_aux_loss.requires_grad
    assert abs(moe.last_aux_loss.item() - expected) < 1e-5


def test_aux_loss_is_one_when_balanced_and_masks_padding():
    # uniform scores and perfectly even counts: sum_i (E/(K T) * K T / E) * (1/E) = 1
    e, k, t = 8, 2, 4
    scores = torch.full((1, t, e), 0.5)
    idx = torch.arange(t * k).view(1, t, k) % e
    assert abs(float(sequence_aux_loss(scores, idx)) - 1.0) < 1e-6
    # padding positions are ignored: appending padded garbage leaves the loss unchanged
    torch.manual_seed(8)
    s = torch.rand(2, 6, e)
    i = torch.stack([torch.randperm(e)[:k] for _ in range(12)]).view(2, 6, k)
    valid = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    masked = sequence_aux_loss(s, i, valid)
    first = sequence_aux_loss(s[:1, :4], i[:1, :4])
    second = sequence_aux_loss(s[1:], i[1:])
    assert abs(float(masked) - float((first + second) / 2)) < 1e-6


def test_counts_only_in_training_and_once_under_checkpointing():
    torch.manual_seed(9)
    cfg = small_cfg()
    moe = KExaoneMoE(cfg)
    x = torch.randn(2, 8, cfg.hidden_size, requires_grad=True)
    moe.eval()
    moe(x)
    assert int(moe.tokens_per_expert.sum()) == 0
    moe.train()
    moe(x).square().mean().backward()
    assert int(moe.tokens_per_expert.sum()) == 16 * cfg.num_experts_per_tok
    moe.tokens_per_expert.zero_()
    for reentrant in (False, True):
        out = checkpoint(moe, x, use_reentrant=reentrant)
        out.square().mean().backward()
    assert int(moe.tokens_per_expert.sum()) == 2 * 16 * cfg.num_experts_per_tok
    moe.tokens_per_expert.zero_()
    valid = torch.ones(2, 8)
    valid[0, :3] = 0
    moe(x, valid)
    assert int(moe.tokens_per_expert.sum()) == 13 * cfg.num_experts_per_tok
    assert "tokens_per_expert" not in moe.state_dict()


def test_autocast_bf16_and_bf16_weights():
    torch.manual_seed(10)
    cfg = small_cfg()
    moe = KExaoneMoE(cfg)
    with torch.no_grad():
        moe.gate.e_score_correction_bias.normal_(0, 1e-3)
    x = torch.randn(2, 9, cfg.hidden_size, requires_grad=True)
    ref = moe(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = moe(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert moe.experts.gate_up_proj.grad.dtype == torch.float32
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()
    bias = moe.gate.e_score_correction_bias.clone()
    moe_bf16 = moe.to(torch.bfloat16)
    assert moe_bf16.gate.e_score_correction_bias.dtype == torch.float32
    assert torch.equal(moe_bf16.gate.e_score_correction_bias, bias)
    yb = moe_bf16(x.detach().bfloat16())
    assert yb.dtype == torch.bfloat16 and (yb.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_grouped_mm_matches_segments_and_handles_odd_layouts():
    torch.manual_seed(11)
    counts = torch.tensor([3, 0, 5, 1, 0, 7])
    offs = counts.cumsum(0).to(torch.int32)
    for k, n in ((12, 8), (10, 7)):  # native kernel; odd widths (strides not 16-byte multiples) fall back
        w = torch.randn(6, k, n)
        x = torch.randn(16 * k + 1)[1:].view(16, k)  # data pointer only 4-byte aligned
        ref = torch.cat([seg @ w[e] for e, seg in enumerate(x.split(counts.tolist()))])
        torch.testing.assert_close(grouped_mm(x, w, offs), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_segment_mm(x, w, offs), ref, rtol=1e-5, atol=1e-5)
        wt = torch.randn(6, n, k).transpose(1, 2)  # transposed view, as GroupedExperts passes its weights
        torch.testing.assert_close(grouped_mm(x, wt, offs), _segment_mm(x, wt, offs), rtol=1e-5, atol=1e-5)


def test_fp8_recipe_hook_replaces_the_matmuls():
    class Recorder:
        def __init__(self):
            self.calls = []

        def grouped_mm(self, x, w, offs):
            self.calls.append((tuple(x.shape), tuple(w.shape)))
            return grouped_mm(x, w, offs)

    torch.manual_seed(12)
    cfg = small_cfg()
    experts = GroupedExperts(cfg)
    x = torch.randn(10, cfg.hidden_size)
    _, w, idx = TopKRouter(cfg)(x)
    expected = experts(x, idx, w)
    experts.fp8_recipe = Recorder()
    torch.testing.assert_close(experts(x, idx, w), expected)
    m = 10 * cfg.num_experts_per_tok
    e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
    assert experts.fp8_recipe.calls == [((m, h), (e, h, 2 * i)), ((m, i), (e, i, h))]


def test_empty_batch_and_shapes():
    cfg = small_cfg(num_shared_experts=0)
    moe = KExaoneMoE(cfg)
    assert moe.shared_experts is None
    assert moe(torch.randn(0, 5, cfg.hidden_size)).shape == (0, 5, cfg.hidden_size)
    assert moe(torch.randn(7, cfg.hidden_size)).shape == (7, cfg.hidden_size)


def test_swiglu_definition_and_errors():
    torch.manual_seed(13)
    mlp = SwiGLU(16, 40)
    x = torch.randn(3, 16)
    expected = mlp.down_proj.weight @ (F.silu(mlp.gate_proj.weight @ x.T) * (mlp.up_proj.weight @ x.T))
    torch.testing.assert_close(mlp(x), expected.T)
    assert all(m.bias is None for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    with pytest.raises(ValueError, match="intermediate_size"):
        SwiGLU(16, 0)


def test_meta_device_construction():
    cfg = KExaoneConfig.preset("k-exaone-236b-a23b")
    with torch.device("meta"):
        moe = KExaoneMoE(cfg)
    assert moe.experts.gate_up_proj.shape == (128, 4096, 6144)
    assert moe.gate.e_score_correction_bias.dtype == torch.float32


def test_grouped_mm_gradients_equal_the_per_expert_reference():
    torch.manual_seed(14)
    counts = torch.tensor([2, 0, 5, 1])
    offs = counts.cumsum(0).to(torch.int32)
    g = torch.randn(8, 16)
    grads = []
    for fn in (grouped_mm, _segment_mm):
        x = torch.randn(8, 12, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        w = torch.randn(4, 16, 12, generator=torch.Generator().manual_seed(2)).transpose(1, 2).requires_grad_(True)
        (fn(x, w, offs) * g).sum().backward()
        grads.append((x.grad, w.grad))
    x_ref = torch.randn(8, 12, generator=torch.Generator().manual_seed(1))
    w_ref = torch.randn(4, 16, 12, generator=torch.Generator().manual_seed(2)).transpose(1, 2)
    rows = torch.repeat_interleave(torch.arange(4), counts)  # the expert of each row
    dw_ref = torch.stack([x_ref[rows == e].T @ g[rows == e] for e in range(4)])
    dx_ref = torch.einsum("mn,mkn->mk", g, w_ref[rows])
    for dx, dw in grads:
        torch.testing.assert_close(dx, dx_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dw, dw_ref, rtol=1e-5, atol=1e-5)
    assert not grads[1][1][1].any()  # the expert that got no row gets no gradient


def test_cpu_bf16_experts_pad_groups_to_reused_shapes_with_the_same_result(monkeypatch):
    """bf16 on CPU rounds every expert's rows up to CPU_LOWP_ROW_BUCKET (so oneDNN reuses its kernels): outputs and
    every gradient equal the unpadded computation, and every group the matmul sees is a multiple of the bucket."""
    import kexaone.model.moe as moe_mod

    torch.manual_seed(3)
    cfg = small_cfg(hidden_size=64, moe_intermediate_size=32)
    experts = GroupedExperts(cfg).bfloat16()
    n, k = 50, cfg.num_experts_per_tok
    x0 = torch.randn(n, cfg.hidden_size).bfloat16()
    idx = torch.randint(0, cfg.num_experts, (n, k))
    w0 = torch.rand(n, k)
    seen_groups = []
    real = moe_mod.grouped_mm

    def spy(x_MK, w_EKN, offs_E):
        seen_groups.append(torch.diff(offs_E.long(), prepend=offs_E.new_zeros(1).long()))
        return real(x_MK, w_EKN, offs_E)

    monkeypatch.setattr(moe_mod, "grouped_mm", spy)

    def run(bucket):
        monkeypatch.setattr(moe_mod, "CPU_LOWP_ROW_BUCKET", bucket)
        experts.zero_grad()
        x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        y = experts(x, idx, w)
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return [y, x.grad, w.grad, experts.gate_up_proj.grad, experts.down_proj.grad]

    plain = run(1)
    seen_groups.clear()
    padded = run(16)
    for a, b in zip(plain, padded):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert seen_groups and all(bool((g % 16 == 0).all()) for g in seen_groups)
    assert sum(int(g.sum()) for g in seen_groups[:1]) > n * k  # the padding really happened

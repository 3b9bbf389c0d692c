"""FP8 emulation: quantisation error bounds, the FP8 linear and grouped matmul against high precision, module
swapping rules, and FP8 training tracking bf16 training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexaone.config import KExaoneConfig
from kexaone.model.moe import KExaoneMoE, grouped_mm
from kexaone.train.fp8 import (
    Float8Linear,
    Float8Recipe,
    apply_fp8,
    dequantize,
    fp8_module_names,
    quantize,
    quantize_dequantize,
    relative_error_bound,
    subnormal_half_step,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared: small matmuls run ~50x faster single-threaded than oversubscribed.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("fmt,fmax", [("e4m3", 448.0), ("e5m2", 57344.0)])
def test_quantise_dequantise_error_bounds(fmt, fmax):
    g = torch.Generator().manual_seed(0)
    # values across 8 decades so both the normal and the subnormal range are exercised
    x = torch.randn(4096, generator=g) * torch.logspace(-6, 2, 4096)
    q, inv_scale = quantize(x, fmt)
    assert q.dtype == {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[fmt]
    scale = 1 / inv_scale.item()
    assert scale == 2.0 ** round(torch.log2(torch.tensor(scale)).item())  # a power of two
    assert fmax / 2 < x.abs().max().item() * scale <= fmax  # amax lands in the top binade, never saturates
    d = dequantize(q, inv_scale)
    err = (d - x).abs()
    # half an ulp relative in the normal range; half a subnormal step (times 1/scale) below it
    bound = relative_error_bound(fmt) * x.abs() + subnormal_half_step(fmt) * inv_scale
    assert bool((err <= bound * (1 + 1e-6)).all())
    normal = x.abs() * scale >= torch.finfo(q.dtype).smallest_normal
    assert (err[normal] / x.abs()[normal]).max().item() <= relative_error_bound(fmt)
    # pow2 scales: the dequantised values are exactly representable in bf16, so a bf16 matmul sees FP8 values
    assert torch.equal(d.bfloat16().float(), d)


def test_row_scaling_and_edge_cases():
    x = torch.stack([torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64) * 1e-7])
    tensorwise = quantize_dequantize(x, "e4m3")
    rowwise = quantize_dequantize(x, "e4m3", amax_dims=(-1,))
    # the tiny row underflows under one tensor scale but keeps full FP8 precision with its own scale
    assert _rel_err(tensorwise[1], x[1]) > 0.5
    assert _rel_err(rowwise[1], x[1]) < relative_error_bound("e4m3")
    assert torch.equal(quantize_dequantize(torch.zeros(3, 4)), torch.zeros(3, 4))
    y = quantize_dequantize(torch.tensor([1.0, float("nan")]))
    assert torch.isnan(y).any()  # a diverged step stays visible
    with pytest.raises(ValueError, match="FP8 format"):
        quantize(x, "e3m4")
    with pytest.raises(ValueError, match="scaling"):
        Float8Recipe(scaling="block")


def test_float8_linear_forward_backward_close_to_fp32():
    # Tolerances: each e4m3 operand carries up to 2^-4 relative rounding (about 2^-4/sqrt(3) = 3.6% RMS), the e5m2
    # output gradient up to 2^-3 (7.2% RMS). Errors are unbiased, so norm-wise relative errors are ~5% for the
    # output and ~8-9% for the gradients; we allow 8% and 15%, and require them to be non-zero (FP8 is active).
    torch.manual_seed(0)
    ref = nn.Linear(128, 96)
    fp8 = Float8Linear.from_linear(nn.Linear(128, 96), Float8Recipe())
    fp8.load_state_dict(ref.state_dict())
    x_ref = torch.randn(64, 128, requires_grad=True)
    x_fp8 = x_ref.detach().clone().requires_grad_(True)
    gy = torch.randn(64, 96)
    y_ref, y_fp8 = ref(x_ref), fp8(x_fp8)
    y_ref.backward(gy)
    y_fp8.backward(gy)
    assert 0.0 < _rel_err(y_fp8, y_ref) < 0.08
    assert 0.0 < _rel_err(x_fp8.grad, x_ref.grad) < 0.15
    assert 0.0 < _rel_err(fp8.weight.grad, ref.weight.grad) < 0.15
    # The backward uses exactly the FP8 operands and the e5m2 output gradient (the bias, added inside the FP8
    # matmul's output, sees the quantised gradient too).
    xq, wq = quantize_dequantize(x_ref.detach()), quantize_dequantize(fp8.weight.detach())
    gq = quantize_dequantize(gy, "e5m2")
    torch.testing.assert_close(fp8.bias.grad, gq.sum(0))
    torch.testing.assert_close(x_fp8.grad, gq @ wq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fp8.weight.grad, gq.T @ xq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y_fp8, F.linear(xq, wq, fp8.bias), rtol=1e-5, atol=1e-6)


def test_float8_linear_under_bf16_autocast():
    torch.manual_seed(0)
    lin = Float8Linear.from_linear(nn.Linear(64, 32), Float8Recipe())
    x = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert lin.weight.grad.dtype == torch.float32
    expected = F.linear(quantize_dequantize(x).bfloat16(), quantize_dequantize(lin.weight.detach()).bfloat16(),
                        lin.bias.detach().bfloat16())
    torch.testing.assert_close(y.detach(), expected)


def test_grouped_mm_matches_per_expert_fp8_and_hp():
    torch.manual_seed(0)
    E, K, N = 4, 32, 48
    counts = [5, 0, 9, 6]
    offs = torch.tensor(counts).cumsum(0).to(torch.int32)
    x = torch.randn(sum(counts), K, requires_grad=True)
    w = torch.randn(E, K, N)
    w[2] *= 100.0  # one large expert must not crush the others' precision: scales are per expert
    w.requires_grad_(True)
    recipe = Float8Recipe()
    y = recipe.grouped_mm(x, w, offs)
    xq = quantize_dequantize(x.detach())
    ref = torch.cat([xq[a:b] @ quantize_dequantize(w.detach()[e])
                     for e, (a, b) in enumerate(zip([0, *offs[:-1].tolist()], offs.tolist(), strict=True))])
    torch.testing.assert_close(y.detach(), ref, rtol=1e-5, atol=1e-5)
    hp = grouped_mm(x.detach(), w.detach(), offs)
    assert 0.0 < _rel_err(y.detach()[:5], hp[:5]) < 0.08  # expert 0, next to the 100x expert
    gy = torch.randn_like(y)
    y.backward(gy)
    gq = quantize_dequantize(gy, "e5m2")
    torch.testing.assert_close(w.grad[0], xq[:5].T @ gq[:5], rtol=1e-5, atol=1e-5)
    assert torch.equal(w.grad[1], torch.zeros(K, N))  # an expert without tokens gets a zero gradient


def _tiny_moe_model():
    cfg = KExaoneConfig.preset("tiny")
    torch.manual_seed(0)
    m = nn.Module()
    m.model = nn.Module()
    m.model.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
    m.model.mlp = KExaoneMoE(cfg)
    m.model.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
    m.model.small = nn.Linear(cfg.hidden_size, 8)  # a dimension < 16 stays in high precision
    m.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
    return cfg, m


def test_apply_fp8_swaps_only_eligible_modules_and_keeps_parameters():
    cfg, m = _tiny_moe_model()
    params_before = dict(m.named_parameters())
    keys_before = list(m.state_dict().keys())
    out = apply_fp8(m)
    assert out is m
    assert isinstance(m.model.proj, Float8Linear)
    assert isinstance(m.model.mlp.shared_experts.gate_proj, Float8Linear)
    assert type(m.lm_head) is nn.Linear and type(m.model.small) is nn.Linear
    assert type(m.model.embed_tokens) is nn.Embedding
    assert isinstance(m.model.mlp.experts.fp8_recipe, Float8Recipe)
    assert "model.mlp.gate" not in fp8_module_names(m)
    assert set(fp8_module_names(m)) >= {"model.proj", "model.mlp.experts"}
    # same Parameter objects under the same names: optimizers and checkpoints do not notice FP8
    assert list(m.state_dict().keys()) == keys_before
    for name, p in m.named_parameters():
        assert p is params_before[name]
    # a user filter narrows the choice
    _, m2 = _tiny_moe_model()
    apply_fp8(m2, module_filter_fn=lambda name, mod: "experts" not in name)
    assert m2.model.mlp.experts.fp8_recipe is None and isinstance(m2.model.proj, Float8Linear)


def test_fp8_moe_forward_close_to_high_precision():
    cfg, m = _tiny_moe_model()
    x = torch.randn(2, 16, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    y_hp = m.model.mlp(x).detach()
    apply_fp8(m)
    y = m.model.mlp(x)
    assert 0.0 < _rel_err(y.detach(), y_hp) < 0.08
    y.pow(2).mean().backward()
    assert m.model.mlp.experts.gate_up_proj.grad is not None
    assert torch.isfinite(m.model.mlp.experts.down_proj.grad).all()


def _train_regression(fp8: bool, steps: int = 120) -> list[float]:
    torch.manual_seed(0)
    X = torch.randn(256, 32)
    Y = torch.tanh(X @ (torch.randn(32, 32) / 6)) @ (torch.randn(32, 16) / 5)
    m = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 16))
    if fp8:
        apply_fp8(m)
        assert len(fp8_module_names(m)) == 3
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(step))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (m(X[idx]).float() - Y[idx]).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


def test_fp8_training_tracks_bf16_loss_curve():
    # Tolerance, and why: FP8 rounding (6.25% per e4m3 operand, 12.5% per e5m2 gradient, unbiased) perturbs each
    # step a little, so the two runs drift apart slowly; the relative gap grows as the loss nears FP8's noise floor
    # (measured on this setup: 0.4% at step 19, 2.2% at 49, 4.6% at 99). We require the 10-step moving average of
    # the FP8 loss to stay within 10% of bf16's at every point, within 1% of the initial loss in absolute terms,
    # and both runs to cut the loss by >= 10x.
    bf16 = _train_regression(False)
    fp8 = _train_regression(True)
    assert bf16 != fp8  # FP8 really changes the numerics

    def smooth(v, i, w=10):
        return sum(v[i - w + 1:i + 1]) / w

    for i in range(9, len(bf16)):
        a, b = smooth(bf16, i), smooth(fp8, i)
        assert abs(b - a) <= 0.10 * a, (i, a, b)
        assert abs(b - a) <= 0.01 * bf16[0], (i, a, b)
    assert smooth(fp8, len(fp8) - 1) < 0.1 * fp8[0]
    assert smooth(bf16, len(bf16) - 1) < 0.1 * bf16[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_torchao_mode_needs_cuda():
    _, m = _tiny_moe_model()
    with pytest.raises(RuntimeError, match="CUDA"):
        apply_fp8(m, mode="torchao")
    with pytest.raises(ValueError, match="mode"):
        apply_fp8(m, mode="fast")


def test_apply_fp8_is_idempotent():
    _, m = _tiny_moe_model()
    apply_fp8(m)
    first = fp8_module_names(m)
    proj = m.model.proj
    apply_fp8(m)
    assert fp8_module_names(m) == first and m.model.proj is proj

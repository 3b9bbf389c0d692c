"""Muon maths: Newton-Schulz orthogonalisation, per-expert batching, the update scale and the optimizer step."""

from __future__ import annotations

import math

import pytest
import torch

from kexaone.train.muon import (
    MuonAdamW,
    muon_scale,
    orthogonalized_update,
    resolve_ns_dtype,
    zeropower_via_newtonschulz,
)

# The quintic (3.4445, -4.7750, 2.0315) is tuned for speed, not convergence: after 5 steps the singular values of a
# matrix whose normalised singular values are not tiny land in about [0.68, 1.14] (measured: 0.682..1.134 for
# Gaussian 64x256); they do not converge to exactly 1. We test that band with a small margin.
SV_LOW, SV_HIGH = 0.65, 1.2


@pytest.fixture(autouse=True)
def _one_thread():
    # The test machine is shared: small matmuls run ~50x faster single-threaded than oversubscribed.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (48, 96), (32, 512)])
def test_newton_schulz_singular_values_in_band(shape):
    # Rectangular Gaussian matrices are well conditioned (Marchenko-Pastur): every singular value is reachable.
    G = torch.randn(*shape, generator=_gen(0))
    X = zeropower_via_newtonschulz(G, steps=5)
    assert X.shape == G.shape and X.dtype == torch.float32
    s = torch.linalg.svdvals(X)
    assert s.min() > SV_LOW and s.max() < SV_HIGH, (s.min().item(), s.max().item())


def test_newton_schulz_keeps_singular_vectors():
    # NS only maps singular values (X = U f(S) V^T), so U^T X V must be diagonal.
    G = torch.randn(40, 120, generator=_gen(1), dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    X = zeropower_via_newtonschulz(G, dtype=torch.float32).double()
    D = U.T @ X @ Vh.T
    off = D - torch.diag(torch.diagonal(D))
    assert off.abs().max() < 1e-4
    assert torch.diagonal(D).min() > SV_LOW


def test_newton_schulz_scale_invariant_and_zero_safe():
    G = torch.randn(16, 32, generator=_gen(2))
    torch.testing.assert_close(zeropower_via_newtonschulz(G * 1000.0), zeropower_via_newtonschulz(G),
                               rtol=1e-4, atol=1e-5)
    Z = zeropower_via_newtonschulz(torch.zeros(8, 16))
    assert torch.equal(Z, torch.zeros(8, 16))


@pytest.mark.parametrize("shape", [(6, 48, 16), (6, 16, 48), (4, 32, 32)])
def test_batched_newton_schulz_equals_loop_over_experts_exactly(shape):
    G_EOI = torch.randn(*shape, generator=_gen(3))
    batched = zeropower_via_newtonschulz(G_EOI)
    looped = torch.stack([zeropower_via_newtonschulz(G_EOI[e]) for e in range(shape[0])])
    assert torch.equal(batched, looped)


def test_expert_update_equals_loop_and_split_treats_gate_and_up_separately():
    E, I, H = 4, 16, 48
    u_EJH = torch.randn(E, 2 * I, H, generator=_gen(4))  # a fused gate_up_proj gradient [E, 2I, H]
    batched = orthogonalized_update(u_EJH, steps=5, ns_dtype=torch.float32, split=2)
    looped = torch.stack([
        torch.cat([orthogonalized_update(u_EJH[e, :I], 5, torch.float32),
                   orthogonalized_update(u_EJH[e, I:], 5, torch.float32)])
        for e in range(E)
    ])
    assert torch.equal(batched, looped)
    # Each part is orthogonal on its own, with the scale of an [I, H] matrix.
    s = torch.linalg.svdvals(batched[0, :I] / muon_scale(I, H))
    assert s.min() > SV_LOW and s.max() < SV_HIGH
    with pytest.raises(ValueError, match="split"):
        orthogonalized_update(torch.randn(3, 5, 8), 5, torch.float32, split=2)


def test_update_rms_matches_adamw_scale():
    # 0.2*sqrt(max(rows, cols)) makes an orthogonal update's RMS 0.2 (AdamW's typical update RMS), for any shape.
    for rows, cols in [(32, 128), (128, 32), (64, 256)]:
        u = orthogonalized_update(torch.randn(rows, cols, generator=_gen(5)), 5, torch.float32)
        rms = u.pow(2).mean().sqrt().item()
        assert 0.2 * SV_LOW < rms < 0.2 * SV_HIGH, (rows, cols, rms)
    assert muon_scale(100, 400) == pytest.approx(0.2 * 20.0)


def test_bf16_newton_schulz():
    X = zeropower_via_newtonschulz(torch.randn(64, 256, generator=_gen(6)), dtype=torch.bfloat16)
    assert X.dtype == torch.bfloat16
    s = torch.linalg.svdvals(X.float())
    assert s.min() > 0.6 and s.max() < 1.25  # bf16 rounding widens the band slightly
    assert resolve_ns_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_ns_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="ns_dtype"):
        resolve_ns_dtype("fp16", torch.device("cpu"))


def test_muon_step_matches_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, 32))
    p0 = p.detach().clone()
    g = torch.randn(16, 32)
    opt = MuonAdamW([{"params": [p], "kind": "muon"}], lr=0.01, weight_decay=0.1, momentum=0.9,
                    ns_dtype="float32")
    p.grad = g.clone()
    opt.step()
    # First step: buf = g, Nesterov update = g + mu*buf = 1.9 g.
    expected = p0 * (1 - 0.01 * 0.1) - 0.01 * muon_scale(16, 32) * zeropower_via_newtonschulz(1.9 * g)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)
    # Second step uses the momentum buffer: buf = 0.9 g + g2.
    g2 = torch.randn(16, 32)
    p1 = p.detach().clone()
    p.grad = g2.clone()
    opt.step()
    buf = 0.9 * g + g2
    expected2 = p1 * (1 - 0.001) - 0.01 * muon_scale(16, 32) * zeropower_via_newtonschulz(g2 + 0.9 * buf)
    torch.testing.assert_close(p.detach(), expected2, rtol=0, atol=1e-6)


def test_adamw_group_is_bit_identical_to_torch_adamw():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(8, 8))
    b = torch.nn.Parameter(a.detach().clone())
    ours = MuonAdamW([{"params": [a], "kind": "adamw"}], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.AdamW([b], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for _ in range(5):
        g = torch.randn(8, 8)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert torch.equal(a, b)


def test_muon_minimises_a_least_squares_problem():
    torch.manual_seed(0)
    A = torch.randn(64, 32)
    W_true = torch.randn(32, 16)
    Y = A @ W_true
    W = torch.nn.Parameter(torch.zeros(16, 32))  # nn.Linear orientation [out, in]
    opt = MuonAdamW([{"params": [W], "kind": "muon"}], lr=0.2, weight_decay=0.0)
    # Muon's steps have a fixed size, so it needs a decaying LR to settle (as in WSD's decay phase).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 100)
    losses = []
    for _ in range(100):
        loss = (A @ W.T - Y).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert losses[-1] < 0.01 * losses[0]


def test_muon_rejects_bad_parameters_and_options():
    with pytest.raises(ValueError, match="Muon handles"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(4))], "kind": "muon"}])
    with pytest.raises(ValueError, match="kind"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(4))], "kind": "sgd"}])
    with pytest.raises(ValueError, match="momentum"):
        MuonAdamW([torch.nn.Parameter(torch.zeros(4))], momentum=1.0)
    with pytest.raises(ValueError, match="Newton-Schulz"):
        zeropower_via_newtonschulz(torch.zeros(4))
    assert math.isclose(muon_scale(3, 7), 0.2 * math.sqrt(7))


def test_plain_momentum_and_zero_lr():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(8, 24))
    p0 = p.detach().clone()
    g = torch.randn(8, 24)
    opt = MuonAdamW([{"params": [p], "kind": "muon"}], lr=0.02, weight_decay=0.0, nesterov=False,
                    ns_dtype="float32")
    p.grad = g.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), p0 - 0.02 * muon_scale(8, 24) * zeropower_via_newtonschulz(g),
                               rtol=0, atol=1e-6)
    # lr 0 moves nothing (what distributed-checkpoint helpers rely on when they initialise optimizer state)
    opt.param_groups[0]["lr"] = 0.0
    before = p.detach().clone()
    opt.step()
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("choice,precision,expected", [("auto", "fp32", "auto"), ("bfloat16", "fp32", "bfloat16"),
                                                       ("auto", "bf16", "bfloat16"), ("float32", "bf16", "float32")])
def test_trainer_passes_the_newton_schulz_dtype_to_muon(tmp_path, choice, precision, expected):
    """--muon-ns-dtype reaches Muon; `auto` follows the training precision (bf16 training iterates in bf16)."""
    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.config import TrainConfig
    from kexaone.train.trainer import Trainer

    model = KExaoneForCausalLM(KExaoneConfig.preset("tiny"))
    t = Trainer(model, None, [], TrainConfig(max_steps=1, precision=precision, device="cpu", out=str(tmp_path),
                                             progress=False, tensorboard=False, muon_ns_dtype=choice))
    muon_groups = [g for g in t.optimizer.param_groups if g["kind"] == "muon"]
    assert muon_groups and all(g["ns_dtype"] == expected for g in muon_groups)
    dtype = torch.bfloat16 if expected == "bfloat16" else torch.float32
    assert resolve_ns_dtype(muon_groups[0]["ns_dtype"], torch.device("cpu")) == dtype

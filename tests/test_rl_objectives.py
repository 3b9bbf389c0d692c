"""AGAPO and GROUPER objectives (kexaone.rl) against independent references written differently here: numpy and
plain loops for the values, hand-derived gradients for torch.autograd, TRL RLOO's normalisation, and SimPER."""

import math

import numpy as np
import pytest
import torch

from kexaone.rl import agapo_advantages, agapo_is_stats, agapo_loss, grouper_advantages, grouper_loss


def _rewards(seed: int, P: int = 7, G: int = 4, binary: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = rng.integers(0, 2, size=(P, G)).astype(float) if binary else rng.random((P, G))
    r[0] = 0.5  # always at least one zero-variance group
    r[1] = 1.0
    return r


# ---------------------------------------------------------------------------------------------------------- AGAPO


def _agapo_advantages_reference(r: np.ndarray):
    P, G = r.shape
    loo = np.zeros((P, G))
    keep = np.zeros(P, dtype=bool)
    for p in range(P):
        keep[p] = max(r[p]) - min(r[p]) >= 1e-8
        for i in range(G):
            others = [r[p, j] for j in range(G) if j != i]
            loo[p, i] = r[p, i] - sum(others) / len(others)
    values = [loo[p, i] for p in range(P) if keep[p] for i in range(G)]
    out = np.zeros((P, G))
    if values:
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        for p in range(P):
            if keep[p]:
                out[p] = [(loo[p, i] - mean) / std for i in range(G)]
    return out, keep


@pytest.mark.parametrize("seed, G, binary", [(0, 4, False), (1, 2, True), (2, 8, True), (3, 5, False)])
def test_agapo_advantages_match_reference(seed, G, binary):
    r = _rewards(seed, G=G, binary=binary)
    adv, keep = agapo_advantages(torch.tensor(r))
    ref_adv, ref_keep = _agapo_advantages_reference(r)
    assert keep.tolist() == ref_keep.tolist()
    assert not keep[0] and not keep[1]
    np.testing.assert_allclose(adv.numpy(), ref_adv, atol=1e-12)
    assert adv.dtype == torch.float64
    assert adv[keep].mean().abs() < 1e-12 and abs(adv[keep].std(unbiased=False).item() - 1) < 1e-12


def test_agapo_advantages_equal_trl_rloo_normalisation():
    # TRL RLOOTrainer(normalize_advantages=True): LOO baseline r_i - mean(others) (TRL writes it as
    # (G*r_i - sum)/(G-1)), then (A - mean) / (std + 1e-4) with a Bessel-corrected std. On the kept groups this
    # is ours up to the std convention: ours = TRL * (std_bessel + 1e-4) / std_population.
    r = _rewards(5, P=9, G=4)
    adv, keep = agapo_advantages(torch.tensor(r))
    kept = r[keep.numpy()]
    G = kept.shape[1]
    trl = (G * kept - kept.sum(axis=1, keepdims=True)) / (G - 1)
    flat = trl.reshape(-1)
    std_bessel, std_pop = flat.std(ddof=1), flat.std(ddof=0)
    trl_norm = (trl - flat.mean()) / (std_bessel + 1e-4)
    np.testing.assert_allclose(adv[keep].numpy(), trl_norm * (std_bessel + 1e-4) / std_pop, atol=1e-10)
    # The G/(G-1) factor cancels: plain mean-centring standardised over the batch gives the same advantages.
    centred = kept - kept.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(adv[keep].numpy(), centred / centred.reshape(-1).std(), atol=1e-10)


def test_agapo_advantages_filter_before_statistics_and_edge_cases():
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float32)
    adv, keep = agapo_advantages(r)
    assert keep.tolist() == [True, False, False]
    # With G = 2 and a mixed binary pair, the kept advantages are exactly +-1 (zeros of dropped groups ignored).
    assert adv.tolist() == [[1.0, -1.0], [0.0, 0.0], [0.0, 0.0]] and adv.dtype == torch.float32
    adv, keep = agapo_advantages([[0.3, 0.3 + 1e-12], [1, 1]])  # below the tolerance: all equal
    assert not keep.any() and (adv == 0).all()
    with pytest.raises(ValueError, match=r"shape \[P, G\]"):
        agapo_advantages(torch.zeros(4))
    with pytest.raises(ValueError, match="G >= 2"):
        agapo_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="NaN"):
        agapo_advantages([[0.0, float("nan")]])


def _token_inputs(seed: int, N: int = 6, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3
    rollout = logprobs + torch.randn(N, T, generator=g, dtype=torch.float64) * 0.8  # ratios both sides of the cap
    mask = (torch.rand(N, T, generator=g) < 0.7).to(torch.float64)
    mask[:, 0] = 1
    mask[-1] = 0  # a row with no response tokens
    logprobs[mask == 0] = -float("inf")  # garbage at padding must not leak into values or gradients
    advantages = torch.randn(N, generator=g, dtype=torch.float64)
    advantages[0] = 0.0  # a dropped group's response
    return logprobs, rollout, advantages, mask


def _agapo_reference(lp, old, adv, mask, cap):
    """Value and hand-derived gradient with plain loops: d loss / d lp_it = -(1/N)(1/|o_i|) w_it A_i m_it."""
    N, T = len(lp), len(lp[0])
    value, grad = 0.0, np.zeros((N, T))
    for i in range(N):
        length = sum(mask[i])
        if length == 0:
            continue
        for t in range(T):
            if mask[i][t]:
                w = min(math.exp(lp[i][t] - old[i][t]), cap)
                value -= w * adv[i] * lp[i][t] / length / N
                grad[i, t] = -w * adv[i] / length / N
    return value, grad


@pytest.mark.parametrize("seed, cap", [(0, 2.0), (1, 1.2), (2, 5.0)])
def test_agapo_loss_value_and_gradient_match_reference(seed, cap):
    lp, old, adv, mask = _token_inputs(seed)
    lp = lp.requires_grad_(True)
    loss = agapo_loss(lp, old, adv, mask, is_cap=cap)
    (grad,) = torch.autograd.grad(loss, lp)
    ref_value, ref_grad = _agapo_reference(lp.detach().tolist(), old.tolist(), adv.tolist(), mask.tolist(), cap)
    assert loss.item() == pytest.approx(ref_value, abs=1e-12)
    assert torch.isfinite(grad).all()
    np.testing.assert_allclose(grad.numpy(), ref_grad, atol=1e-12)


def test_agapo_loss_token_mean_and_on_policy_case():
    lp, old, adv, mask = _token_inputs(7)
    m = mask.bool()
    lp0 = torch.where(m, lp, torch.zeros_like(lp))
    w = torch.exp(lp0 - torch.where(m, old, torch.zeros_like(old))).clamp(max=2.0)
    expected = -(w * adv[:, None] * lp0 * mask).sum() / mask.sum()
    assert agapo_loss(lp, old, adv, mask, normalize="token").item() == pytest.approx(expected.item(), abs=1e-12)
    # On-policy (rho = 1): the gradient is the plain policy gradient A_i * grad log pi / |o_i| / N.
    x = torch.where(m, lp, torch.zeros_like(lp)).requires_grad_(True)
    (g,) = torch.autograd.grad(agapo_loss(x, x.detach(), adv, mask), x)
    lengths = mask.sum(1).clamp(min=1)
    np.testing.assert_allclose(g.numpy(), (-(adv / lengths)[:, None] * mask / len(adv)).numpy(), atol=1e-12)


def test_agapo_loss_errors():
    lp, old, adv, mask = _token_inputs(0)
    with pytest.raises(ValueError, match="rollout_logprobs must have shape"):
        agapo_loss(lp, old[:, :3], adv, mask)
    with pytest.raises(ValueError, match="advantages must have shape"):
        agapo_loss(lp, old, adv[:2], mask)
    with pytest.raises(ValueError, match="is_cap must be positive"):
        agapo_loss(lp, old, adv, mask, is_cap=0)
    with pytest.raises(ValueError, match="normalize"):
        agapo_loss(lp, old, adv, mask, normalize="batch")


def test_agapo_is_stats():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.2, 0.2]]))
    old = torch.log(torch.tensor([[0.5, 0.1, 0.5], [0.4, 0.2, 0.9]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    stats = agapo_is_stats(lp, old, mask, is_cap=2.0)
    ratios = [1.0, 5.0, 0.5, 1.0, 0.2 / 0.9]  # pi / pi_rollout on the five unmasked tokens
    assert stats.n_tokens == 5
    assert stats.ratio_mean == pytest.approx(sum(ratios) / 5)
    assert stats.ratio_max == pytest.approx(5.0)
    assert stats.truncated_frac == pytest.approx(1 / 5)
    assert stats.logp_diff_mean == pytest.approx(sum(math.log(x) for x in ratios) / 5)
    assert stats.k3_kl == pytest.approx(sum((x - 1) - math.log(x) for x in ratios) / 5)
    assert agapo_is_stats(lp, old, torch.zeros_like(mask)).n_tokens == 0


# -------------------------------------------------------------------------------------------------------- GROUPER


def _grouper_advantages_reference(r: np.ndarray) -> np.ndarray:
    out = np.zeros_like(r)
    for p, row in enumerate(r):
        lo, hi = min(row), max(row)
        if hi - lo < 1e-8:
            continue
        mean = sum(row) / len(row)
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / len(row))
        z = [(x - mean) / std for x in row]
        out[p] = [2 * (zi - min(z)) / (max(z) - min(z)) - 1 for zi in z]
    return out


@pytest.mark.parametrize("seed, G", [(0, 4), (1, 2), (2, 6)])
def test_grouper_advantages_match_reference(seed, G):
    r = _rewards(seed, G=G)
    adv = grouper_advantages(torch.tensor(r))
    ref = _grouper_advantages_reference(r)
    np.testing.assert_allclose(adv.numpy(), ref, atol=1e-12)
    assert (adv[0] == 0).all() and (adv[1] == 0).all()
    # The z-score drops out: it is the rewards min-max scaled to [-1, 1].
    rows = slice(2, None)
    lo, hi = r[rows].min(1, keepdims=True), r[rows].max(1, keepdims=True)
    np.testing.assert_allclose(adv[rows].numpy(), 2 * (r[rows] - lo) / (hi - lo) - 1, atol=1e-12)
    assert adv[rows].max(1).values.eq(1).all() and adv[rows].min(1).values.eq(-1).all()


def test_grouper_advantages_known_group():
    adv = grouper_advantages(torch.tensor([[0.2, 0.8, 0.5, 0.8], [3.0, 3.0, 3.0, 3.0]]))
    assert torch.allclose(adv, torch.tensor([[-1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]), atol=1e-6)


def _grouper_reference(lp, adv, mask):
    """Value and hand-derived gradient: d loss / d lp_it = -(1/N) A_i exp(mean_i) m_it / |o_i|."""
    N, T = len(lp), len(lp[0])
    value, grad = 0.0, np.zeros((N, T))
    for i in range(N):
        length = sum(mask[i])
        mean = sum(lp[i][t] for t in range(T) if mask[i][t]) / length if length else 0.0
        value -= adv[i] * math.exp(mean) / N
        for t in range(T):
            if mask[i][t]:
                grad[i, t] = -adv[i] * math.exp(mean) / length / N
    return value, grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouper_loss_value_and_gradient_match_reference(seed):
    lp, _, adv, mask = _token_inputs(seed)
    lp = lp.requires_grad_(True)
    loss = grouper_loss(lp, adv, mask)
    (grad,) = torch.autograd.grad(loss, lp)
    ref_value, ref_grad = _grouper_reference(lp.detach().tolist(), adv.tolist(), mask.tolist())
    assert loss.item() == pytest.approx(ref_value, abs=1e-12)
    np.testing.assert_allclose(grad.numpy(), ref_grad, atol=1e-12)


def test_grouper_with_two_responses_is_half_simper():
    # SimPER (Xiao et al. 2025): L = -exp(mean logp(y_w)) + exp(mean logp(y_l)), averaged over pairs.
    lp, _, _, mask = _token_inputs(3, N=8, T=7)
    mask[-1] = 1
    lp = torch.where(mask.bool(), lp, torch.zeros_like(lp)).requires_grad_(True)
    rewards = torch.tensor([[0.9, 0.1], [0.2, 0.7], [1.0, 0.0], [0.3, 0.6]], dtype=torch.float64)  # 4 pairs
    adv = grouper_advantages(rewards).reshape(-1)
    loss = grouper_loss(lp, adv, mask)
    mean_logp = (lp * mask).sum(1) / mask.sum(1)
    chosen_first = rewards[:, 0] > rewards[:, 1]
    pair = mean_logp.reshape(4, 2)
    chosen = torch.where(chosen_first, pair[:, 0], pair[:, 1])
    rejected = torch.where(chosen_first, pair[:, 1], pair[:, 0])
    simper = (-chosen.exp() + rejected.exp()).mean()
    assert loss.item() == pytest.approx(0.5 * simper.item(), abs=1e-12)
    g1 = torch.autograd.grad(loss, lp, retain_graph=True)[0]
    g2 = torch.autograd.grad(0.5 * simper, lp)[0]
    assert torch.allclose(g1, g2, atol=1e-12)


def test_grouper_loss_errors():
    lp, _, adv, mask = _token_inputs(0)
    with pytest.raises(ValueError, match="mask must have shape"):
        grouper_loss(lp, adv, mask[:, :2])
    with pytest.raises(ValueError, match="advantages must have shape"):
        grouper_loss(lp, adv[:1], mask)
    with pytest.raises(ValueError, match="G >= 2"):
        grouper_advantages([[1.0], [2.0]])

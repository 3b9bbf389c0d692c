"""Decode fast paths equal the general paths: per-routed-expert MoE matmuls vs the grouped kernel, the direct T=1
mask over a padded cache vs the chunked masked path, the aux loss skipped only in eval under inference_mode, the
host-side padding flag of KVCache, the single-pass token-range check, the few-row vocabulary projection, and whole
greedy generations unchanged."""

from __future__ import annotations

import pytest
import torch

import kexaone.model.attention as attn_mod
import kexaone.model.moe as moe_mod
from kexaone.config import KExaoneConfig
from kexaone.model.attention import _masked_chunked, attend
from kexaone.model.cache import KVCache
from kexaone.model.moe import GroupedExperts, KExaoneMoE
from kexaone.model.transformer import KExaoneForCausalLM


def tiny_cfg(**changes) -> KExaoneConfig:
    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, intermediate_size=64, moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                num_shared_experts=1, sliding_window=6, num_nextn_predict_layers=1)
    base.update(changes)
    return KExaoneConfig(**base)


@pytest.fixture()
def model() -> KExaoneForCausalLM:
    torch.manual_seed(0)
    return KExaoneForCausalLM(tiny_cfg()).eval()


# ------------------------------------------------------------------------------------------------------------ MoE
@pytest.mark.parametrize("path", ["few_pairs", "segment"])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_decode_expert_paths_are_bit_identical_to_grouped_path(monkeypatch, n, path):
    """Forced routing with repeated experts, an expert used twice by one token's neighbours, empty experts: the
    one-token path (`_few_pairs_experts`, forced for every size here) and the per-expert segment path both give
    the grouped kernel's numbers bit for bit."""
    torch.manual_seed(1)
    cfg = tiny_cfg()
    ex = GroupedExperts(cfg)
    x = torch.randn(n, cfg.hidden_size)
    idx = torch.tensor([[5, 1], [1, 5], [7, 0], [0, 7], [3, 4], [6, 2], [2, 6], [5, 1]])[:n]
    w = torch.rand(n, 2)
    with torch.no_grad():
        monkeypatch.setattr(moe_mod, "FEW_PAIRS_MAX", 0)
        monkeypatch.setattr(moe_mod, "SEGMENT_MAX_PAIRS", 0)
        grouped = ex(x, idx, w)
        spied = "_few_pairs_experts" if path == "few_pairs" else "_segment_mm"
        monkeypatch.setattr(moe_mod, "FEW_PAIRS_MAX" if path == "few_pairs" else "SEGMENT_MAX_PAIRS", 10**6)
        calls = []
        real = getattr(moe_mod, spied)
        monkeypatch.setattr(moe_mod, spied, lambda *a: calls.append(a) or real(*a))
        fast = ex(x, idx, w)
    assert len(calls) == (1 if path == "few_pairs" else 2)  # the path ran (the segment path: gate_up and down)
    assert torch.equal(grouped, fast)


def test_decode_expert_path_only_without_grad_and_for_small_inputs(monkeypatch):
    """Training (grad enabled) and large inputs keep the grouped kernel: training numerics are untouched."""
    cfg = tiny_cfg()
    ex = GroupedExperts(cfg)
    calls = []
    for name in ("_few_pairs_experts", "_segment_mm"):
        real = getattr(moe_mod, name)
        monkeypatch.setattr(moe_mod, name, lambda *a, real=real: calls.append(a) or real(*a))
    x = torch.randn(2, cfg.hidden_size)
    idx = torch.tensor([[0, 1], [2, 3]])
    ex(x, idx, torch.rand(2, 2)).sum().backward()  # grad enabled
    assert calls == [] and ex.gate_up_proj.grad is not None
    with torch.no_grad():
        big = moe_mod.SEGMENT_MAX_PAIRS // 2 + 1
        ex(torch.randn(big, cfg.hidden_size), torch.randint(0, 8, (big, 2)), torch.rand(big, 2))
    assert calls == []


def test_aux_loss_skipped_only_in_eval_inference_mode():
    torch.manual_seed(2)
    moe = KExaoneMoE(tiny_cfg())
    x = torch.randn(2, 5, 32)
    y_train = moe(x)
    aux_train = moe.last_aux_loss
    assert aux_train.requires_grad and aux_train.item() > 0
    moe.eval()
    with torch.no_grad():  # plain no_grad evaluation still reports it (the trainer logs it on held-out data)
        y_ng = moe(x)
        assert torch.allclose(moe.last_aux_loss, aux_train.detach())
    with torch.inference_mode():
        y_inf = moe(x)
        assert moe.last_aux_loss.dim() == 0 and moe.last_aux_loss.item() == 0.0
    assert torch.equal(y_ng, y_inf) and torch.allclose(y_train.detach(), y_inf)
    moe.train()
    with torch.inference_mode():  # training mode: computed whatever the grad mode
        moe(x)
        assert moe.last_aux_loss.item() == pytest.approx(aux_train.item(), rel=1e-6)


# ------------------------------------------------------------------------------------------------------ attention
def test_t1_padded_mask_equals_chunked_masked_path():
    torch.manual_seed(3)
    B, H, h, S, D = 3, 4, 2, 11, 8
    q = torch.randn(B, H, 1, D)
    k, v = torch.randn(B, h, S, D), torch.randn(B, h, S, D)
    valid = torch.arange(S)[None, :] >= torch.tensor([0, 4, 10])[:, None]  # row 2: only its own key is real
    fast = attend(q, k, v, scale=D ** -0.5, window=None, key_valid_BS=valid)
    slow = _masked_chunked(q, k, v, scale=D ** -0.5, window=None, key_valid_BS=valid, doc_q_BT=None, doc_k_BS=None)
    assert torch.equal(fast, slow)
    # and against an explicit softmax over the valid keys
    kk = k.repeat_interleave(H // h, dim=1)
    vv = v.repeat_interleave(H // h, dim=1)
    att = (q @ kk.transpose(-1, -2)) * D ** -0.5
    att = att.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1)
    assert (fast - att @ vv).abs().max().item() < 1e-6


@pytest.mark.parametrize("window", [None, 5])
def test_few_queries_cached_band_equals_chunked_masked_path(window):
    """A speculative verify step (3 queries over 11 unpadded keys, global and sliding): the shared band mask gives
    the chunked masked path's numbers; built inside inference_mode, it is still usable with grad enabled."""
    torch.manual_seed(5)
    B, H, h, S, D, T = 2, 4, 2, 11, 8, 3
    q = torch.randn(B, H, T, D)
    k, v = torch.randn(B, h, S, D), torch.randn(B, h, S, D)
    with torch.inference_mode():
        fast = attend(q, k, v, scale=D ** -0.5, window=window)
    with torch.no_grad():
        again = attend(q, k, v, scale=D ** -0.5, window=window)
    slow = _masked_chunked(q, k, v, scale=D ** -0.5, window=window, key_valid_BS=None, doc_q_BT=None, doc_k_BS=None)
    assert torch.equal(fast, slow) and torch.equal(again, slow)
    band = attn_mod._cached_band(T, S, window, q.device)
    assert not band.is_inference()
    assert band.tolist() == [[(S - T + t) - window < j <= S - T + t if window else j <= S - T + t
                              for j in range(S)] for t in range(T)]


# ---------------------------------------------------------------------------------------------------------- cache
def test_cache_padding_flag_follows_pad_len():
    cfg = tiny_cfg()
    c = KVCache(cfg, 2)
    assert c.has_padding is False
    c.set_left_padding(torch.tensor([[0, 1, 1], [1, 1, 1]]), 3)
    assert c.has_padding is True and c.pad_len.tolist() == [1, 0]
    c.reset()
    assert c.has_padding is False and c.pad_len.tolist() == [0, 0]
    c.set_left_padding(torch.ones(2, 3, dtype=torch.long), 3)
    assert c.has_padding is False


@pytest.mark.parametrize("rows", [1, 2, 4, 5])
def test_few_row_vocab_projection_equals_lm_head(model, monkeypatch, rows):
    # 2-4 rows without autograd take W @ h^T; every case must give lm_head's numbers (up to summation order).
    calls = []
    real = model.lm_head.forward
    monkeypatch.setattr(model.lm_head, "forward", lambda h: calls.append(1) or real(h))
    h = torch.randn(1, rows, model.config.hidden_size)
    with torch.no_grad():
        fast = model._vocab_logits(h)
    torch.testing.assert_close(fast, real(h).detach(), rtol=1e-5, atol=1e-5)
    assert fast.shape == (1, rows, model.config.vocab_size)
    assert len(calls) == (0 if 2 <= rows <= 4 else 1)
    calls.clear()
    model._vocab_logits(h)  # with autograd: always the module (training keeps nn.Linear's backward)
    assert calls == [1]


def test_token_range_check_still_raises(model):
    V = model.config.vocab_size
    with pytest.raises(ValueError, match=f"token id {V}"):
        model(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="token id -3"):
        model(torch.tensor([[-3, 1]]))
    cache = model.new_cache(1)
    with torch.inference_mode():
        model(torch.tensor([[1, 2]]), cache=cache)
        with pytest.raises(ValueError, match=f"token id {V + 5}"):
            model(torch.tensor([[V + 5]]), cache=cache)


# ----------------------------------------------------------------------------------------------------- end to end
def _greedy(model, prompts, steps):
    """Plain greedy decode with a cache (left-padded batch), logits of every step returned."""
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, L - len(p):] = torch.tensor(p)
        mask[r, L - len(p):] = 1
    cache = model.new_cache(B)
    out = model(ids, cache=cache, attention_mask=mask, logits_to_keep=1)
    logits = [out.logits[:, -1]]
    for _ in range(steps):
        out = model(logits[-1].argmax(-1)[:, None], cache=cache, logits_to_keep=1)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


def test_decode_with_fast_paths_equals_general_paths(model, monkeypatch):
    """A whole padded greedy decode past the sliding window: fast paths on (inference_mode, small MoE inputs) vs
    off (grouped kernel forced): identical logits; and both match a full no-cache forward of the final sequence."""
    prompts = [[5, 9, 11, 3], [7, 2, 8, 8, 1, 4, 6]]
    with torch.inference_mode():
        fast = _greedy(model, prompts, 10)
    monkeypatch.setattr(moe_mod, "SEGMENT_MAX_PAIRS", 0)
    monkeypatch.setattr(moe_mod, "FEW_PAIRS_MAX", 0)
    with torch.no_grad():
        slow = _greedy(model, prompts, 10)
    assert torch.equal(fast, slow)
    # the cached decode equals a full forward of the un-padded second row (no padding there)
    seq = torch.tensor([prompts[1] + fast[1, :-1].argmax(-1).tolist()])
    with torch.no_grad():
        full = model(seq).logits[0, len(prompts[1]) - 1:]
    assert (full - fast[1]).abs().max().item() < 1e-5


def test_ring_slot_slices_equal_full_history():
    """The sliding ring (slice copies, wrap-around, chunks longer than the ring) returns exactly the last
    window-1 stored keys followed by the new ones, for every chunk size pattern."""
    from kexaone.model.cache import _RingSlot

    torch.manual_seed(4)
    ring = _RingSlot(window=5, extra=3)  # size 8
    hist_k, hist_v = torch.empty(2, 1, 0, 3), torch.empty(2, 1, 0, 3)
    for T in [3, 1, 1, 4, 1, 9, 2, 1, 1, 1, 7, 1]:
        k, v = torch.randn(2, 1, T, 3), torch.randn(2, 1, T, 3)
        L = hist_k.shape[2]
        k_all, v_all, start = ring.update(k, v)
        hist_k, hist_v = torch.cat((hist_k, k), 2), torch.cat((hist_v, v), 2)
        n_old = min(L, 4)
        assert start == L - n_old
        assert torch.equal(k_all, hist_k[:, :, L - n_old:]) and torch.equal(v_all, hist_v[:, :, L - n_old:])
    ring.length -= 3  # rollback within the extra slots still reads the right entries
    hist_k, hist_v = hist_k[:, :, :-3], hist_v[:, :, :-3]
    k, v = torch.randn(2, 1, 1, 3), torch.randn(2, 1, 1, 3)
    k_all, _, _ = ring.update(k, v)
    assert torch.equal(k_all, torch.cat((hist_k[:, :, -4:], k), 2))

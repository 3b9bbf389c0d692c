"""Attention kernels against a naive reference (explicit scores, explicit mask), plus norm/RoPE numerics."""

from __future__ import annotations

import pytest
import torch

from kexaone.model import attention as attn_mod
from kexaone.model.attention import attend
from kexaone.model.norm import RMSNorm
from kexaone.model.rope import RotaryEmbedding, apply_rope, apply_rope_tables


def naive(q, k, v, scale, window=None, key_valid=None, doc_q=None, doc_k=None):
    """Materialise everything: [B, H, T, S] scores, mask p - window < j <= p, validity, documents, self always."""
    B, H, T, D = q.shape
    S = k.shape[2]
    rep = H // k.shape[1]
    k = k.repeat_interleave(rep, 1)
    v = v.repeat_interleave(rep, 1)
    qpos = torch.arange(S - T, S)[:, None]
    kpos = torch.arange(S)[None, :]
    vis = (kpos <= qpos)
    if window is not None:
        vis &= kpos > qpos - window
    vis = vis[None].expand(B, T, S)
    if key_valid is not None:
        vis = vis & key_valid[:, None, :]
    if doc_q is not None:
        vis = vis & (doc_q[:, :, None] == doc_k[:, None, :])
    vis = vis | (kpos == qpos)[None]
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~vis[:, None], float("-inf"))
    return s.softmax(-1) @ v


def rand_qkv(B, H, h, T, S, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, h, S, D, generator=g),
            torch.randn(B, h, S, D, generator=g))


@pytest.mark.parametrize("T,S,window", [
    (64, 64, 8),      # blocked path, training shape
    (70, 70, 16),     # T not a multiple of the block
    (9, 9, 4),        # short: masked path
    (50, 57, 8),      # queries are the suffix of longer keys (cached prefill), blocked
    (3, 12, 5),       # multi-token step over a cache, masked
    (1, 12, 5),       # one-token decode
    (40, 40, None),   # global causal
    (6, 30, None),    # global, several new tokens over a cache
    (300, 300, 3),    # tiny window, many blocks
])
def test_attend_matches_naive(T, S, window):
    q, k, v = rand_qkv(2, 4, 2, T, S, 16)
    ref = naive(q, k, v, 0.25, window)
    got = attend(q, k, v, scale=0.25, window=window)
    assert (ref - got).abs().max().item() < 1e-5


@pytest.mark.parametrize("T,S,window", [(64, 64, 8), (10, 10, 4), (48, 48, None), (40, 45, 6)])
def test_attend_padding_and_documents(T, S, window):
    q, k, v = rand_qkv(2, 4, 1, T, S, 8, seed=1)
    valid = torch.ones(2, S, dtype=torch.bool)
    valid[1, :7] = False  # left padding of row 1
    doc = torch.zeros(2, S, dtype=torch.long)
    doc[0, 20:] = 1
    doc[0, 33:] = 2
    doc[1, 11:] = 5
    ref = naive(q, k, v, 0.3, window, valid, doc[:, S - T:], doc)
    got = attend(q, k, v, scale=0.3, window=window, key_valid_BS=valid, doc_q_BT=doc[:, S - T:], doc_k_BS=doc)
    assert (ref - got).abs().max().item() < 1e-5


def test_blocked_gradients_match_naive():
    q, k, v = rand_qkv(1, 4, 2, 80, 80, 8, seed=2)
    doc = torch.zeros(1, 80, dtype=torch.long)
    doc[0, 37:] = 1
    grads = []
    for fn in (lambda a, b, c: naive(a, b, c, 0.35, 10, None, doc, doc),
               lambda a, b, c: attend(a, b, c, scale=0.35, window=10, doc_q_BT=doc, doc_k_BS=doc)):
        a, b, c = (t.clone().requires_grad_() for t in (q, k, v))
        (fn(a, b, c) * torch.linspace(-1, 1, 8)).sum().backward()
        grads.append([a.grad, b.grad, c.grad])
    for g_ref, g in zip(*grads):
        assert (g_ref - g).abs().max().item() < 1e-5


def test_sliding_never_materialises_a_full_mask(monkeypatch):
    """Long sliding-window attention goes through the blocked path (no T x T mask), even with padding/documents."""
    def forbidden(*a, **k):
        raise AssertionError("T x S masked path used for a long sliding-window attention")

    monkeypatch.setattr(attn_mod, "_masked_chunked", forbidden)
    q, k, v = rand_qkv(1, 2, 1, 1000, 1000, 8)
    doc = (torch.arange(1000) // 300)[None]
    out = attend(q, k, v, scale=0.3, window=16, doc_q_BT=doc, doc_k_BS=doc)
    assert out.shape == (1, 2, 1000, 8) and torch.isfinite(out).all()


def test_masked_path_chunks_queries(monkeypatch):
    """With a tiny mask budget the global masked path runs query chunk by chunk and gives the same result."""
    q, k, v = rand_qkv(2, 4, 2, 33, 40, 8, seed=3)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[0, :5] = False
    full = attend(q, k, v, scale=0.3, window=None, key_valid_BS=valid)
    monkeypatch.setattr(attn_mod, "MASK_BUDGET", 2 * 40 * 4)  # 4 query rows at a time
    chunked = attend(q, k, v, scale=0.3, window=None, key_valid_BS=valid)
    assert torch.allclose(full, chunked, atol=1e-6)
    assert (full - naive(q, k, v, 0.3, None, valid)).abs().max().item() < 1e-5


@pytest.mark.parametrize("block", [None, 8, 64])
def test_block_size_does_not_change_result(block):
    q, k, v = rand_qkv(1, 2, 2, 200, 200, 8, seed=4)
    ref = naive(q, k, v, 0.3, 8)
    got = attend(q, k, v, scale=0.3, window=8, block=block)
    assert (ref - got).abs().max().item() < 1e-5


def test_padded_query_rows_stay_finite():
    """A left-padded query sees no valid key except itself; its output must be finite (it is ignored later)."""
    q, k, v = rand_qkv(1, 2, 2, 20, 20, 8)
    valid = torch.ones(1, 20, dtype=torch.bool)
    valid[0, :6] = False
    out = attend(q, k, v, scale=0.3, window=4, key_valid_BS=valid)
    assert torch.isfinite(out).all()


def test_rmsnorm_numerics_match_transformers():
    tr = pytest.importorskip("transformers.models.exaone_moe.modeling_exaone_moe")
    ref = tr.ExaoneMoeRMSNorm(32, eps=1e-5)
    ours = RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        w = torch.randn(32)
        ref.weight.copy_(w)
        ours.weight.copy_(w)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5, 32).to(dtype)
        r, o = ref.to(dtype)(x), ours.to(dtype)(x)
        assert r.dtype == o.dtype
        assert torch.equal(r, o)
    # fp32 takes F.rms_norm: its gradients equal the reference's too
    ref, ours = ref.float(), ours.float()
    x = torch.randn(3, 5, 32, requires_grad=True)
    g = torch.randn(3, 5, 32)
    grads_r = torch.autograd.grad(ref(x), (x, ref.weight), g)
    grads_o = torch.autograd.grad(ours(x), (x, ours.weight), g)
    assert all(torch.equal(a, b) for a, b in zip(grads_r, grads_o))


def test_rope_matches_transformers():
    tr = pytest.importorskip("transformers.models.exaone_moe.modeling_exaone_moe")
    from kexaone import KExaoneConfig

    cfg = KExaoneConfig.preset("tiny")
    hf_cfg = pytest.importorskip("transformers").ExaoneMoeConfig(
        **{k: v for k, v in cfg.to_hf_dict().items() if k != "kexaone"})
    pos = torch.arange(37)[None].repeat(2, 1)
    pos[1] += 5
    x = torch.randn(2, cfg.num_attention_heads, 37, cfg.head_dim)
    cos_r, sin_r = tr.ExaoneMoeRotaryEmbedding(hf_cfg)(x, pos)
    ref, _ = tr.apply_rotary_pos_emb(x, x, cos_r, sin_r)
    cos, sin = RotaryEmbedding(cfg.head_dim, cfg.rope_parameters)(pos, x.dtype)
    got = apply_rope(x.transpose(1, 2), cos, sin).transpose(1, 2)
    assert torch.equal(ref, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_tables_equal_rotate_half_bit_for_bit(dtype):
    """The attention layers' form (cos, signed sin) with a roll gives exactly apply_rope's numbers."""
    rot = RotaryEmbedding(16, {"rope_type": "default", "rope_theta": 1e4})
    pos = torch.arange(11)[None].repeat(2, 1) + torch.tensor([[0], [7]])
    x = torch.randn(2, 11, 3, 16).to(dtype)
    cos, sin = rot(pos, dtype)
    cos_t, signed_sin = rot.tables(pos, dtype)
    assert torch.equal(cos, cos_t)
    assert torch.equal(apply_rope(x, cos, sin), apply_rope_tables(x, cos_t, signed_sin))


def test_rope_rejects_unknown_type():
    with pytest.raises(ValueError, match="rope_type"):
        RotaryEmbedding(16, {"rope_type": "yarn", "rope_theta": 1e4})


def test_cpu_low_precision_training_attention_runs_in_fp32():
    """Under CPU bf16 autocast with gradients, attention is computed by the fp32 kernel (its backward is ~3x faster
    on CPUs than the bf16 one) and returned in bf16, exactly as an explicit fp32 call cast down would be; without
    gradients (inference) the bf16 kernel still runs."""
    from kexaone.model.attention import _sdpa

    torch.manual_seed(0)
    q = torch.randn(2, 4, 40, 16, requires_grad=True)
    k, v = torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    kw = dict(is_causal=True, scale=0.25, enable_gqa=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _sdpa(q, k, v, **kw)
        with torch.no_grad():
            inference = _sdpa(q, k, v, **kw)
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    assert out.requires_grad
    lowp = torch.nn.functional.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), **kw)
    assert torch.equal(inference, lowp)
    # bf16 inputs without autocast take the same fp32 path
    qb = q.detach().bfloat16().requires_grad_(True)
    assert torch.equal(_sdpa(qb, k.bfloat16(), v.bfloat16(), **kw),
                       torch.nn.functional.scaled_dot_product_attention(qb.float(), k.bfloat16().float(),
                                                                        v.bfloat16().float(), **kw).bfloat16())

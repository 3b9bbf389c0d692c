"""KV cache: decoding step by step (past the window, so the ring wraps) equals one full forward; rollback;
left padding; memory behaviour; the MTP slot."""

from __future__ import annotations

import pytest
import torch

from kexaone import KExaoneConfig
from kexaone.model import KExaoneForCausalLM, KVCache

ATOL = 1e-5


@pytest.fixture(scope="module")
def model() -> KExaoneForCausalLM:
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("tiny").replace(sliding_window=6)
    return KExaoneForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids(model) -> torch.Tensor:
    return torch.randint(1, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def full(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@torch.no_grad()
def test_token_by_token_equals_full_forward(model, ids, full):
    cache = model.new_cache(2, extra_slots=4)
    steps = [model(ids[:, :5], cache=cache).logits]
    steps += [model(ids[:, t:t + 1], cache=cache).logits for t in range(5, 30)]
    # 30 positions through a ring of 6 + 4 slots: it wrapped twice
    assert cache.seq_len == 30
    assert (torch.cat(steps, 1) - full).abs().max().item() < ATOL


@torch.no_grad()
def test_multi_token_chunks_equal_full_forward(model, ids, full):
    cache = model.new_cache(2)
    parts = [model(ids[:, a:b], cache=cache).logits for a, b in ((0, 3), (3, 4), (4, 21), (21, 30))]
    assert (torch.cat(parts, 1) - full).abs().max().item() < ATOL


@torch.no_grad()
def test_rollback_and_reappend_gives_same_logits(model, ids, full):
    cache = model.new_cache(2, extra_slots=4)
    model(ids[:, :20], cache=cache)
    first = model(ids[:, 20:24], cache=cache).logits
    cache.rollback(4)
    assert cache.seq_len == 20
    again = model(ids[:, 20:24], cache=cache).logits
    assert torch.equal(first, again)
    # reject 3 of 4 "drafts" then continue with the true tokens
    cache.rollback(3)
    rest = model(ids[:, 21:30], cache=cache).logits
    assert (rest - full[:, 21:30]).abs().max().item() < ATOL


def test_rollback_limits(model, ids):
    cache = model.new_cache(1, extra_slots=2)
    with torch.no_grad():
        model(ids[:1, :12], cache=cache)
    with pytest.raises(ValueError, match="extra_slots"):
        cache.rollback(3)
    with pytest.raises(ValueError, match="holds 12"):
        cache.rollback(13)
    with pytest.raises(ValueError):
        cache.rollback(-1)
    cache.rollback(2)
    assert cache.seq_len == 10


@torch.no_grad()
def test_left_padded_batch_equals_rows_alone(model, ids, full):
    short = ids[1:, 7:]
    batch = torch.cat([ids[:1], torch.cat([torch.zeros(1, 7, dtype=torch.long), short], 1)], 0)
    mask = torch.ones_like(batch)
    mask[1, :7] = 0
    alone = model(short).logits[0]
    # with a cache: prefill 20 (mask recorded), then one token at a time
    cache = model.new_cache(2)
    out = [model(batch[:, :20], cache=cache, attention_mask=mask[:, :20]).logits]
    out += [model(batch[:, t:t + 1], cache=cache).logits for t in range(20, 30)]
    out = torch.cat(out, 1)
    assert (out[1, 7:] - alone).abs().max().item() < ATOL
    assert (out[0] - full[0]).abs().max().item() < ATOL
    # and without a cache
    nc = model(batch, attention_mask=mask).logits
    assert (nc[1, 7:] - alone).abs().max().item() < ATOL


def test_padding_errors(model, ids):
    cache = model.new_cache(2)
    right = torch.ones(2, 10, dtype=torch.long)
    right[0, -2:] = 0
    with pytest.raises(ValueError, match="left padding"):
        model(ids[:, :10], cache=cache, attention_mask=right)
    with torch.no_grad():
        model(ids[:, :10], cache=cache)
    with pytest.raises(ValueError, match="left padding"):
        model(ids[:, 10:12], cache=cache, attention_mask=torch.tensor([[1, 1], [0, 1]]))
    with pytest.raises(ValueError, match="columns"):
        model(ids[:, 10:12], cache=cache, attention_mask=torch.ones(2, 5))


@torch.no_grad()
def test_sliding_memory_is_constant_and_global_grows_amortised(model):
    cfg = model.config
    cache = KVCache(cfg, batch_size=1, extra_slots=4)
    x = torch.randn(1, cfg.num_key_value_heads, 1, cfg.head_dim)
    sliding = [i for i in range(cfg.num_hidden_layers) if cfg.is_sliding(i)][0]
    glob = [i for i in range(cfg.num_hidden_layers) if not cfg.is_sliding(i)][0]
    reallocations = 0
    last_ptr = None
    for step in range(1000):
        cache.update(sliding, x, x)
        cache.update(glob, x, x)
        ptr = cache._slots[glob].k.data_ptr()
        reallocations += ptr != last_ptr
        last_ptr = ptr
    ring = cache._slots[sliding].k
    assert ring.shape[2] == cfg.sliding_window + 4  # window + extra slots, whatever the length
    grown = cache._slots[glob].k.shape[2]
    assert 1000 <= grown <= 1.25 * 1000 + 64  # at most a quarter spare
    assert reallocations <= 8  # geometric growth (256 * 1.25^k), not a copy per token
    per_pos = 2 * cfg.num_key_value_heads * cfg.head_dim * 4
    assert cache.nbytes() == per_pos * ((cfg.sliding_window + 4) + grown)


@torch.no_grad()
def test_cache_nbytes_constant_in_sliding_layers_of_a_model(model, ids):
    cache = model.new_cache(2)
    model(ids[:, :30], cache=cache)
    sliding_bytes = sum(s.nbytes() for i, s in enumerate(cache._slots[:model.config.num_hidden_layers])
                        if model.config.is_sliding(i))
    per_pos = 2 * 2 * model.config.num_key_value_heads * model.config.head_dim * 4
    n_sliding = sum(model.config.is_sliding(i) for i in range(model.config.num_hidden_layers))
    assert sliding_bytes == n_sliding * per_pos * (model.config.sliding_window + cache.extra_slots)


@torch.no_grad()
def test_reset_then_reuse(model, ids, full):
    cache = model.new_cache(2)
    model(ids[:, :11], cache=cache)
    cache.reset()
    assert cache.seq_len == 0
    assert (model(ids, cache=cache).logits - full).abs().max().item() < ATOL


@torch.no_grad()
def test_mtp_slot_cached_drafting_equals_uncached(model, ids):
    out = model(ids, labels=ids, return_logits=True)
    h = out.hidden_states
    ref, ref_hidden = model.mtp_forward(h[:, :-1], ids[:, 1:])
    assert torch.equal(ref, out.mtp_logits)  # the training-time MTP logits are the drafting logits
    cache = model.new_cache(2)
    model(ids, cache=cache)  # main model fills its layers
    pieces = [model.mtp_forward(h[:, :10], ids[:, 1:11], cache=cache)[0]]
    pieces += [model.mtp_forward(h[:, t:t + 1], ids[:, t + 1:t + 2], cache=cache)[0] for t in range(10, 29)]
    assert cache.mtp_seq_len == 29
    assert (torch.cat(pieces, 1) - ref).abs().max().item() < ATOL
    # rolling back the main model cuts the MTP slot to at most the new length
    cache.rollback(3)
    assert cache.seq_len == 27 and cache.mtp_seq_len == 27
    cache.rollback_mtp(2)
    assert cache.mtp_seq_len == 25
    again = model.mtp_forward(h[:, 25:29], ids[:, 26:30], cache=cache)[0]
    assert (again - ref[:, 25:29]).abs().max().item() < ATOL
    # drafting only needs the last position's logits: logits_to_keep=1 gives exactly those
    cache.rollback_mtp(4)
    last, hidden = model.mtp_forward(h[:, 25:29], ids[:, 26:30], cache=cache, logits_to_keep=1)
    assert last.shape[1] == 1 and hidden.shape[1] == 4 and (last - ref[:, 28:29]).abs().max().item() < ATOL
    with pytest.raises(ValueError, match="logits_to_keep"):
        model.mtp_forward(h[:, :1], ids[:, 1:2], logits_to_keep=-1)


def test_cache_argument_errors(model):
    with pytest.raises(ValueError, match="batch_size"):
        KVCache(model.config, batch_size=0)
    with pytest.raises(ValueError, match="extra_slots"):
        KVCache(model.config, batch_size=1, extra_slots=-1)
    no_mtp = KVCache(model.config.replace(num_nextn_predict_layers=0), batch_size=1)
    with pytest.raises(ValueError, match="MTP"):
        no_mtp.rollback_mtp(1)


@torch.no_grad()
def test_cache_in_another_dtype(model, ids, full):
    """A bf16 cache under an fp32 model: keys/values are stored rounded, attention still runs in fp32."""
    cache = model.new_cache(2, dtype=torch.bfloat16)
    out = torch.cat([model(ids[:, :16], cache=cache).logits] +
                    [model(ids[:, t:t + 1], cache=cache).logits for t in range(16, 30)], 1)
    assert out.dtype == torch.float32
    assert (out - full).abs().max().item() < 5e-2
    assert all(s.k.dtype == torch.bfloat16 for s in cache._slots[:model.config.num_hidden_layers])


@torch.no_grad()
def test_max_seq_len_reserves_once(model, ids, full):
    cache = model.new_cache(2, max_seq_len=30)
    out = torch.cat([model(ids[:, :10], cache=cache).logits] +
                    [model(ids[:, t:t + 1], cache=cache).logits for t in range(10, 30)], 1)
    assert (out - full).abs().max().item() < ATOL
    glob = [s for i, s in enumerate(cache._slots[:model.config.num_hidden_layers]) if not model.config.is_sliding(i)]
    assert all(s.k.shape[2] == 30 for s in glob)  # exactly the bound, allocated once
    assert cache.used_nbytes() <= cache.nbytes()
    per_pos = 2 * 2 * model.config.num_key_value_heads * model.config.head_dim * 4
    ring = model.config.sliding_window + cache.extra_slots
    n_sliding = sum(model.config.is_sliding(i) for i in range(model.config.num_hidden_layers))
    assert cache.used_nbytes() == per_pos * (len(glob) * 30 + n_sliding * ring)
    model(ids[:, :5], cache=cache)  # past the bound: growth resumes instead of failing
    assert cache.seq_len == 35
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_cache(1, max_seq_len=0)

"""Continuous batching without recomputation: KVCache row editing (select, shift, concat) against an uncached
forward, and Engine.join / Engine.compact: a request prefilled on its own joins a running batch, finished rows leave,
and every row's tokens equal its own generation (plain and MTP speculative, past the sliding window)."""

from __future__ import annotations

import pytest
import torch

from kexaone.engine import Engine, SamplingParams
from kexaone.model.cache import KVCache
from test_engine_models import one_thread, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


def _prefill(model, ids):
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.tensor([ids]), cache=cache)
    return cache


def test_concat_of_caches_continues_like_uncached_forward(model):
    """Two prompts of different lengths prefilled separately, stacked (the shorter is left-padded by shift), then
    one more token each: its logits equal an uncached forward over the whole row. Lengths cross the window."""
    W = model.config.sliding_window
    a, b = list(range(3, 3 + W + 5)), list(range(50, 57))
    ca, cb = _prefill(model, a), _prefill(model, b)
    cache = KVCache.concat([ca, cb])
    assert cache.batch_size == 2 and cache.seq_len == len(a) and cache.pad_len.tolist() == [0, len(a) - len(b)]
    assert ca.seq_len == len(a) and cb.seq_len == len(b)  # the inputs are not modified
    nxt = torch.tensor([[11], [12]])
    with torch.no_grad():
        got = model(nxt, cache=cache).logits[:, -1]
        for r, ids in enumerate([a, b]):
            ref = model(torch.tensor([ids + [int(nxt[r])]])).logits[0, -1]
            assert torch.allclose(got[r], ref, atol=1e-5), (r, (got[r] - ref).abs().max())


def test_select_rows_drops_common_padding_and_keeps_outputs(model):
    W = model.config.sliding_window
    a, b = list(range(3, 3 + W + 9)), list(range(50, 55))
    cache = KVCache.concat([_prefill(model, a), _prefill(model, b)])
    only_b = cache.select_rows([1])
    assert only_b.seq_len == len(b) and only_b.pad_len.tolist() == [0]  # the long row's positions are gone
    with torch.no_grad():
        got = model(torch.tensor([[7]]), cache=only_b).logits[0, -1]
        ref = model(torch.tensor([b + [7]])).logits[0, -1]
    assert torch.allclose(got, ref, atol=1e-5)


def test_shift_and_select_reject_bad_arguments(model):
    cache = KVCache.concat([_prefill(model, [1, 2, 3, 4]), _prefill(model, [5, 6])])
    with pytest.raises(ValueError, match="padding"):
        cache.shift(-1)  # row 0 has no padding
    with pytest.raises(ValueError, match="rows"):
        cache.select_rows([2])
    with pytest.raises(ValueError, match="rows"):
        cache.select_rows([])


@pytest.mark.parametrize("speculative", [None, "mtp"])
def test_join_prefills_only_the_newcomer_and_outputs_equal_alone(model, speculative):
    eng = Engine(model)
    kw = dict(temperature=0, stop_token_ids=())
    W = model.config.sliding_window
    a_p, b_p, c_p, d_p = [5, 6, 7, 8], [9, 10], list(range(40, 40 + W + 10)), [70, 71, 72]
    direct = {n: eng.generate(p, max_new_tokens=m, speculative=speculative, **kw).tokens
              for n, p, m in [("a", a_p, 40), ("b", b_p, 3), ("c", c_p, 20), ("d", d_p, 12)]}
    batch = eng.start([a_p, b_p], [SamplingParams(max_new_tokens=40, **kw), SamplingParams(max_new_tokens=3, **kw)],
                      speculative=speculative, draft_tokens=2)
    a_seq, b_seq = batch.seqs
    while not b_seq.finished:
        eng.step(batch)
    prompt_before = batch.stats.prompt_tokens
    # c is longer than the running batch: the running row is shifted right, not recomputed
    joined = eng.join(batch, [c_p], [SamplingParams(max_new_tokens=20, **kw)])
    assert len(joined.seqs) == 2 and joined.seqs[0] is a_seq
    assert joined.stats.prompt_tokens == prompt_before + len(c_p)  # only the newcomer's prompt was prefilled
    for _ in range(3):
        eng.step(joined)
    joined = eng.join(joined, [d_p], [SamplingParams(max_new_tokens=12, **kw)])  # d is shorter: d is padded
    c_seq, d_seq = joined.seqs[1], joined.seqs[2]
    while not joined.done:
        eng.step(joined)
        kept = eng.compact(joined)
        assert all(not s.finished for s in joined.seqs) or joined.done
        assert len(kept) == len(joined.seqs)
    assert (a_seq.tokens, b_seq.tokens, c_seq.tokens, d_seq.tokens) == \
        (direct["a"], direct["b"], direct["c"], direct["d"])


def test_compact_keeps_sampled_streams_of_remaining_rows(model):
    """Seeded sampling: a row's tokens do not depend on rows leaving its batch (its generator carries on)."""
    eng = Engine(model)
    p_long = SamplingParams(max_new_tokens=30, temperature=1.0, seed=3, stop_token_ids=())
    alone = eng.generate([4, 5, 6], max_new_tokens=30, temperature=1.0, seed=3, stop_token_ids=())
    batch = eng.start([[4, 5, 6], [8, 9]], [p_long, SamplingParams(max_new_tokens=2, stop_token_ids=(), seed=1)])
    while not batch.done:
        eng.step(batch)
        eng.compact(batch)
    assert batch.seqs[0].tokens == alone.tokens
    assert len(batch.seqs) == 1

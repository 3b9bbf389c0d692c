"""MTP self-speculative decoding: greedy equality with plain decoding (past the sliding window, K = 1..3, batches),
exact cache state after rollbacks, and the output distribution of speculative sampling."""

from __future__ import annotations

import math

import pytest
import torch

from kexaone.engine import Engine, SamplingParams
from kexaone.engine.sampling import BatchSampling, logits_to_probs
from kexaone.engine.speculative import verify
from test_engine_models import aligned_model, one_thread, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def aligned():
    # residual_scale 1.5: the main model often departs from the permutation the MTP head predicts, so drafts are
    # partly accepted and partly rejected.
    return aligned_model(0, residual_scale=1.5)


# ------------------------------------------------------------------------------------------------ acceptance rule
def _chi2_ok(counts: torch.Tensor, probs: torch.Tensor, n: int) -> float:
    """Pearson chi-square statistic over the categories with expected count >= 5."""
    exp = probs.double() * n
    keep = exp >= 5
    assert counts[~keep].sum() <= max(5, 0.01 * n)
    return float(((counts[keep].double() - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum())


def _chi2_limit(df: int) -> float:
    # Wilson-Hilferty 99.9% quantile of chi-square(df): a deterministic seed makes this a fixed check, the bound
    # only says how far from p the counts may be.
    z = 3.09
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_verify_emits_tokens_distributed_as_the_target():
    torch.manual_seed(0)
    N, K, V = 40_000, 2, 6
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(K + 1, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(K, V, generator=g) * 1.5, -1)
    sampling = BatchSampling.from_params([SamplingParams(seed=i) for i in range(N)])
    drafts = torch.stack([torch.multinomial(q[j], N, replacement=True, generator=g) for j in range(K)], dim=1)
    v = verify(drafts, q.expand(N, K, V), p.expand(N, K + 1, V), sampling)
    first = torch.where(v.accepted_B >= 1, drafts[:, 0], v.next_B)
    stat, df = _chi2_ok(torch.bincount(first, minlength=V), p[0], N)
    assert stat < _chi2_limit(df - 1), stat
    # the acceptance rate of the first draft is sum_x min(p, q)
    expect = float(torch.minimum(p[0], q[0]).sum())
    assert abs(float((v.accepted_B >= 1).double().mean()) - expect) < 4 * math.sqrt(expect * (1 - expect) / N)
    # the second token, where the first draft was accepted, follows p[1]
    rows = v.accepted_B >= 1
    second = torch.where(v.accepted_B[rows] >= 2, drafts[rows, 1], v.next_B[rows])
    stat, df = _chi2_ok(torch.bincount(second, minlength=V), p[1], int(rows.sum()))
    assert stat < _chi2_limit(df - 1), stat
    # the bonus token, where everything was accepted, follows p[K]
    rows = v.accepted_B == K
    stat, df = _chi2_ok(torch.bincount(v.next_B[rows], minlength=V), p[K], int(rows.sum()))
    assert stat < _chi2_limit(df - 1), stat


def test_verify_greedy_accepts_exactly_the_argmax_prefix():
    p = torch.eye(5)[[2, 4, 1]].unsqueeze(0)  # main argmaxes 2, 4, then 1
    sampling = BatchSampling.from_params([SamplingParams(temperature=0)])
    for drafts, acc, nxt in [([2, 4], 2, 1), ([2, 3], 1, 4), ([0, 4], 0, 2)]:
        q = torch.eye(5)[drafts].unsqueeze(0)
        v = verify(torch.tensor([drafts]), q, p, sampling)
        assert (int(v.accepted_B), int(v.next_B)) == (acc, nxt)


# ------------------------------------------------------------------------------------------------ greedy equality
@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_speculative_equals_plain_past_the_window(aligned, k):
    eng = Engine(aligned)
    prompt = [11, 12, 13, 14, 15, 16]
    n = 3 * aligned.config.sliding_window + 7
    plain = eng.generate(prompt, max_new_tokens=n, temperature=0)
    spec = eng.generate(prompt, max_new_tokens=n, temperature=0, speculative="mtp", draft_tokens=k)
    assert spec.tokens == plain.tokens
    s = spec.stats
    assert s.draft_tokens > 0 and 0 < s.acceptance_rate < 1  # both accepted and rejected drafts happened
    assert s.main_forwards < plain.stats.main_forwards
    assert s.tokens_per_forward == pytest.approx(n / (s.main_forwards + 1))


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_speculative_batch_equals_plain(aligned, k):
    eng = Engine(aligned)
    prompts = [[11, 12, 13], [40], list(range(100, 130)), [7, 7, 7, 7, 7]]
    n = 2 * aligned.config.sliding_window + 3
    plain = eng.generate_batch(prompts, max_new_tokens=n, temperature=0)
    spec = eng.generate_batch(prompts, max_new_tokens=n, temperature=0, speculative="mtp", draft_tokens=k)
    assert [r.tokens for r in spec] == [r.tokens for r in plain]
    assert spec[0].stats.rows == len(prompts)
    assert 1.0 <= spec[0].stats.tokens_per_forward <= k + 1  # per row, not summed over the batch
    assert plain[0].stats.tokens_per_forward == pytest.approx(1.0)


def test_greedy_speculative_with_random_mtp_head_still_exact():
    model = tiny_model(3)  # untrained MTP: drafts are nearly always rejected
    eng = Engine(model)
    plain = eng.generate([1, 2, 3], max_new_tokens=40, temperature=0)
    spec = eng.generate([1, 2, 3], max_new_tokens=40, temperature=0, speculative="mtp", draft_tokens=3)
    assert spec.tokens == plain.tokens


def test_stop_token_inside_accepted_drafts_ends_the_row(aligned):
    eng = Engine(aligned)
    free = eng.generate([11, 12, 13], max_new_tokens=30, temperature=0).tokens
    stop = free[17]
    cut = free.index(stop)
    spec = eng.generate([11, 12, 13], max_new_tokens=30, temperature=0, speculative="mtp", draft_tokens=3,
                        stop=[stop])
    assert spec.tokens == free[:cut + 1] and spec.finish_reason == "stop"


# ------------------------------------------------------------------------------------------------ cache exactness
@torch.inference_mode()
def test_cache_after_speculative_rollbacks_is_exact(aligned):
    """After many accept/reject rounds the cache must hold exactly the kept positions: its next-token logits and
    the MTP draft equal an uncached forward over the whole sequence."""
    eng = Engine(aligned)
    prompts = [[11, 12, 13, 14], [50, 51]]
    params = [SamplingParams(max_new_tokens=45, temperature=0, stop_token_ids=())] * 2
    batch = eng.start(prompts, params, speculative="mtp", draft_tokens=3)
    while not batch.done:
        eng.step(batch)
    assert batch.stats.accepted_tokens < batch.stats.draft_tokens  # rollbacks happened
    cache = batch.cache
    assert cache.mtp_seq_len == cache.seq_len == batch.positions
    for r, seq in enumerate(batch.seqs):
        # every row holds (common length - 1) generated tokens in the cache, plus its pending last token
        full = seq.prompt_ids + seq.tokens
        ref = aligned(torch.tensor([full]))
        kept = cache.seq_len - (len(max(prompts, key=len)) - len(seq.prompt_ids))
        assert kept == len(full) - 1
        ref_mtp_logits, _ = aligned.mtp_forward(ref.hidden_states[:, :-1], torch.tensor([full[1:]]))
        torch.testing.assert_close(batch.draft_q_BV[r].argmax(), ref_mtp_logits[0, -1].argmax())
    out = aligned(batch.last_B[:, None], cache=cache, logits_to_keep=1)
    for r, seq in enumerate(batch.seqs):
        ref = aligned(torch.tensor([seq.prompt_ids + seq.tokens])).logits[0, -1]
        torch.testing.assert_close(out.logits[r, -1], ref, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def test_mtp_draft_logits_equal_uncached_mtp(aligned):
    eng = Engine(aligned)
    batch = eng.start([[11, 12, 13, 14, 15]], [SamplingParams(max_new_tokens=20, temperature=0)],
                      speculative="mtp", draft_tokens=2)
    for _ in range(4):
        eng.step(batch)
    seq = batch.seqs[0]
    full = seq.prompt_ids + seq.tokens
    ref = aligned(torch.tensor([full]))
    logits, _ = aligned.mtp_forward(ref.hidden_states[:, :-1], torch.tensor([full[1:]]))
    q_ref = logits_to_probs(logits[:, -1], BatchSampling.from_params([SamplingParams(temperature=0)]))
    torch.testing.assert_close(batch.draft_q_BV, q_ref)


# ------------------------------------------------------------------------------------------------ sampling law
@torch.inference_mode()
def test_speculative_sampling_matches_plain_sampling_distribution(aligned):
    """The second generated token (the first produced by a speculative step) has the main model's distribution:
    compare empirical counts of plain and speculative sampling with the exact marginal."""
    eng = Engine(aligned)
    prompt = [11, 12, 13, 14]
    kw = dict(temperature=1.0, top_p=1.0, top_k=3)
    # exact marginal of token 2 under top-k 3 sampling
    sampling = BatchSampling.from_params([SamplingParams(**kw)])
    p1 = logits_to_probs(aligned(torch.tensor([prompt])).logits[:, -1], sampling)[0]
    marginal = torch.zeros_like(p1)
    for t1 in p1.nonzero().flatten().tolist():
        p2 = logits_to_probs(aligned(torch.tensor([prompt + [t1]])).logits[:, -1], sampling)[0]
        marginal += p1[t1] * p2
    N = 600
    counts = {}
    for mode in (None, "mtp"):
        params = [SamplingParams(max_new_tokens=2, seed=10_000 * (mode is None) + i, stop_token_ids=(), **kw)
                  for i in range(N)]
        res = eng.generate_batch([prompt] * N, params=params, speculative=mode, draft_tokens=2)
        second = torch.tensor([r.tokens[1] for r in res])
        counts[mode] = torch.bincount(second, minlength=p1.numel())
    for mode, c in counts.items():
        stat, df = _chi2_ok(c, marginal, N)
        assert stat < _chi2_limit(df - 1), (mode, stat, df)
    assert (counts["mtp"] > 0).sum() >= 2


# ------------------------------------------------------------------------------------------------ draft vocabulary
@pytest.mark.parametrize("draft_vocab", [1, 40, 200])
def test_draft_vocabulary_keeps_the_output_and_only_drafts_inside_it(aligned, draft_vocab):
    """With `draft_vocab`, drafts are ids below it (the head's first rows), greedy output stays plain decoding's,
    and the draft distribution is the MTP head's restricted to those ids."""
    plain = Engine(aligned).generate([11, 12, 13, 14], max_new_tokens=60, temperature=0)
    eng = Engine(aligned, draft_vocab=draft_vocab)
    batch = eng.start([[11, 12, 13, 14]], [SamplingParams(max_new_tokens=60, temperature=1.0, seed=3)],
                      speculative="mtp", draft_tokens=3)
    eng.step(batch)
    q = batch.draft_q_BV[0]
    assert q[draft_vocab:].sum() == 0 and int(batch.draft_B[0]) < draft_vocab
    seq = batch.seqs[0]
    full = seq.prompt_ids + seq.tokens
    ref = aligned(torch.tensor([full]))
    logits, _ = aligned.mtp_forward(ref.hidden_states[:, :-1], torch.tensor([full[1:]]))
    restricted = torch.full_like(logits[:, -1], float("-inf"))
    restricted[:, :draft_vocab] = logits[:, -1, :draft_vocab]
    sampling = BatchSampling.from_params([SamplingParams(temperature=1.0, seed=3)])
    torch.testing.assert_close(q, logits_to_probs(restricted, sampling)[0])
    for k in (1, 3):
        spec = eng.generate([11, 12, 13, 14], max_new_tokens=60, temperature=0, speculative="mtp", draft_tokens=k)
        assert spec.tokens == plain.tokens


def test_draft_vocabulary_is_checked():
    model = tiny_model(3)
    V = model.config.vocab_size
    for bad in (0, V + 1, 2.5, True):
        with pytest.raises(ValueError, match="draft_vocab"):
            Engine(model, draft_vocab=bad)
    assert Engine(model, draft_vocab=V).draft_vocab is None  # the whole vocabulary: nothing to restrict
    with pytest.raises(ValueError, match="vocab_rows"):
        model.mtp_forward(torch.zeros(1, 1, model.config.hidden_size), torch.tensor([[1]]), vocab_rows=0)

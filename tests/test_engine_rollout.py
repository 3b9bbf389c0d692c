"""Rollout-grade engine: per-token log-probs (untruncated temperature 1 and the sampled distribution) against the
scoring primitive and an independent sampler written here, the exact mode's bit equality, forced tokens appended
to live rows against a fresh prefill, and the caller's model mode left untouched."""

from __future__ import annotations

import math

import pytest
import torch

from kexaone.engine import Engine, SamplingParams
from kexaone.model.scoring import token_logprobs
from test_engine_models import aligned_model, one_thread, tiny_model

# Engine log-probs come from the cached decode forward (inference fast paths, different matmul shapes) while
# token_logprobs runs one uncached training forward: fp32 rounding differs, measured at ~1e-6 on these models.
LOGPROB_ATOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return tiny_model(3)


@pytest.fixture(scope="module")
def mtp_model():
    return aligned_model(seed=2)


PROMPTS = [[5, 9, 13, 200, 7], [11, 3, 3, 8, 120, 44, 17, 2, 90]]


def _reference(model, prompt, tokens):
    """Untruncated log-probs of `tokens` after `prompt` and the logits that predicted them, from a plain forward."""
    ids = torch.tensor([list(prompt) + list(tokens)])
    lp = token_logprobs(model, ids)[0, len(prompt):]
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
    return lp, logits


def _nucleus_logprob(logits_V: torch.Tensor, tok: int, temperature: float, top_k: int, top_p: float) -> float:
    """Log-prob of `tok` under softmax(logits / T) cut to the top_k, then to the smallest top-p prefix, renormalised
    (written with a Python loop over the sorted tokens, independently of sampling.py)."""
    p = torch.softmax(logits_V.double() / temperature, dim=-1)
    order = sorted(range(len(p)), key=lambda i: -float(p[i]))
    if top_k:
        order = order[:top_k]
    mass = sum(float(p[i]) for i in order)
    kept, acc = [], 0.0
    for i in order:
        if acc >= top_p:  # mass before this token (renormalised over the top-k set) already reached top_p
            break
        kept.append(i)
        acc += float(p[i]) / mass
    if tok not in kept:
        return -math.inf
    return math.log(float(p[tok]) / sum(float(p[i]) for i in kept))


@pytest.mark.parametrize("speculative", [None, "mtp"])
def test_logprobs_match_scoring_primitive_and_sampled_distribution(model, mtp_model, speculative):
    m = mtp_model if speculative else model
    eng = Engine(m)
    params = [SamplingParams(max_new_tokens=12, temperature=0.8, top_k=40, top_p=0.9, seed=1, stop_token_ids=()),
              SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=())]
    res = eng.generate_batch(PROMPTS, params=params, speculative=speculative, draft_tokens=3)
    for prompt, r, p in zip(PROMPTS, res, params):
        assert len(r.logprobs) == len(r.sampling_logprobs) == len(r.generated_mask) == len(r.tokens) == 12
        assert r.generated_mask == [1] * 12 and r.prompt_ids == prompt
        ref_lp, logits = _reference(m, prompt, r.tokens)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref_lp, atol=LOGPROB_ATOL, rtol=0)
        if p.temperature == 0:
            assert r.sampling_logprobs == [0.0] * 12
        else:
            want = [_nucleus_logprob(logits[j], t, p.temperature, p.top_k, p.top_p) for j, t in enumerate(r.tokens)]
            assert all(math.isfinite(w) for w in want)  # every sampled token lies inside the truncated set
            torch.testing.assert_close(torch.tensor(r.sampling_logprobs, dtype=torch.float64),
                                       torch.tensor(want, dtype=torch.float64), atol=LOGPROB_ATOL, rtol=0)
            # truncation and temperature really changed the numbers
            assert max(abs(a - b) for a, b in zip(r.sampling_logprobs, r.logprobs)) > 0.05


@pytest.mark.parametrize("speculative", [None, "mtp"])
def test_exact_logprobs_are_bit_identical_to_token_logprobs(model, mtp_model, speculative):
    m = mtp_model if speculative else model
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.8, seed=4, stop_token_ids=())
    fast = Engine(m).generate_batch(PROMPTS, params=params, speculative=speculative, draft_tokens=2)
    exact = Engine(m, exact_logprobs=True).generate_batch(PROMPTS, params=params, speculative=speculative,
                                                          draft_tokens=2)
    for prompt, f, e in zip(PROMPTS, fast, exact):
        assert e.tokens == f.tokens  # the switch changes the reported numbers, not the sampling
        ref = token_logprobs(m, torch.tensor([prompt + e.tokens]))[0, len(prompt):]
        assert torch.equal(torch.tensor(e.logprobs), ref)
        _, logits = _reference(m, prompt, e.tokens)
        want = [_nucleus_logprob(logits[j], t, 1.0, 0, 0.8) for j, t in enumerate(e.tokens)]
        torch.testing.assert_close(torch.tensor(e.sampling_logprobs, dtype=torch.float64),
                                   torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0)


def test_exact_logprobs_equal_token_logprobs_in_train_mode(model):
    """The trainer calls token_logprobs on a model in train mode: the exact numbers are the same there."""
    prompt = PROMPTS[1]
    res = Engine(model, exact_logprobs=True).generate(prompt, max_new_tokens=6, temperature=1.0, seed=0,
                                                      stop_token_ids=[])
    model.train()
    try:
        ref = token_logprobs(model, torch.tensor([prompt + res.tokens]))[0, len(prompt):]
    finally:
        model.eval()
    assert torch.equal(torch.tensor(res.logprobs), ref)


def test_engine_leaves_the_callers_model_mode_alone():
    m = tiny_model(5)
    m.train()
    m.model.layers[0].eval()  # a mixed state must come back exactly as it was
    before = {name: mod.training for name, mod in m.named_modules()}
    counts = [l.mlp.tokens_per_expert.clone() for l in m.model.layers if l.is_moe]
    switches = []
    real_eval = m.eval
    m.eval = lambda: switches.append(1) or real_eval()
    res = Engine(m, exact_logprobs=True).generate([4, 8, 15, 16, 23], max_new_tokens=5, temperature=0,
                                                  stop_token_ids=[])
    del m.eval
    assert len(switches) == 2  # once for the whole generation, once for the exact re-scoring; not per step
    assert {name: mod.training for name, mod in m.named_modules()} == before
    # eval mode inside: no routed-token counting for the bias update during generation or re-scoring
    assert all(torch.equal(c, l.mlp.tokens_per_expert) for c, l in zip(counts, [l for l in m.model.layers if l.is_moe]))
    ref = Engine(tiny_model(5)).generate([4, 8, 15, 16, 23], max_new_tokens=5, temperature=0, stop_token_ids=[])
    assert res.tokens == ref.tokens


def _run(eng, batch):
    while not batch.done:
        eng.step(batch)
    return eng.results(batch)


@pytest.mark.parametrize("speculative", [None, "mtp"])
def test_append_tokens_continues_like_a_fresh_prefill(model, mtp_model, speculative):
    m = mtp_model if speculative else model
    eng = Engine(m)
    greedy = SamplingParams(max_new_tokens=4, temperature=0, stop_token_ids=())
    batch = eng.start([PROMPTS[0]], [greedy], speculative=speculative, draft_tokens=2)
    first = _run(eng, batch)[0].tokens
    forced = [77, 78, 79]
    forward_calls = []
    hook = m.register_forward_pre_hook(lambda mod, args: forward_calls.append(args[0].shape[1]))
    try:
        batch = eng.append_tokens(batch, [forced], SamplingParams(max_new_tokens=6, temperature=0,
                                                                  stop_token_ids=()))
    finally:
        hook.remove()
    assert forward_calls == [len(forced) + 1]  # only [pending token, forced...] ran: no history re-prefill
    res = _run(eng, batch)[0]
    fresh = eng.generate(PROMPTS[0] + first + forced, max_new_tokens=6, temperature=0, stop_token_ids=[])
    assert res.tokens == first + forced + fresh.tokens
    assert res.generated_mask == [1] * 4 + [0] * 3 + [1] * 6
    assert all(math.isnan(x) for x in res.sampling_logprobs[4:7])
    ref = token_logprobs(m, torch.tensor([PROMPTS[0] + res.tokens]))[0, len(PROMPTS[0]):]
    torch.testing.assert_close(torch.tensor(res.logprobs), ref, atol=LOGPROB_ATOL, rtol=0)
    assert res.finish_reason == "length" and len(res.tokens) == 13


def test_append_tokens_rows_of_different_lengths_and_untouched_rows(model):
    eng = Engine(model)
    greedy = SamplingParams(max_new_tokens=3, temperature=0, stop_token_ids=())
    batch = eng.start(PROMPTS + [[1, 2, 3]], [greedy] * 3)
    firsts = [r.tokens for r in _run(eng, batch)]
    forced = [[60, 61], [62, 63, 64, 65], []]  # different lengths: the rows are re-prefilled together
    batch = eng.append_tokens(batch, forced)
    res = _run(eng, batch)
    for r in range(2):
        fresh = eng.generate(PROMPTS[r] + firsts[r] + forced[r], max_new_tokens=3, temperature=0, stop_token_ids=[])
        assert res[r].tokens == firsts[r] + forced[r] + fresh.tokens
        ref = token_logprobs(model, torch.tensor([PROMPTS[r] + res[r].tokens]))[0, len(PROMPTS[r]):]
        torch.testing.assert_close(torch.tensor(res[r].logprobs), ref, atol=LOGPROB_ATOL, rtol=0)
    assert res[2].tokens == firsts[2] and res[2].finish_reason == "length"  # the untouched row stays finished


def test_append_tokens_equal_lengths_batch_and_exact_mode(model):
    eng = Engine(model, exact_logprobs=True)
    batch = eng.start(PROMPTS, [SamplingParams(max_new_tokens=2, temperature=0.9, seed=s, stop_token_ids=())
                                for s in (1, 2)])
    _run(eng, batch)
    batch = eng.append_tokens(batch, [[30, 31], [32, 33]])
    res = _run(eng, batch)
    for prompt, r in zip(PROMPTS, res):
        assert len(r.tokens) == 6 and r.generated_mask == [1, 1, 0, 0, 1, 1]
        ref = token_logprobs(model, torch.tensor([prompt + r.tokens]))[0, len(prompt):]
        assert torch.equal(torch.tensor(r.logprobs), ref)


def test_append_tokens_rejects_bad_input(model):
    eng = Engine(model)
    batch = eng.start([PROMPTS[0]], [SamplingParams(max_new_tokens=1, temperature=0)])
    with pytest.raises(ValueError, match="one list of token ids per row"):
        eng.append_tokens(batch, [[1], [2]])
    with pytest.raises(ValueError, match="one list of token ids per row"):
        eng.append_tokens(batch, [7])
    with pytest.raises(ValueError, match=r"row 0 must be in \[0, "):
        eng.append_tokens(batch, [[10**9]])

"""Engine tests: sampling maths, UTF-8-safe streaming, stop handling, batched generation with left padding."""

from __future__ import annotations

import math

import pytest
import torch

from kexaone.engine import Engine, GenerationResult, SamplingParams
from kexaone.engine.detokenize import IncrementalDetokenizer, StopStringMatcher
from kexaone.engine.sampling import BatchSampling, logits_to_probs, sample_from_probs
from kexaone.engine.sequence import SequenceState
from test_engine_models import ScriptedProcessor, byte_tokenizer, one_thread, tiny_model


@pytest.fixture(autouse=True, scope="module")
def _threads():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


# ------------------------------------------------------------------------------------------------ sampling
def _bs(**kw):
    return BatchSampling.from_params([SamplingParams(**kw)])


def test_sampling_params_validation_names_the_field():
    for kw, name in [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                     ({"top_k": -2}, "top_k"), ({"max_new_tokens": -1}, "max_new_tokens"),
                     ({"temperature": float("nan")}, "temperature"), ({"stop": [""]}, "stop"),
                     ({"seed": 1.5}, "seed"), ({"stop_token_ids": [-1]}, "stop_token_ids")]:
        with pytest.raises(ValueError, match=name):
            SamplingParams(**kw)


def test_greedy_is_one_hot_at_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0]])
    p = logits_to_probs(logits, _bs(temperature=0))
    assert p.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert sample_from_probs(p, _bs(temperature=0)).tolist() == [1]


def test_temperature_top_k_top_p_exact_values():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    p = logits_to_probs(logits, _bs(temperature=1.0, top_p=1.0))
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    # top-p 0.7: 0.5 + 0.25 reaches it; the 0.15 and 0.1 tokens go
    p = logits_to_probs(logits, _bs(temperature=1.0, top_p=0.7))
    torch.testing.assert_close(p, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]))
    # top-p exactly at a boundary keeps the smallest prefix reaching it
    p = logits_to_probs(logits, _bs(temperature=1.0, top_p=0.75))
    torch.testing.assert_close(p, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]))
    p = logits_to_probs(logits, _bs(temperature=1.0, top_p=1.0, top_k=3))
    torch.testing.assert_close(p, torch.tensor([[0.5, 0.25, 0.15, 0.0]]) / 0.9)
    # temperature 2 = square root of the probabilities, renormalised
    p = logits_to_probs(logits, _bs(temperature=2.0, top_p=1.0))
    ref = torch.tensor([0.5, 0.25, 0.15, 0.1]).sqrt()
    torch.testing.assert_close(p[0], ref / ref.sum())


def test_prefix_truncation_equals_sorting_the_whole_vocabulary(monkeypatch):
    """Top-k/top-p read from the best TRUNCATION_PREFIX tokens give the full sort's distribution: peaked rows
    (the cut inside the prefix), a flat row (the cut beyond it: that row alone is sorted), and rows
    whose top-k or top-p is off, mixed in one batch. A row with top-p off keeps its whole tail in both (its
    running sum may round up to 1.0 before the tail ends)."""
    import kexaone.engine.sampling as sampling_mod

    torch.manual_seed(6)
    V = 4096
    params = [SamplingParams(top_p=0.9), SamplingParams(top_p=0.5, temperature=0.7), SamplingParams(top_k=40, top_p=1.0),
              SamplingParams(top_k=40, top_p=0.8), SamplingParams(top_p=1.0), SamplingParams(top_k=1000, top_p=0.9)]
    peaked = torch.randn(len(params), V) * 4.0
    flat = peaked.clone()
    flat[0] = torch.randn(V) * 0.01  # top-p 0.9 of a near-uniform row reaches far beyond the prefix
    calls = []
    real = sampling_mod._sorted_truncation
    monkeypatch.setattr(sampling_mod, "_sorted_truncation", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    s = BatchSampling.from_params(params)
    fast = logits_to_probs(peaked, s)
    assert calls == []  # every cut fell inside the prefix
    flat_probs = logits_to_probs(flat, s)
    assert calls == [1]  # the flat row, and only it, was sorted
    assert torch.equal(flat_probs, logits_to_probs_sorted(flat, s, monkeypatch))
    assert torch.equal(fast, logits_to_probs_sorted(peaked, s, monkeypatch))
    calls.clear()
    uniform_ish = torch.randn(2, V) * 0.01  # no row can be decided by the prefix: straight to the sort, topk skipped
    monkeypatch.setattr(sampling_mod.torch, "topk", lambda *a, **k: pytest.fail("topk ran on flat rows"))
    logits_to_probs(uniform_ish, BatchSampling.from_params([SamplingParams(top_p=0.9)] * 2))
    assert calls == [2]
    kept = (fast > 0).sum(-1).tolist()
    assert kept[2] == 40 and kept[4] == V and all(0 < n < V for i, n in enumerate(kept) if i != 4)


def logits_to_probs_sorted(logits, sampling, monkeypatch):
    import kexaone.engine.sampling as sampling_mod

    with monkeypatch.context() as m:
        m.setattr(sampling_mod, "TRUNCATION_PREFIX", logits.shape[1])  # V <= prefix: always the full sort
        return logits_to_probs(logits, sampling)


def test_mixed_batch_rows_use_their_own_parameters():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]] * 3))
    s = BatchSampling.from_params([SamplingParams(temperature=0), SamplingParams(top_p=1.0, top_k=1),
                                   SamplingParams(top_p=1.0)])
    p = logits_to_probs(logits, s)
    assert p[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert p[1].tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(p[2], torch.tensor([0.5, 0.25, 0.15, 0.1]))


def test_seeded_draws_are_reproducible_and_follow_the_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.2, 0.0]]).repeat(4000, 1)
    s1 = BatchSampling.from_params([SamplingParams(seed=i) for i in range(4000)])
    s2 = BatchSampling.from_params([SamplingParams(seed=i) for i in range(4000)])
    a, b = sample_from_probs(probs, s1), sample_from_probs(probs, s2)
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=4).double() / 4000
    assert freq[3] == 0  # a zero-probability token is never drawn
    # 4 sigma bounds of a binomial proportion
    for f, p in zip(freq[:3].tolist(), [0.5, 0.3, 0.2]):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / 4000)


# ------------------------------------------------------------------------------------------------ text streaming
def test_incremental_detokenizer_never_splits_a_character(tok):
    text = "가나 😀 ok é"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))  # byte-level: one token per byte
    det = IncrementalDetokenizer(tok)
    deltas = [det.push([i]) for i in ids] + [det.finish()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    # the 3-byte syllable arrives whole, in the delta of its last byte
    assert deltas[:3] == ["", "", "가"]


def test_incremental_detokenizer_releases_genuinely_invalid_bytes(tok):
    bad = tok.encode("a")[:0] + [tok.token_to_id(tok.id_to_token(16 + 0xE0))] + tok.encode("b")
    det = IncrementalDetokenizer(tok, max_hold=8)
    out = "".join(det.push([i]) for i in bad) + det.finish()
    assert out == tok.decode(bad)


def test_stop_string_matcher_holds_partial_matches():
    m = StopStringMatcher(["</s>", "STOP"])
    assert m.feed("hello <") == ("hello ", False)
    assert m.feed("/") == ("", False)
    assert m.feed("x") == ("</x", False)
    assert m.feed(" ST") == (" ", False)
    assert m.feed("OP and more") == ("", True)
    assert m.stopped and m.matched == "STOP"
    m = StopStringMatcher(["ab"], include_stop=True)
    assert m.feed("xxab yy") == ("xxab", True)
    m = StopStringMatcher(["abc"])
    assert m.feed("zab") == ("z", False)
    assert m.flush() == "ab"


def test_sequence_state_stop_token_and_budget(tok):
    seen = []
    s = SequenceState([1], SamplingParams(max_new_tokens=10), stop_token_ids=[7], tokenizer=tok,
                      on_text=seen.append)
    ids = tok.encode("hi!") + [7] + tok.encode("never")
    assert s.append(ids) == 4  # takes the stop token, not what follows
    assert s.finished and s.finish_reason == "stop" and s.stop_reason == 7
    assert s.text == "hi!" and "".join(seen) == "hi!"
    assert s.tokens == tok.encode("hi!") + [7]
    s = SequenceState([1], SamplingParams(max_new_tokens=2), stop_token_ids=[], tokenizer=tok)
    s.append(tok.encode("abcdef"))
    assert s.finish_reason == "length" and s.text == "ab"


def test_sequence_state_stop_string_across_tokens(tok):
    s = SequenceState([1], SamplingParams(max_new_tokens=50, stop=("END",)), stop_token_ids=[], tokenizer=tok)
    for i in tok.encode("answer: 42 EN"):
        s.append([i])
    assert not s.finished and s.text == "answer: 42 "
    s.append(tok.encode("D tail"))
    assert s.finished and s.finish_reason == "stop" and s.stop_reason == "END" and s.text == "answer: 42 "


# ------------------------------------------------------------------------------------------------ engine
@pytest.fixture(scope="module")
def model():
    return tiny_model(0)


def _reference_greedy(model, prompt, n):
    """Greedy decoding by full forwards without any cache: the ground truth for the cached engine."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1]
            nxt = int(logits.argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


def test_greedy_matches_uncached_reference_past_the_window(model):
    eng = Engine(model)
    prompt = [5, 6, 7, 8, 9]
    n = 2 * model.config.sliding_window + 5  # crosses the sliding window (16) twice
    res = eng.generate(prompt, max_new_tokens=n, temperature=0)
    assert isinstance(res, GenerationResult)
    assert res.tokens == _reference_greedy(model, prompt, n)
    assert res.finish_reason == "length" and res.text is None
    assert res.stats.generated_tokens == n and res.stats.main_forwards == n - 1


def test_batch_with_left_padding_equals_single_requests(model):
    eng = Engine(model)
    prompts = [[5, 6, 7, 8], [9], list(range(20, 45))]
    batch = eng.generate_batch(prompts, max_new_tokens=30, temperature=0)
    for p, r in zip(prompts, batch):
        assert r.tokens == eng.generate(p, max_new_tokens=30, temperature=0).tokens


def test_seeded_sampling_repeats_and_is_independent_of_the_batch(model):
    eng = Engine(model)
    a = eng.generate([3, 4, 5], max_new_tokens=12, seed=123)
    b = eng.generate([3, 4, 5], max_new_tokens=12, seed=123)
    c = eng.generate_batch([[9, 9], [3, 4, 5]], params=[SamplingParams(max_new_tokens=12, seed=7),
                                                       SamplingParams(max_new_tokens=12, seed=123)])
    assert a.tokens == b.tokens == c[1].tokens
    d = eng.generate([3, 4, 5], max_new_tokens=12, seed=124)
    assert d.tokens != a.tokens


def test_stop_token_ends_generation_and_rows_stop_independently(model):
    eng = Engine(model)
    free = eng.generate([5, 6, 7, 8], max_new_tokens=10, temperature=0).tokens
    stop_at = free[3]
    res = eng.generate([5, 6, 7, 8], max_new_tokens=10, temperature=0, stop=[stop_at])
    cut = free.index(stop_at)
    assert res.tokens == free[:cut + 1] and res.finish_reason == "stop" and res.stop_reason == stop_at
    both = eng.generate_batch([[5, 6, 7, 8], [5, 6, 7, 8]], params=[
        eng.make_params(max_new_tokens=10, temperature=0, stop=[stop_at]),
        eng.make_params(max_new_tokens=10, temperature=0)])
    assert both[0].tokens == res.tokens and both[1].tokens == free


def test_text_streaming_and_stop_strings_with_tokenizer(tok):
    model = tiny_model(1, vocab_size=tok.vocab_size)
    script = tok.encode("안녕 world! STOP here") + [tok.eos_id]
    eng = Engine(model, tok, logits_processors=[ScriptedProcessor(script)])
    deltas = []
    res = eng.generate("hi", max_new_tokens=100, temperature=0.7, on_text=deltas.append)
    assert res.text == "안녕 world! STOP here" and res.finish_reason == "stop" and res.stop_reason == tok.eos_id
    assert "".join(deltas) == res.text and all("\ufffd" not in d for d in deltas)
    res = eng.generate("hi", max_new_tokens=100, stop=["STOP"], on_text=None)
    assert res.text == "안녕 world! " and res.stop_reason == "STOP"


def test_sampled_ids_stay_inside_the_tokenizer_vocabulary(tok):
    model = tiny_model(2)  # 2048 embedding rows, 272 tokenizer ids
    eng = Engine(model, tok)
    res = eng.generate("abc", max_new_tokens=40, temperature=1.5, top_p=1.0, seed=0)
    assert max(res.tokens) < tok.vocab_size
    assert isinstance(res.text, str)


def test_invalid_requests_raise_value_errors(model, tok):
    eng = Engine(model)
    with pytest.raises(ValueError, match="prompt is empty"):
        eng.generate([], max_new_tokens=2)
    with pytest.raises(ValueError, match="token ids"):
        eng.generate([99999], max_new_tokens=2)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        eng.generate("text", max_new_tokens=2)
    with pytest.raises(ValueError, match="speculative"):
        eng.generate([1, 2], max_new_tokens=2, speculative="medusa")
    with pytest.raises(ValueError, match="draft_tokens"):
        eng.generate([1, 2], max_new_tokens=2, speculative="mtp", draft_tokens=0)
    with pytest.raises(ValueError, match="MTP"):
        Engine(tiny_model(0, num_nextn_predict_layers=0)).generate([1, 2], speculative="mtp")
    with pytest.raises(ValueError, match="context"):
        Engine(tiny_model(0, max_position_embeddings=8)).generate(list(range(1, 10)), max_new_tokens=2)
    assert eng.generate([1, 2], max_new_tokens=0).tokens == []


@pytest.mark.parametrize("speculative", [None, "mtp"])
def test_merge_admits_requests_into_a_running_batch(model, speculative):
    """Continuous batching: rows of a running batch are re-prefilled together with new requests; every row's
    output equals its own generation, and finished rows are shed."""
    eng = Engine(model)
    a_prompt, b_prompt, c_prompt = [5, 6, 7, 8], [9, 10], list(range(40, 60))
    direct = {name: eng.generate(p, max_new_tokens=n, temperature=0, stop_token_ids=()).tokens
              for name, p, n in [("a", a_prompt, 40), ("b", b_prompt, 3), ("c", c_prompt, 25)]}
    kw = dict(temperature=0, stop_token_ids=())
    batch = eng.start([a_prompt, b_prompt], [SamplingParams(max_new_tokens=40, **kw),
                                             SamplingParams(max_new_tokens=3, **kw)],
                      speculative=speculative, draft_tokens=2)
    a_seq, b_seq = batch.seqs
    while not b_seq.finished:
        eng.step(batch)
    merged = eng.merge(batch, [c_prompt], [SamplingParams(max_new_tokens=25, **kw)])
    assert len(merged.seqs) == 2 and merged.seqs[0] is a_seq  # b (finished) was shed
    while not merged.done:
        eng.step(merged)
    assert b_seq.tokens == direct["b"]
    assert a_seq.tokens == direct["a"]
    assert merged.seqs[1].tokens == direct["c"]

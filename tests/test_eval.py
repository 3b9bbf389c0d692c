"""kexaone.eval: held-out loss / bits per byte, task accuracy, decode-speed bookkeeping (exact fakes, no training)."""

from __future__ import annotations

import math

import pytest
import torch

from test_eval_fakes import ByteTokenizer, FakeEngine, Item, RandomPositionwiseLM, SuccessorLM, UniformLM
from kexaone.eval.heldout import _windows, evaluate_heldout
from kexaone.eval.speed import measure_decode_speed
from kexaone.eval.tasks import (answer_matches, choice_logprobs, choice_logprobs_batch, evaluate_task,
                                greedy_continuations)

TOK = ByteTokenizer()
V = TOK.vocab_size


# ---------------------------------------------------------------------------------------------- held-out
def test_uniform_model_gives_log_vocab_loss_and_exact_bits_per_byte():
    docs = ["hello world", "안녕하세요", "x" * 50]
    (res,) = evaluate_heldout(UniformLM(V), TOK, {("web", "mixed"): docs}, seq_len=16, batch_size=2)
    nbytes = sum(len(d.encode()) for d in docs)
    assert res.tokens == nbytes == res.bytes  # one token per byte, every byte predicted once
    assert res.loss == pytest.approx(math.log(V), rel=1e-6)
    assert res.bits_per_byte == pytest.approx(math.log2(V), rel=1e-6)
    assert res.documents == 3


def test_windows_predict_every_token_exactly_once():
    ids = list(range(1, 38))  # separator + 36 tokens
    for T in (1, 5, 36, 100):
        pieces = _windows(ids, T)
        assert all(len(p) <= T + 1 for p in pieces)
        targets = [t for p in pieces for t in p[1:]]
        assert targets == ids[1:]


def test_heldout_is_independent_of_batching_and_groups_are_kept_apart():
    torch.manual_seed(0)
    model = RandomPositionwiseLM(V)
    groups = {("facts", "en"): ["The capital of Aria is Bel.", "b" * 40], ("code", "py"): ["def f(x):\n    return x"]}
    a = evaluate_heldout(model, TOK, groups, seq_len=8, batch_size=1)
    b = evaluate_heldout(model, TOK, groups, seq_len=8, batch_size=7)
    assert [(r.domain, r.language) for r in a] == [("facts", "en"), ("code", "py")]
    for x, y in zip(a, b):
        assert x.loss == pytest.approx(y.loss, rel=1e-5)
        assert x.bits_per_byte == pytest.approx(y.bits_per_byte, rel=1e-5)
    # a near-perfect model of the data scores far below the uniform one
    (good,) = evaluate_heldout(SuccessorLM(V), TOK, {("seq", "x"): ["abcdefghijklmnop"]}, seq_len=32)
    assert good.tokens == 16 and good.loss < 0.5 * math.log(V)
    assert model.training  # evaluation restores the training flag


def test_heldout_rejects_bad_input():
    with pytest.raises(ValueError, match="no non-empty documents"):
        evaluate_heldout(UniformLM(V), TOK, {("a", "b"): ["", ""]}, seq_len=8)
    with pytest.raises(ValueError, match="seq_len"):
        evaluate_heldout(UniformLM(V), TOK, {("a", "b"): ["x"]}, seq_len=0)


# ---------------------------------------------------------------------------------------------- tasks
def test_answer_matches_requires_a_word_boundary():
    assert answer_matches(" 42\nnext", "42")
    assert answer_matches("42", " 42 ")
    assert answer_matches("Seoul.", "Seoul")
    assert not answer_matches("421", "42")
    assert not answer_matches("4", "42")
    assert not answer_matches("anything", "")


def test_greedy_continuations_follow_the_model_and_stop():
    # successor model: after "abc" comes "def..."; byte 'f' + 1 = 'g' is the stop id below
    texts = greedy_continuations(SuccessorLM(V), TOK, ["abc", "xy"], max_new_tokens=4, batch_size=2)
    assert texts == ["defg", "z{|}"]
    stop = TOK.encode("f")
    texts = greedy_continuations(SuccessorLM(V), TOK, ["abc", "uv"], max_new_tokens=6, stop_ids=stop)
    assert texts == ["de", "wxyz{|"]
    with pytest.raises(ValueError):
        greedy_continuations(SuccessorLM(V), TOK, ["a"], max_new_tokens=0)


def test_free_form_task_accuracy_and_chance():
    # successor greedy output: "uvw" -> "xyz{|", "wxy" -> "z{|}", "mno" -> "pqrs", "678" -> "9:;<", "klm" -> "nopq"
    items = [Item("uvw", "xyz"), Item("wxy", "z"), Item("mno", "pq"), Item("678", "9"), Item("klm", "nox")]
    res = evaluate_task(SuccessorLM(V), TOK, "successor", items, chance=0.1)
    # "pq" is followed by the letter "r" (no word boundary) and "nox" is wrong
    assert (res.correct, res.items) == (3, 5)
    assert res.accuracy == pytest.approx(0.6)
    assert res.chance == 0.1 and res.baseline == 0.1
    assert res.stderr == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    res.untrained_accuracy = 0.4
    assert res.baseline == 0.4
    assert res.to_dict()["baseline"] == 0.4


def test_free_form_task_with_extractor():
    items = [Item("abc", "def"), Item("xyz", "nope")]
    res = evaluate_task(SuccessorLM(V), TOK, "t", items, chance=0.0, max_new_tokens=3, extract=lambda s: s + " ")
    assert res.correct == 1 and res.accuracy == 0.5


def test_batched_choice_scoring_equals_one_question_at_a_time():
    model = RandomPositionwiseLM(V, seed=3)
    questions = [("abc", ["d", "de", "xyz!"]), ("a much longer prompt here", ["x", "yy"]), ("q", ["z"])]
    single = [choice_logprobs(model, TOK, p, c, norm="mean") for p, c in questions]
    for rows in (1, 2, 16):
        batched = choice_logprobs_batch(model, TOK, questions, norm="mean", max_rows=rows)
        for a, b in zip(batched, single):
            assert a == pytest.approx(b, rel=1e-5)
    with pytest.raises(ValueError, match="no choices"):
        choice_logprobs_batch(model, TOK, [("p", [])])


def test_mean_normalisation_removes_the_length_bias_of_summed_scores():
    # Uniform model: every token costs ln V. Summed scores prefer the shortest choice (one answer here); the mean
    # scores tie, so the pick is the first choice.
    items = [Item("q", "bbbb", ["a", "bbbb"])]
    assert evaluate_task(UniformLM(V), TOK, "t", items, choice_norm="sum").correct == 0
    scores = choice_logprobs(UniformLM(V), TOK, "q", ["a", "bbbb"], norm="mean")
    assert scores[0] == pytest.approx(scores[1])


def test_multiple_choice_picks_highest_likelihood_and_sets_chance():
    items = [Item("abc", "def", ["xyz", "def", "qqq"]), Item("lmn", "opq", ["opq", "zzz"]),
             Item("abc", "aaa", ["aaa", "def"])]
    scores = choice_logprobs(SuccessorLM(V), TOK, "abc", ["def", "dxf"])
    assert scores[0] > scores[1]
    mean = choice_logprobs(SuccessorLM(V), TOK, "abc", ["def", "dxf"], norm="mean")
    assert mean == pytest.approx([s / 3 for s in scores])
    with pytest.raises(ValueError, match="norm"):
        choice_logprobs(SuccessorLM(V), TOK, "abc", ["d"], norm="max")
    for norm in ("mean", "sum"):
        res = evaluate_task(SuccessorLM(V), TOK, "mc", items, choice_norm=norm)
        assert res.correct == 2  # the third item's gold answer is not what the model prefers
        assert "log-likelihood" in res.scoring
    assert res.chance == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)
    with pytest.raises(ValueError, match="no items"):
        evaluate_task(SuccessorLM(V), TOK, "empty", [])


# ---------------------------------------------------------------------------------------------- speed
def test_decode_speed_records_identity_acceptance_and_ratio():
    prompts = [TOK.encode("hello"), TOK.encode("abc")]
    eng = FakeEngine()
    res = measure_decode_speed(eng, prompts, new_tokens=8, repeats=2)
    assert res.identical
    assert res.acceptance_rate == pytest.approx(0.75)
    assert res.tokens_per_forward == pytest.approx(2.5)
    assert res.plain_tokens_per_s > 0 and res.mtp_tokens_per_s > 0
    assert res.speedup == pytest.approx(res.mtp_tokens_per_s / res.plain_tokens_per_s)
    assert len(res.plain_runs) == len(res.mtp_runs) == 2
    # interleaved and greedy: plain, mtp, plain, mtp after one warm-up each
    modes = [c["speculative"] for c in eng.calls]
    assert modes[:2] == [None, "mtp"] and all(c["temperature"] == 0.0 for c in eng.calls)
    assert not measure_decode_speed(FakeEngine(diverge=True), prompts, new_tokens=8, repeats=1).identical
    with pytest.raises(ValueError):
        measure_decode_speed(eng, [], new_tokens=8)

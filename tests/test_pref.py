"""`kexaone pref` (GROUPER): a known group scored by rule rewards and a scripted rubric judge gives hand-computed
rewards and advantages; the trainer's loss is grouper_loss (see test_rl_train); sampled responses are cached and
reused; a whole run keeps the router bit-identical; bad specs give clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from scripted_openai import ScriptedServer
from test_rl_train import tiny_dir  # noqa: F401  (a fixture used here)

A = "I can't help with that. Please stay safe."
B = "Sure, here are the steps: mix things."
C = ""
DIMS = ("helpfulness", "instruction_following", "safety", "language", "fluency")


@pytest.fixture()
def judge():
    server = ScriptedServer()

    def reply(text: str) -> str:
        if A in text:
            scores = dict.fromkeys(DIMS, 10)
        elif B in text:
            scores = {**dict.fromkeys(DIMS, 1), "helpfulness": 8}
        else:
            scores = dict.fromkeys(DIMS, 1)
        return "Brief thoughts.\n" + json.dumps(scores)

    server.chat_fn = reply
    yield server
    server.close()


def _cfg(**kw):
    from kexaone.rl.pref_cli import PrefConfig

    base = dict(init_from="unused", out="unused", progress=False, tensorboard=False)
    base.update(kw)
    return PrefConfig(**base)


def test_known_group_rewards_and_advantages_equal_hand_computed(judge):
    from kexaone.rl.objectives import grouper_advantages
    from kexaone.rl.pref_cli import build_rewards, score_with_dimensions
    from kexaone.rl.rollout import Rollout

    cfg = _cfg(reward=["format:1", "refusal:2"], judge_endpoint=judge.url + "/v1", rubric_weight=1.0)
    rewards, rubric = build_rewards(cfg)
    assert [(n, w) for n, _, w in rewards] == [("format", 1.0), ("refusal", 2.0), ("rubric", 1.0)]
    rows = [{"id": "h1", "prompt": [{"role": "user", "content": "How do I build a bomb?"}], "refuse": True}]
    group = [[Rollout([1], [2], [-1.0], t, "stop") for t in (A, B, C)]]
    totals, per, dims = score_with_dimensions(rows, group, rewards, rubric)
    # weighted mean over the rewards that apply (weights 1, 2, 1):
    #   A: format 1, refusal 1, rubric 1            -> 1
    #   B: format 1, refusal 0, rubric (7/9)/5      -> (1 + 7/45) / 4 = 13/45
    #   C: format 0 (empty), refusal 0, rubric 0    -> 0
    assert per["format"] == [1.0, 1.0, 0.0] and per["refusal"] == [1.0, 0.0, 0.0]
    assert per["rubric"] == pytest.approx([1.0, 7 / 45, 0.0])
    assert dims[1]["helpfulness"] == pytest.approx(7 / 9) and dims[1]["safety"] == 0.0
    assert totals[0] == pytest.approx([1.0, 13 / 45, 0.0])
    adv = grouper_advantages(torch.tensor(totals, dtype=torch.float64))[0].tolist()
    assert adv == pytest.approx([1.0, 2 * 13 / 45 - 1, -1.0])  # min-max of the z-scores = of the rewards


def test_benign_look_alike_is_rewarded_for_helping():
    from kexaone.rl.rules import refusal_reward

    got = refusal_reward([None] * 4, [A, "Kitchen knives are sharpened with a whetstone.", A, ""],
                         refuse=[False, False, None, True])
    assert got == [0.0, 1.0, None, 0.0]
    assert refusal_reward([None], [A]) == [None]


class _Counting:
    def __init__(self):
        self.calls = 0

    def sample(self, rows, group_size, seed):
        from kexaone.rl.rollout import Rollout

        self.calls += 1
        return [[Rollout([1, 2], [3, 4, 5], [-0.5, -1.5, -2.5], f"{r['id']}-{g}-{seed}", "stop")
                 for g in range(group_size)] for r in rows]


def test_samples_are_cached_and_reused(tmp_path):
    from kexaone.rl.pref_data import load_or_sample

    rows = [{"id": "a", "prompt": [{"role": "user", "content": "x"}]},
            {"id": "b", "prompt": [{"role": "user", "content": "y"}]}]
    sampler = _Counting()
    path = tmp_path / "samples.jsonl"
    first, reused = load_or_sample(path, "k1", rows, sampler, 3, seed=5)
    assert sampler.calls == 1 and not reused
    second, reused = load_or_sample(path, "k1", rows, sampler, 3, seed=5)
    assert sampler.calls == 1 and reused
    assert [[r.__dict__ for r in g] for g in first] == [[r.__dict__ for r in g] for g in second]
    assert second[1][2].text == "b-2-5" and second[0][0].logprobs == [-0.5, -1.5, -2.5]
    with pytest.raises(ValueError, match="other prompts, model or settings"):
        load_or_sample(path, "k2", rows, sampler, 3, seed=5)


def test_samples_key_changes_with_what_the_samples_depend_on(tmp_path):
    from kexaone.rl.pref_data import samples_key

    (tmp_path / "config.json").write_text("{}")
    rows = [{"prompt": [{"role": "user", "content": "x"}]}]
    k = samples_key(tmp_path, rows, 4, {"temperature": 1.0}, 0)
    assert k == samples_key(tmp_path, rows, 4, {"temperature": 1.0}, 0)
    assert k != samples_key(tmp_path, rows, 3, {"temperature": 1.0}, 0)
    assert k != samples_key(tmp_path, rows, 4, {"temperature": 0.7}, 0)
    assert k != samples_key(tmp_path, [{"prompt": [{"role": "user", "content": "z"}]}], 4, {"temperature": 1.0}, 0)


def test_pref_run_reuses_samples_and_keeps_the_router(tiny_dir, tmp_path):
    from kexaone import KExaoneForCausalLM
    from kexaone.rl.pref_cli import run_pref

    kw = dict(init_from=str(tiny_dir), n_prompts=4, group_size=2, max_new_tokens=6, eval_prompts=None, threads=1,
              lr=1e-3, prompts_per_step=2, epochs=1, batch_size=4, samples=str(tmp_path / "samples.jsonl"))
    first = run_pref(_cfg(out=str(tmp_path / "a"), **kw))
    second = run_pref(_cfg(out=str(tmp_path / "b"), **kw))
    assert not first.pref["samples_reused"] and second.pref["samples_reused"]
    assert first.steps == second.steps == 2
    a = (tmp_path / "a" / "rewards.jsonl").read_text()
    assert a == (tmp_path / "b" / "rewards.jsonl").read_text()  # same cached responses, same rewards
    before = KExaoneForCausalLM.from_pretrained(tiny_dir).state_dict()
    after = KExaoneForCausalLM.from_pretrained(tmp_path / "a" / "model").state_dict()
    for k in before:
        if k.endswith("gate.weight") or "e_score_correction_bias" in k:
            assert torch.equal(before[k], after[k]), k
    recs = [json.loads(x) for x in a.splitlines()]
    assert len(recs) == 8 and all(-1.0 <= r["advantage"] <= 1.0 for r in recs)


def test_bad_pref_specs_give_clear_errors():
    from kexaone.rl.pref_rewards import parse_pref_reward

    with pytest.raises(ValueError, match="unknown reward .polite.*refusal.*also knows: format"):
        parse_pref_reward("polite:2")
    assert parse_pref_reward("refusal:0.5")[0::2] == ("refusal", 0.5)
    with pytest.raises(ValueError, match="rubric.*needs --judge-endpoint"):
        _cfg(rubric="r.json")
    with pytest.raises(ValueError, match="judge_endpoint"):
        _cfg(judge_endpoint="localhost:8000")
    with pytest.raises(ValueError, match="group_size"):
        _cfg(group_size=1)

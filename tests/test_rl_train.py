"""`kexaone rl` (AGAPO through the shared trainer): the trainer's objectives equal kexaone.rl.objectives (values
and gradients, with accumulation and filler micro-batches), the router stays bit-identical, a looping program
does not stop training, and bad specs give clear errors.

Models are random tiny ones with a byte-level tokenizer; the rewards used for whole runs read the reply's bytes
(a random model passes none of the embedded verifiable tasks, and a group needs reward variance to train)."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from kexaone.rl.objectives import agapo_loss, grouper_loss


def letters_reward(prompts, completions, **columns):
    """Fraction of the reply's characters that are ASCII letters (varies between random replies)."""
    from kexaone.rl.completions import final_text

    out = []
    for c in completions:
        t = final_text(c)
        out.append(sum(ch.isascii() and ch.isalpha() for ch in t) / max(1, len(t)))
    return out


def _byte_tokenizer():
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.specials import SPECIAL_TOKENS

    return KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A saved tiny random model with the byte tokenizer (also imported as a fixture by the pref and endpoint
    tests; module scope, so each importing module gets its own directory)."""
    from kexaone import KExaoneConfig, KExaoneForCausalLM

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    tok = _byte_tokenizer()
    # the model's vocabulary is the tokenizer's: with padded embedding rows the engine samples from the
    # tokenizer's ids only, and the policy's mass on the padding would show as importance ratios below 1
    KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size)).save_pretrained(d)
    tok.save(d)
    return d


def _samples(n, seed=0, pad_lengths=True):
    from kexaone.rl.policy_batch import Sample

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        P = int(torch.randint(3, 7, (1,), generator=g))
        R = int(torch.randint(1, 6, (1,), generator=g))
        ids = torch.randint(10, 200, (P + R,), generator=g).tolist()
        out.append(Sample(ids[:P], ids[P:], (torch.randn(R, generator=g) - 5.5).tolist(),
                          float(torch.randn(1, generator=g))))
    return out


def _reference(model, samples, kind, is_cap=2.0):
    """The loss of kexaone.rl.objectives on all samples in one padded batch, via token_logprobs."""
    from kexaone.model.scoring import token_logprobs

    T = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    ids = torch.zeros(len(samples), T, dtype=torch.long)
    mask = torch.zeros(len(samples), T)
    old = torch.zeros(len(samples), T)
    for b, s in enumerate(samples):
        P, R = len(s.prompt_ids), len(s.response_ids)
        ids[b, :P + R] = torch.tensor(s.prompt_ids + s.response_ids)
        mask[b, P:P + R] = 1
        old[b, P:P + R] = torch.tensor(s.rollout_logprobs)
    lp = token_logprobs(model, ids, mask.bool())
    adv = torch.tensor([s.advantage for s in samples])
    return agapo_loss(lp, old, adv, mask, is_cap) if kind == "agapo" else grouper_loss(lp, adv, mask)


@pytest.mark.parametrize("kind", ["agapo", "grouper"])
def test_trainer_step_equals_rl_objectives_values_and_gradients(tmp_path, kind):
    from kexaone import KExaoneConfig, KExaoneForCausalLM
    from kexaone.rl.agapo_objective import AGAPOObjective
    from kexaone.rl.grouper_objective import GROUPERObjective
    from kexaone.rl.policy_batch import make_microbatches
    from kexaone.train.config import TrainConfig
    from kexaone.train.trainer import Trainer

    torch.manual_seed(1)
    model = KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(num_hidden_layers=2, vocab_size=256))
    model.train()
    samples = _samples(7)
    # 4 micro-batches of 2/2/2/1 responses of different lengths, the step's loss a mean over all 7
    micro = make_microbatches(samples, 4, pad_id=0)
    assert [int(b["valid"].sum()) for b in micro] == [2, 2, 2, 1]
    objective = AGAPOObjective(2.0) if kind == "agapo" else GROUPERObjective()
    cfg = TrainConfig(max_steps=1, grad_accum=4, precision="fp32", optimizer="adamw", router_frozen=True,
                      progress=False, tensorboard=False, out=str(tmp_path), grad_clip=0.0)
    ref_model = KExaoneForCausalLM(model.config)
    ref_model.load_state_dict(model.state_dict())
    ref_model.train()
    trainer = Trainer(model, _byte_tokenizer(), iter(micro), cfg, objective=objective)
    grads = {}
    trainer.optimizer.register_step_pre_hook(
        lambda opt, a, k: grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    record = trainer.train_step(iter(micro))
    ref = _reference(ref_model, samples, kind)
    ref.backward()
    assert record[kind] == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    assert grads, "no gradient reached the optimizer"
    for n, p in ref_model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-7, msg=n)
        else:
            assert p.grad is None or not p.grad.any() or "gate.weight" in n
    if kind == "agapo":
        assert 0 < record["is_truncated_frac"] < 1 and record["is_ratio_mean"] > 0 and record["entropy"] > 0


def test_filler_microbatch_gives_zero_loss_and_a_backward():
    from kexaone import KExaoneConfig, KExaoneForCausalLM
    from kexaone.rl.agapo_objective import AGAPOObjective
    from kexaone.rl.policy_batch import make_microbatches

    model = KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(num_hidden_layers=1, vocab_size=256))
    obj = AGAPOObjective()
    (batch,) = make_microbatches([], 1, pad_id=0)
    assert obj.denominators(batch) == {"agapo": 0.0}
    values, _ = obj.loss(model, batch)
    assert float(values["agapo"].detach()) == 0.0
    values["agapo"].backward()  # attached to the graph: the trainer's backward() works on it


def _rl_config(tiny_dir, out, **kw):
    from kexaone.rl.cli import RLConfig

    base = dict(init_from=str(tiny_dir), out=str(out), reward=["test_rl_train:letters_reward"], group_size=3,
                rounds=2, prompts_per_round=2, updates_per_rollout=2, max_new_tokens=6, n_prompts=10,
                eval_prompts=None, progress=False, tensorboard=False, threads=1, lr=1e-3, seed=3, batch_size=4)
    base.update(kw)
    return RLConfig(**base)


def test_rl_run_keeps_router_and_expert_biases_bit_identical(tiny_dir, tmp_path):
    from kexaone import KExaoneForCausalLM
    from kexaone.rl.cli import run_rl

    before = KExaoneForCausalLM.from_pretrained(tiny_dir).state_dict()
    res = run_rl(_rl_config(tiny_dir, tmp_path / "run"))
    after = KExaoneForCausalLM.from_pretrained(tmp_path / "run" / "model").state_dict()
    routers = [k for k in before if k.endswith("gate.weight") or "e_score_correction_bias" in k]
    assert routers and any("e_score_correction_bias" in k for k in routers)
    for k in routers:
        assert torch.equal(before[k], after[k]), k
    changed = [k for k in before if k not in routers and not torch.equal(before[k], after[k])]
    assert changed, "RL changed no weight at all"
    assert res.steps == 4
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r.get("kind") == "train"]
    for key in ("reward_mean", "reward_letters_reward_mean", "reward_letters_reward_std", "pass_rate",
                "filtered_frac", "is_ratio_mean", "is_truncated_frac", "entropy", "response_len",
                "rollout_tok_per_s"):
        assert all(key in r for r in train), key
    assert "train_tok_per_s" in train[-1]
    # first update of a round is on-policy (exact log-probs, T=1, top-p 1): every ratio is 1
    assert train[0]["is_ratio_mean"] == pytest.approx(1.0, abs=1e-5) and train[0]["is_truncated_frac"] == 0
    assert (tmp_path / "run" / "reward_curve.png").stat().st_size > 1000


def test_top_p_rollouts_record_the_truncated_distribution(tiny_dir):
    """With top-p < 1 the rollout log-probs are those of the truncated distribution: >= the policy's own."""
    from kexaone import KExaoneForCausalLM
    from kexaone.model.scoring import token_logprobs
    from kexaone.rl.prompts import rl_prompts
    from kexaone.rl.rollout import EngineRollouts

    model = KExaoneForCausalLM.from_pretrained(tiny_dir)
    tok = _byte_tokenizer()
    sampler = EngineRollouts(model, tok, top_p=0.5, max_new_tokens=5)
    (group,) = sampler.sample(rl_prompts("train", 1), 2, seed=0)
    for r in group:
        ids = torch.tensor([r.prompt_ids + r.tokens])
        pi = token_logprobs(model, ids)[0, len(r.prompt_ids):]
        rollout = torch.tensor(r.logprobs)
        assert (rollout >= pi - 1e-5).all() and (rollout > pi + 1e-3).any()


class _Scripted:
    """A sampler returning fixed texts (tokens = the tokenizer's encoding, log-prob -1 each)."""

    def __init__(self, tok, texts):
        self.tok, self.texts = tok, texts

    def sample(self, rows, group_size, seed):
        from kexaone.rl.rollout import Rollout

        out = []
        for row in rows:
            ids = self.tok.encode(row["prompt"][-1]["content"])
            out.append([Rollout(ids, self.tok.encode(t)[:40] + [self.tok.eos_id], [-1.0] * (len(self.tok.encode(t)[:40]) + 1),
                                t, "stop") for t in self.texts[:group_size]])
        return out


def test_looping_completion_gets_zero_and_training_continues(tmp_path):
    from kexaone import KExaoneConfig, KExaoneForCausalLM
    from kexaone.rl.agapo_objective import AGAPOObjective
    from kexaone.rl.rewards import code_reward
    from kexaone.rl.rounds import RLRounds
    from kexaone.train.config import TrainConfig
    from kexaone.train.trainer import Trainer

    tok = _byte_tokenizer()
    rows = [{"id": "c1", "prompt": [{"role": "user", "content": "Write f(x) returning x + 1."}],
             "tests": "assert f(1) == 2\nassert f(5) == 6"}]
    texts = ["```python\ndef f(x):\n    return x + 1\n```", "```python\nwhile True:\n    pass\n```",
             "```python\ndef f(x):\n    return x\n```"]
    rewards = [("code", functools.partial(code_reward, timeout_s=1.0), 1.0)]
    obj = AGAPOObjective()
    data = RLRounds(rows, _Scripted(tok, texts), rewards, obj, group_size=3, prompts_per_round=1,
                    updates_per_rollout=2, micro_batches=2, pad_id=0)
    model = KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(num_hidden_layers=1, vocab_size=512))
    cfg = TrainConfig(max_steps=2, grad_accum=2, precision="fp32", optimizer="adamw", router_frozen=True,
                      progress=False, tensorboard=False, out=str(tmp_path), save_every=0, eval_every=0)
    res = Trainer(model, tok, data, cfg, objective=obj).fit()
    assert res.steps == 2 and res.skipped_steps == 0 and math.isfinite(res.final_loss)
    rnd = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])
    assert rnd["reward_code_mean"] == pytest.approx(1 / 3) and rnd["pass_rate"] == pytest.approx(1 / 3)
    assert rnd["filtered_frac"] == 0.0


def test_zero_variance_rounds_are_resampled_then_filtered(tmp_path):
    from kexaone.rl.agapo_objective import AGAPOObjective
    from kexaone.rl.rounds import RLRounds

    tok = _byte_tokenizer()
    rows = [{"id": f"r{i}", "prompt": [{"role": "user", "content": f"q{i}"}], "answer": "7"} for i in range(2)]
    from kexaone.rl.rewards import math_reward

    data = RLRounds(rows, _Scripted(tok, ["3", "3"]), [("math", math_reward, 1.0)], AGAPOObjective(),
                    group_size=2, prompts_per_round=2, updates_per_rollout=1, micro_batches=2, pad_id=0,
                    max_resample=2)
    batches, metrics = data.sample_round()
    assert metrics["filtered_frac"] == 1.0 and metrics["resampled"] == 2.0
    assert all(float(b["valid"].sum()) == 0 for b in batches)  # filler only: zero loss this round


def test_bad_specs_give_clear_errors(tiny_dir, tmp_path):
    from kexaone.rl.cli import resolve_rewards
    from kexaone.rl.prompts import load_prompts

    with pytest.raises(ValueError, match="group_size"):
        _rl_config(tiny_dir, tmp_path, group_size=1)
    with pytest.raises(ValueError, match="reload-command"):
        _rl_config(tiny_dir, tmp_path, rollout_endpoint="http://127.0.0.1:9/v1", rounds=2)
    with pytest.raises(ValueError, match="temperature"):
        _rl_config(tiny_dir, tmp_path, temperature=0.0)
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        resolve_rewards(["nope:2"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_prompts("default:dev")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: 'prompt' must be"):
        load_prompts(str(bad))


def test_prompt_categories_filter_embedded_sets_and_files(tmp_path):
    import json
    from collections import Counter

    from kexaone.rl.prompts import load_prompts, rl_prompts

    rows = load_prompts("default", "rl", 20, 0, ["instruction", "safety"])
    assert Counter(r["category"] for r in rows) == {"instruction": 10, "safety": 10}  # balanced over the two
    assert [r["key"] for r in rows if r["category"] == "instruction"] == \
        [r["key"] for r in rl_prompts("train", 400) if r["category"] == "instruction"][:10]
    held = load_prompts("default:heldout", "pref", 8, 0, ["tools"])
    assert {r["category"] for r in held} == {"tools"} and len(held) == 8
    with pytest.raises(ValueError, match=r"no category \['nope'\]; choose among"):
        load_prompts("default", "rl", 8, 0, ["nope"])
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"q{i}", "category": c}) + "\n"
                         for i, c in enumerate(["math", "safety", "math"])))
    assert [r["prompt"][0]["content"] for r in load_prompts(str(f), categories=["math"])] == ["q0", "q2"]
    assert len(load_prompts(str(f))) == 3
    with pytest.raises(ValueError, match=r"no row has a category in \['code'\] \(the file has \['math', 'safety'\]\)"):
        load_prompts(str(f), categories=["code"])


def test_cli_reports_bad_input_with_exit_code_2(tiny_dir, tmp_path, capsys):
    from kexaone.cli import main

    rc = main(["rl", "--init-from", str(tiny_dir), "--out", str(tmp_path / "o"), "--group-size", "1"])
    assert rc == 2 and "group_size = 1 is invalid" in capsys.readouterr().err


def test_default_prompt_sets_are_six_languages_and_disjoint():
    from kexaone.rl.prompts import RL_CATEGORIES, pref_prompts, rl_prompts

    train, held = rl_prompts("train", 60), rl_prompts("heldout", 30)
    assert {r["category"] for r in train} == set(RL_CATEGORIES)
    assert {r["lang"] for r in train} == {"ko", "en", "es", "de", "ja", "vi"}
    assert not {r["key"] for r in train} & {r["key"] for r in held}
    ptrain, pheld = pref_prompts("train", 40), pref_prompts("heldout", 20)
    assert {r["category"] for r in ptrain} == {"chat", "safety", "instruction", "tools"}
    assert not {r["key"] for r in ptrain} & {r["key"] for r in pheld}
    # every verifiable row carries what its reward needs, and one of the default rewards applies to it
    from kexaone.rl.cli import DEFAULT_REWARDS
    from kexaone.rl.rewards import REWARDS

    for r in train:
        assert {"answer", "tests", "instruction_id_list", "refuse"} & set(r), r
    safety = [r for r in train if r["category"] == "safety"]
    assert {r["refuse"] for r in safety} == {True, False}  # harmful requests and benign look-alikes
    refusal = REWARDS["refusal"]
    assert "refusal" in DEFAULT_REWARDS
    assert refusal([None] * 2, ["I can't help with that.", "Sure: here it is."], refuse=[True, True]) == [1.0, 0.0]


def test_speedrun_stage_rl_runs_from_the_sft_output(tiny_dir, tmp_path):
    from kexaone.pipeline.budgets import get_budget
    from kexaone.pipeline.rl_stage import stage_rl
    from kexaone.pipeline.stages import StageContext

    budget = get_budget("tiny").to_dict()
    ctx = StageContext(out_dir=tmp_path, stage_dir=tmp_path / "rl",
                       outputs={"pretrain": {"model_dir": "nowhere"}, "sft": {"model_dir": str(tiny_dir)}},
                       params={"seed": 0, "budget": budget,
                               "rl": {"rounds": 1, "prompts_per_round": 2, "group_size": 2, "updates_per_rollout": 1,
                                      "max_new_tokens": 4, "n_prompts": 4, "eval_n": 2, "eval_samples": 1,
                                      "categories": ["instruction"]}},
                       log=lambda s: None)
    out = stage_rl(ctx, threads=1)
    assert out["init"] == "sft" and out["budget"]["lr"] == get_budget("tiny").rl.lr
    assert out["steps"] == 1 and (tmp_path / out["model_dir"] / "config.json").is_file()
    assert 0.0 <= out["heldout_before"]["pass_rate"] <= 1.0
    assert set(out["heldout_after"]["pass_rate_by_category"]) == {"instruction"}  # the budget's categories only
    assert out["budget"]["categories"] == ("instruction",)
    with pytest.raises(ValueError, match="unknown field"):
        stage_rl(StageContext(out_dir=tmp_path, stage_dir=tmp_path / "rl2", outputs={},
                              params={"budget": budget, "rl": {"x": 1}}))


def test_judge_reward_joins_the_verifiers():
    from scripted_openai import ScriptedServer

    from kexaone.rl.cli import resolve_rewards
    from kexaone.rl.rounds import score_groups

    server = ScriptedServer()
    server.chat_fn = lambda text: "Good answer. Rating: [[10]]" if "42" in text else "Wrong. Rating: [[1]]"
    try:
        rewards = resolve_rewards(["math:3"], judge_endpoint=server.url + "/v1", judge_weight=1.0)
        rows = [{"id": "q", "prompt": [{"role": "user", "content": "6 x 7?"}], "answer": "42"}]
        totals, per = score_groups(rows, [["42", "41"]], rewards)
    finally:
        server.close()
    assert per == {"math": [1.0, 0.0], "judge": [1.0, 0.0]}
    assert totals == [[1.0, 0.0]]  # (3 x 1 + 1 x 1) / 4 and (3 x 0 + 1 x 0) / 4

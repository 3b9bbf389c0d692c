"""`kexaone pref`: preference learning with GROUPER (group-wise SimPER, SPEC section 5), and `run_pref(cfg)`.

    kexaone pref --init-from DIR --prompts SPEC --reward NAME[:weight] ... [--rubric FILE --judge-endpoint URL
                 [--judge-model NAME --rubric-weight W]] --group-size G --out DIR

G responses per prompt are sampled once from the initial policy (kexaone's engine) and cached (`--samples`,
reused on a re-run with the same checkpoint, prompts and settings; kexaone.rl.pref_data). Each response gets the
weighted mean of the rule rewards that apply to it (`--reward`: format, language, length, refusal, tool_call,
ifeval by default; kexaone.rl.pref_rewards / rules / rewards) and, with `--judge-endpoint`, the rubric reward of
a judge over the dimensions of `--rubric` (a user-editable JSON file; kexaone.rl.judge's default rubric
otherwise), weighted by `--rubric-weight`. `grouper_advantages` turns each group's rewards into advantages in
[-1, 1], and the shared trainer minimises the GROUPER loss (-A x exp(mean response log-prob)) on them. No reference
model, no KL; the MoE router is frozen like in RL.

Writes `<out>/model` (HF layout + tokenizer), `metrics.jsonl`, `loss_curve.png`, `samples.jsonl` (unless
`--samples` points elsewhere), `rewards.jsonl` (every response's rewards and advantage) and `result.json` with the
preference score (combined reward) on held-out prompts before and after, per rule and per rubric dimension.
Exit codes: 0 finished; 130 interrupted; 1 diverged; 2 bad input.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from kexaone.rl.policy_section import PolicySection
from kexaone.train.config import (CheckpointSection, DataSection, ModelSection, ObjectiveSection, OptimSection,
                                  ParallelSection, StageConfig, _is_int, opt)

HELP = "Preference learning with GROUPER (group-wise SimPER) on rule and rubric-judge rewards."


@dataclass
class PrefSection(PolicySection):
    """preference learning (GROUPER)"""

    prompts: str = "default"
    """prompt set: default (embedded preference prompts, train split), default:heldout, or a JSONL file"""
    reward: list[str] = opt([], metavar="NAME[:WEIGHT]", append=True)
    """rule reward, repeatable: format, language, length, refusal, tool_call, ifeval, ... or package.module:function
    (default: format, language, length, refusal, tool_call, ifeval)"""
    rubric: str | None = opt(None, metavar="FILE")
    """rubric JSON file for the judge (default: kexaone.rl.judge's five-dimension rubric)"""
    judge_endpoint: str | None = opt(None, metavar="URL")
    """OpenAI-compatible API base of the rubric judge (none: rule rewards only)"""
    rubric_weight: float = 1.0
    """weight of the rubric reward against each rule reward"""
    samples: str | None = opt(None, metavar="FILE")
    """cache of the sampled responses (default <out>/samples.jsonl); reused when it matches"""
    epochs: int = 2
    """passes over the prompts"""
    prompts_per_step: int = 8
    """prompts (groups) per optimizer step"""
    temperature: float = 1.0
    """sampling temperature of the initial policy"""
    top_p: float = 0.95
    """top-p of the initial policy's samples"""
    eval_prompts: str | None = "default:heldout"
    """held-out prompts whose preference score is measured before and after (none: skip)"""
    out: str = "runs/pref"
    """output directory"""

    def _check_pref(self, need) -> None:
        for name in ("epochs", "prompts_per_step"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(isinstance(self.rubric_weight, (int, float)) and math.isfinite(self.rubric_weight)
             and self.rubric_weight >= 0, "rubric_weight", "must be a finite number >= 0")
        need(not (self.rubric and not self.judge_endpoint), "rubric", "needs --judge-endpoint (a judge scores it)")
        need(self.init_from is not None, "init_from", "is required: preference learning starts from a checkpoint")


@dataclass
class PrefConfig(PrefSection, ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection,
                 CheckpointSection, StageConfig):
    """A `kexaone pref` run."""


PREF_SECTIONS = (PrefSection, ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection,
                 CheckpointSection)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kexaone.rl.cli import SKIP
    from kexaone.train.cli_fields import add_config_arguments

    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of PrefConfig fields; flags override it")
    add_config_arguments(parser, PREF_SECTIONS, skip=SKIP, config_cls=PrefConfig)


def run(args: argparse.Namespace) -> int:
    from kexaone.train.run import run_stage_command

    return run_stage_command("pref", PrefConfig, args, run_pref)


# ---------------------------------------------------------------------------------------------- Python API
def build_rewards(cfg: PrefConfig, transport: Any = None) -> tuple[list[tuple[str, Any, float]], Any]:
    """(name, func, weight) of the rule rewards and the rubric judge (when configured); and the judge itself."""
    from kexaone.rl.judge import make_rubric_reward
    from kexaone.rl.pref_rewards import DEFAULT_PREF_REWARDS, parse_pref_reward

    rewards = [parse_pref_reward(s) for s in (cfg.reward or list(DEFAULT_PREF_REWARDS))]
    judge = None
    if cfg.judge_endpoint:
        judge = make_rubric_reward(cfg.judge_endpoint, cfg.judge_model, cfg.rubric, transport=transport)
        rewards.append(("rubric", judge, float(cfg.rubric_weight)))
    return rewards, judge


def score_with_dimensions(rows, groups, rewards, judge) -> tuple[list[list[float]], dict, list]:
    """Combined rewards [P][G], per-reward values, and per-response rubric dimension scores (or [])."""
    from kexaone.rl.rounds import score_groups

    totals, per = score_groups(rows, [[r.text for r in g] for g in groups], rewards)
    dims = list(judge.last_dimension_scores) if judge is not None else []
    return totals, per, dims


def _dimension_means(dims: list) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for d in dims:
        for k, v in (d or {}).items():
            out.setdefault(k, []).append(v)
    return {k: sum(v) / len(v) for k, v in out.items()}


def preference_score(sampler, rows, rewards, judge, samples: int, seed: int) -> dict[str, Any]:
    """Held-out preference score: the combined reward of `samples` responses per prompt, per rule and per rubric
    dimension."""
    from kexaone.rl.rounds import evaluate_rows

    out = evaluate_rows(sampler, rows, rewards, samples, seed)
    if judge is not None:
        out["rubric_dimensions"] = _dimension_means(judge.last_dimension_scores)
    return out


def run_pref(cfg: PrefConfig, callbacks=(), judge_transport: Any = None) -> Any:
    """One preference-learning run end to end (see the module docstring); returns the StageResult with `.pref`."""
    import json
    from pathlib import Path

    import torch

    from kexaone.rl.grouper_objective import GROUPERObjective
    from kexaone.rl.objectives import grouper_advantages
    from kexaone.rl.pref_data import PrefBatches, load_or_sample, samples_key
    from kexaone.rl.prompts import load_prompts
    from kexaone.rl.rollout import EngineRollouts
    from kexaone.train.run import finish_stage, stage_run
    from kexaone.train.trainer import Trainer
    from kexaone.utils.io import atomic_write_text

    rows = load_prompts(cfg.prompts, "pref", cfg.n_prompts, cfg.seed, cfg.categories)
    eval_rows = (load_prompts(cfg.eval_prompts, "pref", cfg.eval_n, cfg.seed, cfg.categories)
                 if cfg.eval_prompts else [])
    rewards, judge = build_rewards(cfg, judge_transport)
    steps = cfg.epochs * math.ceil(len(rows) / min(cfg.prompts_per_step, len(rows)))
    cfg = cfg.replace(max_steps=steps, router_frozen=True, seq_len=cfg.max_new_tokens,
                      grad_accum=math.ceil(min(cfg.prompts_per_step, len(rows)) * cfg.group_size / cfg.batch_size))
    with stage_run(cfg) as run:
        if run.dist.distributed:
            raise ValueError("kexaone pref runs on one process")
        model, tok = run.model, run.tokenizer
        sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        enable_thinking=cfg.enable_thinking)
        sampler = EngineRollouts(model, tok, batch_size=cfg.rollout_batch, **sampling)
        evaluation: dict[str, Any] = {}
        if eval_rows:
            evaluation["before"] = preference_score(sampler, eval_rows, rewards, judge, cfg.eval_samples,
                                                    seed=10**9 + cfg.seed)
        cache = Path(cfg.samples) if cfg.samples else run.out / "samples.jsonl"
        key = samples_key(cfg.init_from, rows, cfg.group_size, sampling, cfg.seed)
        groups, reused = load_or_sample(cache, key, rows, sampler, cfg.group_size, cfg.seed)
        totals, per, dims = score_with_dimensions(rows, groups, rewards, judge)
        adv = grouper_advantages(torch.tensor(totals, dtype=torch.float64)).tolist()
        lines = []
        for p, row in enumerate(rows):
            for g in range(cfg.group_size):
                i = p * cfg.group_size + g
                lines.append(json.dumps({"id": row["id"], "g": g, "reward": totals[p][g], "advantage": adv[p][g],
                                         "rewards": {k: v[i] for k, v in per.items()},
                                         "rubric": dims[i] if dims else None}, ensure_ascii=False))
        atomic_write_text(run.out / "rewards.jsonl", "\n".join(lines) + "\n")
        from kexaone.rl.rounds import reward_metrics

        objective = GROUPERObjective()
        objective.round_metrics = {**reward_metrics(totals, per),
                                   "zero_variance_frac": sum(max(t) - min(t) < 1e-8 for t in totals) / len(totals)}
        data = PrefBatches(groups, adv, prompts_per_step=cfg.prompts_per_step, micro_batches=cfg.grad_accum,
                           pad_id=tok.pad_id if tok.pad_id is not None else 0, seed=cfg.seed)
        trainer = Trainer(model, tok, data, cfg, objective=objective, dist=run.dist, out_dir=run.out,
                          callbacks=callbacks, label="pref")
        result = finish_stage(run, trainer, trainer.fit(), stage="pref")
        if eval_rows and not result.interrupted:
            evaluation["after"] = preference_score(sampler, eval_rows, rewards, judge, cfg.eval_samples,
                                                   seed=10**9 + cfg.seed)
        record = json.loads((run.out / "result.json").read_text())
        record["pref"] = {"heldout": evaluation, "samples": str(cache), "samples_reused": reused,
                          "rewards": [[n, w] for n, _, w in rewards], "train_reward": objective.round_metrics}
        atomic_write_text(run.out / "result.json", json.dumps(record, indent=1))
        if evaluation.get("after"):
            b, a = evaluation["before"], evaluation["after"]
            print(f"held-out preference score {b['reward_mean']:.3f} -> {a['reward_mean']:.3f} "
                  f"({len(eval_rows)} prompts x {cfg.eval_samples})")
        result.pref = record["pref"]
        return result

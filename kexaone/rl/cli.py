"""`kexaone rl`: reinforcement learning with verifiable rewards, optimised by AGAPO (SPEC section 5), and
`run_rl(cfg)`, the same run as a Python call (what the speedrun's `rl` stage uses).

    kexaone rl --init-from DIR --prompts SPEC --reward NAME[:weight] ... --group-size G --out DIR
               [--is-cap 2.0] [--rollout-endpoint URL [--reload-command CMD]] [--updates-per-rollout K]
               [--rounds N] [--prompts-per-round P] [--temperature 1.0 --top-p 1.0] [--max-new-tokens N]

Rounds of: G responses per prompt sampled with the current weights (kexaone's engine in process, batched; or an
OpenAI-compatible server's /v1/completions on the rendered chat prompt), rewards (`--reward`, built-ins of
kexaone.rl.rewards or `module:function` with TRL's signature, plus an LLM judge with `--judge-endpoint`; weighted
mean of those that apply), AGAPO advantages with zero-variance
groups dropped, then K optimizer steps of the AGAPO objective on those responses through the shared trainer
(off-policy after the first: the truncated importance ratio corrects for it). The MoE router is frozen (no
gradient, no bias update, no token counting) and there is no KL term.

Rollout log-probs are those of the distribution actually sampled from: with top-p < 1 (or temperature != 1) that
is the truncated, tempered distribution, whose log-probs differ from the policy's, so the importance ratio is not 1
even on-policy; the logged `is_ratio_mean` / `is_truncated_frac` show it. With `--rollout-endpoint` the server's
log-probs are the raw model's (a warning says so unless temperature = top-p = 1). After each round the new weights
are written to `<out>/policy` (HF layout + tokenizer) and `--reload-command` runs (`{model}` is replaced by that
path; for `kexaone serve`, a command that restarts the server on it); the run then waits for the endpoint. Without
a reload command an endpoint run is limited to one round (it would keep sampling stale weights).

Writes `<out>/model` (HF layout + tokenizer), `metrics.jsonl` (per step: loss, reward per verifier mean/std, pass
rate, filtered fraction, IS ratio mean/max/truncated fraction, entropy, response length, rollout and training
tokens/s), `rounds.jsonl`, `reward_curve.png`, `loss_curve.png`, and `result.json` with the held-out reward and
pass rate before and after training (`--eval-prompts`).
Exit codes: 0 finished; 130 interrupted (checkpoint saved); 1 diverged; 2 bad input.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from kexaone.rl.policy_section import PolicySection
from kexaone.train.config import (CheckpointSection, DataSection, ModelSection, ObjectiveSection, OptimSection,
                                  ParallelSection, StageConfig, _is_int, opt)

HELP = "RL with verifiable rewards (AGAPO: truncated IS, leave-one-out advantages, router frozen, no KL)."

DEFAULT_REWARDS = ("math", "code", "ifeval", "refusal")


@dataclass
class RLSection(PolicySection):
    """reinforcement learning (AGAPO)"""

    prompts: str = "default"
    """prompt set: default (embedded verifiable prompts, train split), default:heldout, or a JSONL file of rows
    with `prompt` and reward columns (kexaone.rl.prompts)"""
    n_prompts: int = 200
    reward: list[str] = opt([], metavar="NAME[:WEIGHT]", append=True)
    """reward, repeatable: math, code, ifeval, ifeval_all, language, length, tool_call, refusal or
    package.module:function (TRL signature); weighted mean of those that apply (default: math, code, ifeval,
    refusal)"""
    judge_endpoint: str | None = opt(None, metavar="URL")
    """add an LLM-as-a-judge reward (a 1-10 rating mapped to [0, 1], with the row's `reference` column when it has
    one) from this OpenAI-compatible API base"""
    judge_weight: float = 1.0
    """weight of the judge reward"""
    group_size: int = 8
    is_cap: float = 2.0
    """truncation cap of the importance ratio (the report does not publish it; verl's 2.0)"""
    loss_normalize: str = opt("sequence", choices=("sequence", "token"))
    """sequence: the report's per-response mean; token: one mean over all response tokens"""
    rounds: int = 10
    """rollout rounds"""
    prompts_per_round: int = 8
    """prompts per round (each sampled G times)"""
    updates_per_rollout: int = 2
    """optimizer steps on each round's responses (K > 1 is the off-policy case truncated IS is for)"""
    max_resample: int = 2
    """a round whose groups all have equal rewards is sampled again up to this many times"""
    top_p: float = 1.0
    """top-p of the rollouts (< 1: rollout log-probs are those of the truncated distribution)"""
    enable_thinking: bool = False
    """render prompts in reasoning mode (the reply starts with a <think> block; only the part after </think> is
    scored)"""
    rollout_endpoint: str | None = opt(None, metavar="URL")
    """sample from this OpenAI-compatible API base (e.g. http://127.0.0.1:8000/v1) instead of in process"""
    rollout_model: str | None = None
    """model name to send to the endpoint"""
    reload_command: str | None = opt(None, metavar="CMD")
    """shell command run after each round's weights are written to <out>/policy ({model} = that path), e.g. one that
    restarts `kexaone serve` on it; the run then waits for the endpoint"""
    eval_n: int = 40
    eval_samples: int = 4
    out: str = "runs/rl"
    """output directory"""
    optimizer: str = opt("adamw", choices=("muon", "adamw"))
    """optimizer (AdamW by default: RL steps are small corrections)"""
    lr: float = 1e-5
    """learning rate (constant unless --decay-fraction)"""
    weight_decay: float = 0.0
    """decoupled weight decay (0: RL has no reason to shrink weights)"""
    precision: str = opt("fp32", choices=("fp32", "bf16", "fp8"))
    """fp32 by default: the rollout engine runs the model in its own dtype, and bf16 autocast in the update would
    move every importance ratio away from 1"""

    def _check_rl(self, need) -> None:
        for name in ("rounds", "prompts_per_round", "updates_per_rollout"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        need(_is_int(self.max_resample) and self.max_resample >= 0, "max_resample", "must be an integer >= 0")
        need(isinstance(self.is_cap, (int, float)) and math.isfinite(self.is_cap) and self.is_cap > 0, "is_cap",
             "must be a finite number > 0")
        need(self.loss_normalize in ("sequence", "token"), "loss_normalize", "choose 'sequence' or 'token'")
        need(self.rollout_endpoint is None or str(self.rollout_endpoint).startswith(("http://", "https://")),
             "rollout_endpoint", "must be an http(s) URL such as http://127.0.0.1:8000/v1")
        need(isinstance(self.judge_weight, (int, float)) and math.isfinite(self.judge_weight)
             and self.judge_weight >= 0, "judge_weight", "must be a finite number >= 0")
        need(not (self.rollout_endpoint and self.rounds > 1 and not self.reload_command), "rounds",
             "> 1 with --rollout-endpoint needs --reload-command (the server would keep the first round's "
             "weights); give one, or --rounds 1")
        need(self.init_from is not None, "init_from", "is required: RL starts from a trained (SFT) checkpoint")


@dataclass
class RLConfig(RLSection, ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection,
               CheckpointSection, StageConfig):
    """A `kexaone rl` run."""


RL_SECTIONS = (RLSection, ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection,
               CheckpointSection)
# Fields the RL stage decides itself (no flag): its data are rollouts, its length is rounds x K, its router frozen.
SKIP = ("data", "eval_data", "packing", "truncate_documents", "grad_accum", "max_steps", "tokens", "router_frozen",
        "aux_loss_coef", "mtp_loss_weight", "bias_update_rate", "seq_len", "tokenizer_vocab_size", "workers",
        "expert_parallel", "parallel")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kexaone.train.cli_fields import add_config_arguments

    parser.add_argument("--config", metavar="FILE", help="JSON or TOML file of RLConfig fields; flags override it")
    add_config_arguments(parser, RL_SECTIONS, skip=SKIP, config_cls=RLConfig)


def run(args: argparse.Namespace) -> int:
    from kexaone.train.run import run_stage_command

    return run_stage_command("rl", RLConfig, args, run_rl)


# ---------------------------------------------------------------------------------------------- Python API
def resolve_rewards(specs: list[str], defaults: tuple[str, ...] = DEFAULT_REWARDS, judge_endpoint: str | None = None,
                    judge_model: str = "judge", judge_weight: float = 1.0,
                    transport: Any = None) -> list[tuple[str, Any, float]]:
    """(name, func, weight) of each `--reward` spec (the defaults when none is given), plus the LLM judge when an
    endpoint is given."""
    from kexaone.rl.rewards import parse_reward_spec

    rewards = [parse_reward_spec(s) for s in (specs or list(defaults))]
    if judge_endpoint:
        from kexaone.rl.judge import make_judge_reward

        rewards.append(("judge", make_judge_reward(judge_endpoint, judge_model, transport=transport),
                        float(judge_weight)))
    return rewards


def derived(cfg: RLConfig) -> RLConfig:
    """The run's trainer settings: rounds x K steps, enough micro-batches for a full round, router frozen."""
    rows = cfg.prompts_per_round * cfg.group_size
    return cfg.replace(max_steps=cfg.rounds * cfg.updates_per_rollout, grad_accum=math.ceil(rows / cfg.batch_size),
                       router_frozen=True, seq_len=cfg.max_new_tokens)


def run_rl(cfg: RLConfig, callbacks=()) -> Any:
    """One RL run end to end (see the module docstring); returns the scaffold's StageResult with `.rl` (the
    held-out evaluation before/after)."""
    import json

    from kexaone.rl.agapo_objective import AGAPOObjective
    from kexaone.rl.prompts import load_prompts
    from kexaone.rl.rollout import EndpointRollouts, EngineRollouts, endpoint_ready
    from kexaone.rl.rounds import RLRounds, evaluate_rows, plot_reward_curve
    from kexaone.train.run import export_model, finish_stage, stage_run
    from kexaone.train.trainer import Trainer
    from kexaone.utils.io import atomic_write_text

    cfg = derived(cfg)
    rewards = resolve_rewards(cfg.reward, judge_endpoint=cfg.judge_endpoint, judge_model=cfg.judge_model,
                              judge_weight=cfg.judge_weight)
    rows = load_prompts(cfg.prompts, "rl", cfg.n_prompts, cfg.seed, cfg.categories)
    eval_rows = (load_prompts(cfg.eval_prompts, "rl", cfg.eval_n, cfg.seed, cfg.categories)
                 if cfg.eval_prompts else [])
    with stage_run(cfg) as run:
        if run.dist.distributed:
            raise ValueError("kexaone rl runs on one process (rollouts are not sharded over ranks yet)")
        model, tok = run.model, run.tokenizer
        sampling = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                        enable_thinking=cfg.enable_thinking)
        local = EngineRollouts(model, tok, batch_size=cfg.rollout_batch, **sampling)
        evaluation: dict[str, Any] = {}
        if eval_rows:
            evaluation["before"] = evaluate_rows(local, eval_rows, rewards, cfg.eval_samples, seed=10**9 + cfg.seed)
        objective = AGAPOObjective(cfg.is_cap, cfg.loss_normalize)
        sampler: Any = local
        before_round = None
        trainer_box: dict[str, Any] = {}
        if cfg.rollout_endpoint:
            sampler = EndpointRollouts(cfg.rollout_endpoint, tok, model=cfg.rollout_model, **sampling)

            def before_round(i: int) -> None:  # push the new weights: write them, run the reload command, wait
                import shlex
                import subprocess

                path = export_model(trainer_box["trainer"], run.out / "policy", tok)
                cmd = cfg.reload_command.replace("{model}", shlex.quote(str(path)))
                done = subprocess.run(cmd, shell=True)
                if done.returncode != 0:
                    raise RuntimeError(f"--reload-command exited with {done.returncode}: {cmd}")
                endpoint_ready(cfg.rollout_endpoint)

        data = RLRounds(rows, sampler, rewards, objective, group_size=cfg.group_size,
                        prompts_per_round=cfg.prompts_per_round, updates_per_rollout=cfg.updates_per_rollout,
                        micro_batches=cfg.grad_accum, pad_id=tok.pad_id if tok.pad_id is not None else 0,
                        seed=cfg.seed, max_resample=cfg.max_resample, before_round=before_round,
                        log_path=run.out / "rounds.jsonl")
        trainer = Trainer(model, tok, data, cfg, objective=objective, dist=run.dist, out_dir=run.out,
                          callbacks=callbacks, label="rl")
        trainer_box["trainer"] = trainer
        result = finish_stage(run, trainer, trainer.fit(), stage="rl")
        if eval_rows and not result.interrupted:
            evaluation["after"] = evaluate_rows(local, eval_rows, rewards, cfg.eval_samples, seed=10**9 + cfg.seed)
        curve = plot_reward_curve(run.out / "metrics.jsonl", run.out / "reward_curve.png",
                                  title=f"kexaone rl (G={cfg.group_size}, K={cfg.updates_per_rollout})")
        record = json.loads((run.out / "result.json").read_text())
        record["rl"] = {"heldout": evaluation, "reward_curve": str(curve) if curve else None,
                        "rewards": [[n, w] for n, _, w in rewards], "rounds": data.round}
        atomic_write_text(run.out / "result.json", json.dumps(record, indent=1))
        if evaluation.get("after"):
            b, a = evaluation["before"], evaluation["after"]
            print(f"held-out pass rate {b['pass_rate']:.3f} -> {a['pass_rate']:.3f}, reward "
                  f"{b['reward_mean']:.3f} -> {a['reward_mean']:.3f} ({len(eval_rows)} prompts x {cfg.eval_samples})")
        result.rl = record["rl"]
        return result

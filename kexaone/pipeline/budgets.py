"""Speedrun budgets: how big a model, how many tokens and how much evaluation each `--budget` buys.

`tiny` is a smoke test of every stage (about three minutes on a 2-core CPU), `default` the real CPU run (README
says how long its last run took and which capabilities it lifted above their baselines), `large` a longer run of a
wider model for machines with more cores or a GPU. A budget only holds numbers; kexaone.pipeline.recipe turns them
into stages.

Every stage's spend is here: the pre-training fields of `Budget` itself, and one nested budget per later stage
(`extend`, `sft`, `rl`, `pref`) plus `stage_eval`, what the evaluate stage spends on each post-training model. A
run stores its budget as a plain dict in stages.json; `Budget.from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExtendBudget:
    """The context-extension stage (kexaone.train.extend, the `preset_budget` preset; None fields: the preset's)."""

    factor: int = 4
    """Target context = factor x the pre-training seq_len (one extension stage)."""
    preset_budget: str = "cpu-small"
    rounds_per_stage: int | None = None
    steps_per_round: int | None = None
    long_docs: int | None = None


@dataclass(frozen=True)
class SFTBudget:
    """The SFT stage (kexaone.train.sft on the embedded default set)."""

    steps: int = 150
    """Optimizer steps of SFT."""
    seq_len: int = 512
    """512 tokens hold the tool-use conversations (at 256 a small-vocabulary tokenizer skips most of them)."""
    batch_size: int = 8
    examples: int = 4000
    """Training conversations of the default set."""
    lr_scale: float = 0.5
    """SFT peak learning rates as a fraction of pre-training's (both the Muon and the AdamW groups)."""
    rehearsal_share: float = 0.25
    """Rows of pre-training text (the mixture pre-training ended on, its held-out documents excluded) mixed into
    SFT so it keeps the base model's language modelling; 0 turns rehearsal off."""
    eval_limit: int | None = None
    """sft-chat items evaluated per model (the first ones, each prompt once per mode); None: all 160."""
    max_new_tokens: int | None = None
    """Reply length cap in the evaluation (None: the chat family's default, 160)."""


@dataclass(frozen=True)
class RLBudget:
    """The RL stage (AGAPO with verifiable rewards, kexaone.rl.cli)."""

    rounds: int = 12
    prompts_per_round: int = 8
    group_size: int = 8
    updates_per_rollout: int = 2
    max_new_tokens: int = 48
    n_prompts: int = 200
    eval_n: int = 40
    eval_samples: int = 4
    lr: float = 1e-5
    rewards: tuple[str, ...] = ("math", "code", "ifeval", "refusal")
    categories: tuple[str, ...] = ()
    """Prompt categories RL trains and is scored on (kexaone.rl.prompts.RL_CATEGORIES); empty: all. A category the
    starting model never passes gives only equal-reward groups, which AGAPO filters out: rollouts spent there buy
    no gradient."""


@dataclass(frozen=True)
class PrefBudget:
    """The preference stage (GROUPER, kexaone.rl.pref_cli)."""

    n_prompts: int = 64
    group_size: int = 4
    epochs: int = 2
    prompts_per_step: int = 8
    max_new_tokens: int = 48
    eval_n: int = 24
    eval_samples: int = 2
    lr: float = 1e-6
    rewards: tuple[str, ...] = ("format", "language", "length", "refusal", "tool_call", "ifeval")


@dataclass(frozen=True)
class StageEvalBudget:
    """What the evaluate stage spends per model beyond the base model's held-out text and tasks."""

    task_items: int | None = None
    """Items per synthetic task for the post-training models (extended, SFT, RL, preference); None: the budget's
    task_items, as for the base model. Held-out bits per byte uses the same documents for every model."""
    safety_items: int = 40
    """KGC-Safety items per model (an even spread, about a quarter benign look-alikes), judged by the refusal rule."""
    safety_max_tokens: int = 96
    """Reply length cap of a safety answer (the refusal rule reads the opening of the reply)."""
    tool_tasks: int = 12
    """Registry-office tool tasks per model (one greedy episode each; pass rate = pass^1)."""
    tool_max_steps: int = 6
    """Agent turns per tool episode (the longest gold solution, a bulk transfer, takes up to 5 calls)."""
    tool_reply_tokens: int = 160
    """Tokens per agent turn in a tool episode."""


_NESTED = {"extend": ExtendBudget, "sft": SFTBudget, "rl": RLBudget, "pref": PrefBudget,
           "stage_eval": StageEvalBudget}


@dataclass(frozen=True)
class Budget:
    name: str
    description: str
    preset: str
    """KExaoneConfig preset the model starts from (vocab_size is then set to the trained tokenizer's)."""
    corpus_size: str
    """Size of the embedded synthetic corpus (kexaone.data.synthetic.CORPUS_SIZES): tiny, default or large."""
    tokenizer_vocab_size: int
    """Vocabulary size of the SuperBPE tokenizer and of the plain-BPE baseline it is compared with."""
    tokenizer_train_bytes: int
    """UTF-8 bytes of text the tokenizers are trained on (a deterministic prefix of the mixture)."""
    seq_len: int
    batch_size: int
    train_tokens: int
    """Tokens seen by pre-training over the whole three-stage curriculum."""
    copy_warmup_steps: int = 0
    """Pre-training steps before the three stages on fresh retrieval-dense documents alone
    (TrainConfig.copy_warmup_steps), in addition to the curriculum's steps; 0: none."""
    lr: float = 3e-3
    """Peak learning rate (the K-EXAONE recipe's 3e-4 is for a 236B model; small models take more)."""
    adamw_lr: float | None = None
    """Peak learning rate of the AdamW groups (embeddings, output head, router, norms); None: `lr`. See
    TrainConfig.adamw_lr: a small model learns to copy from context far sooner with these well above `lr`."""
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.3
    precision: str = "fp32"
    bias_update_rate: float | None = None
    """Expert-bias update step (None: the model config's K-EXAONE 1e-4). K-EXAONE's 1e-4 is tuned for runs of
    hundreds of thousands of steps; over a few hundred steps it moves a bias by at most a few hundredths, less than
    the spread of the router's sigmoid scores, so short budgets use DeepSeek-V3's 1e-3."""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """KExaoneConfig fields changed from the preset (for example a wider model for `large`)."""
    heldout_docs: int = 40
    """Held-out documents per (domain, language) group for loss and bits per byte."""
    task_items: int = 100
    """Held-out items per synthetic task."""
    answer_tokens_cap: int | None = None
    """Upper bound on the tokens generated per free-form task answer (None: each task's own limit)."""
    generation_prompts: int = 3
    """Prompts sampled in each of reasoning and non-reasoning mode."""
    generation_max_new_tokens: int = 96
    speed_new_tokens: int = 128
    """Tokens generated per decode-speed measurement."""
    speed_repeats: int = 3
    """Interleaved repeats of plain vs speculative decoding (the machine is noisy)."""
    speed_draft_counts: tuple[int, ...] = (1, 2, 3)
    """MTP draft lengths measured against plain decoding (each side by side with it)."""
    speed_draft_vocab: int | None = 2048
    """MTP drafts score only token ids [0, N) (`Engine(draft_vocab=N)`; None or N >= the vocabulary: all). On the
    default run's model, 2 drafts went from 1.38x to 1.57x plain with N = 2048 at equal acceptance
    (benchmarks/bench_mtp_speedrun.py)."""
    checkpoint_every: int = 100
    """Optimizer steps between trainer checkpoints (what a killed pre-training resumes from)."""
    probe_every: int = 50
    """Optimizer steps between scores of the induction / key-value recall probes (kexaone.eval.induction), whose
    curves show when in-context copying forms; 0 turns them off."""
    probe_rows: int = 32
    """Rows of each probe set (a probe costs about two forward passes over rows x ~70 tokens)."""
    extend: ExtendBudget = field(default_factory=ExtendBudget)
    sft: SFTBudget = field(default_factory=SFTBudget)
    rl: RLBudget = field(default_factory=RLBudget)
    pref: PrefBudget = field(default_factory=PrefBudget)
    stage_eval: StageEvalBudget = field(default_factory=StageEvalBudget)

    @property
    def train_steps(self) -> int:
        """Steps of the three-stage curriculum (the copy warm-up's come on top)."""
        return max(1, self.train_tokens // (self.seq_len * self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Budget":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Budget":
        """A Budget from `to_dict()` output after a JSON round trip (nested stage budgets are dicts there and
        tuples came back as lists). Unknown fields are an error that names them."""
        return _from_dict(cls, d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be given as a dict, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; valid: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        if cls is Budget and k in _NESTED and not isinstance(v, _NESTED[k]):
            v = _from_dict(_NESTED[k], v)
        elif isinstance(v, list):  # tuples (draft counts, reward names) come back from JSON as lists
            v = tuple(v)
        kw[k] = v
    return cls(**kw)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny", description="smoke test: every stage on the `tiny` preset, about 3 minutes on 2 CPU cores",
        preset="tiny", corpus_size="tiny", tokenizer_vocab_size=1024, tokenizer_train_bytes=300_000,
        seq_len=128, batch_size=8, train_tokens=128 * 8 * 30, lr=3e-3, bias_update_rate=1e-3, heldout_docs=3,
        task_items=8,
        answer_tokens_cap=24, generation_prompts=1, generation_max_new_tokens=24, speed_new_tokens=24,
        speed_repeats=1, speed_draft_counts=(2,), speed_draft_vocab=512, checkpoint_every=10, probe_every=10,
        probe_rows=8,
        extend=ExtendBudget(rounds_per_stage=2, steps_per_round=4, long_docs=8),
        sft=SFTBudget(steps=8, seq_len=512, batch_size=2, examples=200, eval_limit=16, max_new_tokens=48),
        rl=RLBudget(rounds=2, prompts_per_round=2, group_size=2, updates_per_rollout=1, max_new_tokens=16,
                    n_prompts=8, eval_n=4, eval_samples=1),
        pref=PrefBudget(n_prompts=8, group_size=2, epochs=1, prompts_per_step=4, max_new_tokens=16, eval_n=4,
                        eval_samples=1),
        stage_eval=StageEvalBudget(task_items=4, safety_items=8, safety_max_tokens=24, tool_tasks=2,
                                   tool_max_steps=3, tool_reply_tokens=32),
    ),
    "default": Budget(
        name="default",
        description="the CPU speedrun: the `small` preset, every stage within 60 minutes on 2 CPU cores",
        preset="small", corpus_size="default", tokenizer_vocab_size=8192, tokenizer_train_bytes=2_000_000,
        # 640 steps (measured: 24 min of pre-training here). The induction study (benchmarks/results/
        # induction_study.md) saw copying form only with loss on answer tokens alone, within 475-850 steps on a
        # 4-layer model; with loss on every token it did not form in 1,200 steps, so doubling the steps alone is not
        # expected to help and would cost another 24 minutes of the hour.
        seq_len=256, batch_size=8, train_tokens=640 * 2048, lr=3e-3, adamw_lr=3e-2, bias_update_rate=1e-3,
        heldout_docs=8,
        task_items=100, generation_prompts=3, generation_max_new_tokens=96, speed_new_tokens=128, speed_repeats=3,
        checkpoint_every=100,
        # Post-training, measured on this run's base model (2026-12-02, 2 cores): extend 3.2 min, SFT 7.8 min (of
        # which 4.7 min is the base-vs-SFT sft-chat evaluation), RL 2.7 min and preference 1.4 min at the sizes
        # first wired in, evaluate 5.4 min for six models. RL and preference LRs come from side-by-side runs on the
        # same SFT model: RL AdamW 1e-5 / 1e-4 / 3e-4 moved the held-out pass rate +1.2 / +2.5 / +3.1 points,
        # preference 1e-6 / 1e-5 / 5e-5 the held-out score +0.005 / +0.007 / +0.038; the held-out sets are enlarged
        # because a 40 x 4 pass rate moves by about 2 points between two evaluations of the same model.
        extend=ExtendBudget(), sft=SFTBudget(steps=150, seq_len=512, batch_size=8, examples=4000),
        # RL on the categories this model passes sometimes (on the same SFT model, 2026-12-03: instruction 0.13,
        # safety 0.68; arithmetic, code, copy and recall about 0, whose groups AGAPO filters): held-out 0.193 ->
        # 0.263 over 57 prompts x 4, instruction 0.125 -> 0.235.
        rl=RLBudget(rounds=16, prompts_per_round=12, lr=2e-4, eval_n=100, eval_samples=4,
                    categories=("instruction", "safety")),
        pref=PrefBudget(n_prompts=96, lr=5e-5, eval_n=48, eval_samples=2),
        stage_eval=StageEvalBudget(task_items=50, safety_items=40, tool_tasks=12),
    ),
    "large": Budget(
        name="large", description="a wider model (H 512, 12 layers) on 200M tokens, for many cores or a GPU",
        preset="small", corpus_size="large", tokenizer_vocab_size=16_384, tokenizer_train_bytes=40_000_000,
        seq_len=1024, batch_size=32, train_tokens=200_000_000, lr=2e-3, precision="bf16",
        config_overrides={"hidden_size": 512, "num_hidden_layers": 12, "intermediate_size": 1536,
                          "moe_intermediate_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2,
                          "head_dim": 64},
        heldout_docs=100, task_items=300, generation_prompts=5, generation_max_new_tokens=160,
        speed_new_tokens=256, speed_repeats=5, checkpoint_every=500,
        extend=ExtendBudget(), sft=SFTBudget(steps=1000, seq_len=1024, batch_size=32, examples=20000),
        rl=RLBudget(), pref=PrefBudget(),
        stage_eval=StageEvalBudget(task_items=None, safety_items=200, safety_max_tokens=256, tool_tasks=50,
                                   tool_max_steps=10, tool_reply_tokens=512),
    ),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose one of {sorted(BUDGETS)}")
    return BUDGETS[name]

"""Speedrun budgets: how big a model, how many tokens and how much evaluation each `--budget` buys.

`tiny` is a smoke test (about two minutes on a 2-core CPU), `default` the real CPU run (under 30 minutes on a
2-core CPU; README says which capabilities its last run lifted above their baselines),
`large` a longer run of a wider model for machines with more cores or a GPU. A budget only holds numbers;
kexaone.pipeline.recipe turns them into stages.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    checkpoint_every: int = 100
    """Optimizer steps between trainer checkpoints (what a killed pre-training resumes from)."""
    probe_every: int = 50
    """Optimizer steps between scores of the induction / key-value recall probes (kexaone.eval.induction), whose
    curves show when in-context copying forms; 0 turns them off."""
    probe_rows: int = 32
    """Rows of each probe set (a probe costs about two forward passes over rows x ~70 tokens)."""

    @property
    def train_steps(self) -> int:
        return max(1, self.train_tokens // (self.seq_len * self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Budget":
        return dataclasses.replace(self, **changes)


BUDGETS: dict[str, Budget] = {
    "tiny": Budget(
        name="tiny", description="smoke test: every stage on the `tiny` preset, about 2 minutes on 2 CPU cores",
        preset="tiny", corpus_size="tiny", tokenizer_vocab_size=1024, tokenizer_train_bytes=300_000,
        seq_len=128, batch_size=8, train_tokens=128 * 8 * 30, lr=3e-3, bias_update_rate=1e-3, heldout_docs=3,
        task_items=8,
        answer_tokens_cap=24, generation_prompts=1, generation_max_new_tokens=24, speed_new_tokens=24,
        speed_repeats=1, speed_draft_counts=(2,), checkpoint_every=10, probe_every=10, probe_rows=8,
    ),
    "default": Budget(
        name="default", description="the CPU speedrun: the `small` preset, under 30 minutes on 2 CPU cores",
        preset="small", corpus_size="default", tokenizer_vocab_size=8192, tokenizer_train_bytes=2_000_000,
        # 640 steps (measured: 24 min of pre-training here). The induction study (benchmarks/results/
        # induction_study.md) saw copying form only with loss on answer tokens alone, within 475-850 steps on a
        # 4-layer model; with loss on every token it did not form in 1,200 steps, so doubling the steps alone is not
        # expected to help and would cost another 24 minutes of the hour.
        seq_len=256, batch_size=8, train_tokens=640 * 2048, lr=3e-3, adamw_lr=3e-2, bias_update_rate=1e-3,
        heldout_docs=8,
        task_items=100, generation_prompts=3, generation_max_new_tokens=96, speed_new_tokens=128, speed_repeats=3,
        checkpoint_every=100,
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
    ),
}


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; choose one of {sorted(BUDGETS)}")
    return BUDGETS[name]

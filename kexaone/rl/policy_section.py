"""The flags `kexaone rl` and `kexaone pref` share: prompts, the judge's model name, group size, sampling,
held-out evaluation and the update's optimizer settings, with their checks.

Both stages' sections subclass `PolicySection` and redeclare only what differs (a default, or a docstring that
says more for that stage); `kexaone.train.cli_fields.field_docs` reads docstrings through the base classes, so a
bare redeclaration such as `n_prompts: int = 200` keeps the help written here.

Not here: the stage-specific flags and checks (kexaone.rl.cli, kexaone.rl.pref_cli).
"""

from __future__ import annotations

from dataclasses import dataclass

from kexaone.train.config import _is_int, opt


@dataclass
class PolicySection:
    """policy optimisation (shared by rl and pref)"""

    prompts: str = "default"
    """prompt set: default (the stage's embedded prompts, train split), default:heldout, or a JSONL file of rows
    with `prompt` (kexaone.rl.prompts)"""
    n_prompts: int = 64
    """prompts taken from an embedded set"""
    categories: list[str] = opt([], metavar="NAME", append=True)
    """keep only prompts of this category, repeatable, for training and the held-out score (embedded sets: balanced
    over the given ones; JSONL files: rows whose `category` column is one of them); default: every category"""
    judge_endpoint: str | None = opt(None, metavar="URL")
    """OpenAI-compatible API base of an LLM judge (none: no judge reward)"""
    judge_model: str = "judge"
    """model name sent to the judge endpoint"""
    group_size: int = 4
    """responses sampled per prompt (G)"""
    temperature: float = 1.0
    """sampling temperature"""
    top_p: float = 1.0
    """top-p of the samples"""
    max_new_tokens: int = 64
    """longest response"""
    enable_thinking: bool = False
    """render prompts in reasoning mode"""
    rollout_batch: int = 64
    """responses decoded together"""
    eval_prompts: str | None = "default:heldout"
    """held-out prompts scored before and after training (none: skip)"""
    eval_n: int = 24
    """held-out prompts taken from an embedded set"""
    eval_samples: int = 2
    """responses per held-out prompt"""
    batch_size: int = 16
    """responses per micro-batch"""
    optimizer: str = opt("adamw", choices=("muon", "adamw"))
    """optimizer"""
    lr: float = 1e-6
    """learning rate"""
    weight_decay: float = 0.0
    """decoupled weight decay"""
    warmup_steps: int | None = 0
    """warmup steps"""
    decay_fraction: float = 0.0
    """fraction of the run spent decaying the LR"""
    precision: str = opt("fp32", choices=("fp32", "bf16", "fp8"))
    """precision of the update"""
    save_every: int = 0
    """checkpoint every N steps (0: at the end)"""
    eval_every: int = 0
    """(no held-out loss: the held-out score is measured before and after)"""
    eval_batches: int = 0
    """(unused)"""

    def _check_policy(self, need) -> None:
        need(isinstance(self.categories, (list, tuple)) and all(isinstance(c, str) and c for c in self.categories),
             "categories", "must be a list of category names")
        need(_is_int(self.group_size) and self.group_size >= 2, "group_size", "must be an integer >= 2")
        for name in ("n_prompts", "max_new_tokens", "rollout_batch", "eval_n", "eval_samples"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "must be an integer >= 1")
        # a stage trains on samples of its own policy: temperature 0 would leave no distribution to sample
        need(isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 2, "temperature",
             "must be in (0, 2] (the stage samples from the policy)")
        need(isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.judge_endpoint is None or str(self.judge_endpoint).startswith(("http://", "https://")),
             "judge_endpoint", "must be an http(s) URL such as http://127.0.0.1:8001/v1")

"""Warmup-Stable-Decay (WSD) learning-rate schedule (SPEC section 3: K-EXAONE uses WSD with max LR 3e-4).

Three phases over `total_steps` optimizer steps (step indices start at 0):
- warmup  (steps 0 .. warmup_steps-1): lr = max_lr * (step + 1) / warmup_steps, so the first step already
  learns and step warmup_steps-1 reaches max_lr;
- stable  (until the decay starts): lr = max_lr;
- decay   (the last round(decay_fraction * total_steps) steps, from step D = total_steps - decay_steps):
  with p = (step - D) / decay_steps in [0, 1), lr = min_lr + (max_lr - min_lr) * s(p), where s(p) = 1 - p
  ("linear") or 1 - sqrt(p) ("1-sqrt"); min_lr = min_lr_ratio * max_lr is reached at step total_steps, so the
  last update still moves; steps past the end stay at min_lr.

The schedule is a pure function of the step, so resuming needs nothing but the step counter. It does not know about
optimizers; `make_scheduler` wraps it in a `torch.optim.lr_scheduler.LambdaLR`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

DECAY_SHAPES = ("linear", "1-sqrt")


@dataclass
class WSDSchedule:
    """Warmup-Stable-Decay. Calling the object with a step gives the LR multiplier lr_at(step) / max_lr, which is
    what `LambdaLR` needs; its fields are plain numbers and a string, so a LambdaLR state_dict that saves them
    still loads with torch.load(weights_only=True)."""

    max_lr: float = 3e-4
    total_steps: int = 1000
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    decay_shape: str = "linear"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not (self.max_lr > 0 and math.isfinite(self.max_lr)):
            raise ValueError(f"max_lr must be a positive finite number, got {self.max_lr}")
        if int(self.total_steps) != self.total_steps or self.total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {self.total_steps}")
        if int(self.warmup_steps) != self.warmup_steps or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction}")
        if self.decay_shape not in DECAY_SHAPES:
            raise ValueError(f"decay_shape must be one of {DECAY_SHAPES}, got {self.decay_shape!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        self.total_steps = int(self.total_steps)
        self.warmup_steps = int(self.warmup_steps)
        if self.warmup_steps > self.decay_start:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} runs into the decay phase, which starts at step {self.decay_start} "
                f"(total_steps={self.total_steps}, decay_fraction={self.decay_fraction}); use at most "
                f"{self.decay_start} warmup steps or a smaller decay_fraction")

    @property
    def decay_steps(self) -> int:
        return int(round(self.decay_fraction * self.total_steps))

    @property
    def decay_start(self) -> int:
        return self.total_steps - self.decay_steps

    def factor(self, step: int) -> float:
        """lr_at(step) / max_lr, in [min_lr_ratio, 1]."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if step < self.decay_start or self.decay_steps == 0:
            return 1.0
        p = min(1.0, (step - self.decay_start) / self.decay_steps)
        shape = 1.0 - p if self.decay_shape == "linear" else 1.0 - math.sqrt(p)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def lr_at(self, step: int) -> float:
        """Learning rate for the optimizer step with index `step` (0-based)."""
        return self.max_lr * self.factor(step)

    def phase(self, step: int) -> str:
        """"warmup", "stable" or "decay" (for logging)."""
        if step < self.warmup_steps:
            return "warmup"
        return "stable" if step < self.decay_start or self.decay_steps == 0 else "decay"

    def __call__(self, step: int) -> float:
        return self.factor(step)

    def to_dict(self) -> dict:
        return asdict(self)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: WSDSchedule,
                   last_step: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that multiplies each param group's base LR (its `initial_lr`, else its `lr` at construction) by
    `schedule.factor(step)`. A group whose LR equals `schedule.max_lr` therefore follows `lr_at` exactly; a group
    with another LR (for example AdamW groups with their own LR) follows the same shape.

    `scheduler.step()` after every optimizer step; `last_step` >= 0 resumes at that step without a state_dict
    (the schedule is a pure function of the step)."""
    if not isinstance(schedule, WSDSchedule):
        raise ValueError(f"schedule must be a WSDSchedule, got {type(schedule).__name__}")
    if last_step >= 0:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule, last_epoch=last_step)

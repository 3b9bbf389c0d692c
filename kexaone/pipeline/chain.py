"""Which model each speedrun stage starts from: the newest model directory among earlier stages' outputs.

The model-producing stages, oldest first, are MODEL_STAGES; each writes `model_dir` into its outputs. A stage starts
from the newest of those that ran before it (extend from pretrain, sft from extend, rl from sft, pref from rl, and
generate from whichever is last), so a run that skips a stage still chains. Stage functions share this helper
instead of each naming its predecessor.
"""

from __future__ import annotations

from typing import Any

from kexaone.pipeline.stages import StageContext

MODEL_STAGES = ("pretrain", "extend", "sft", "rl", "pref")
"""Stages that write a model, in the order the speedrun runs them."""

LABELS = {"pretrain": "base", "extend": "extended", "sft": "SFT", "rl": "RL", "pref": "preference"}
"""What the report calls each stage's model."""


def _earlier(before: str | None) -> tuple[str, ...]:
    return MODEL_STAGES if before not in MODEL_STAGES else MODEL_STAGES[:MODEL_STAGES.index(before)]


def models_run(outputs: dict[str, dict[str, Any]], before: str | None = None) -> list[str]:
    """Model stages (oldest first) whose outputs hold a model directory; with `before`, only those ahead of it."""
    return [n for n in _earlier(before) if (outputs.get(n) or {}).get("model_dir")]


def newest_model(ctx: StageContext, before: str | None = None) -> tuple[str, str]:
    """(stage name, model directory) of the newest model among the earlier stages' outputs (all model stages when
    `before` is None or not a model stage). Raises ValueError when none has run."""
    found = models_run(ctx.outputs, before)
    if not found:
        raise ValueError(f"no model to start from: none of the stages {list(_earlier(before))} has run")
    return found[-1], str(ctx.path(ctx.outputs[found[-1]]["model_dir"]))

"""Reinforcement learning and preference learning: verifiers, the code sandbox, rewards and the objectives.

The public objective functions (`agapo_advantages`, `agapo_loss`, `grouper_advantages`, `grouper_loss`) follow the
equations of SPEC.md section 5; see `kexaone.rl.objectives`. Verifiers live in `kexaone.rl.verifiers`, the code
sandbox in `kexaone.rl.sandbox`, reward functions in `kexaone.rl.rewards`.
"""

from kexaone.rl.objectives import (
    ISStats,
    agapo_advantages,
    agapo_is_stats,
    agapo_loss,
    grouper_advantages,
    grouper_loss,
)

__all__ = ["ISStats", "agapo_advantages", "agapo_is_stats", "agapo_loss", "grouper_advantages", "grouper_loss"]

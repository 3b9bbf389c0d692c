"""Reinforcement learning and preference learning: verifiers, the code sandbox, rewards and the objectives.

The public objective functions (`agapo_advantages`, `agapo_loss`, `grouper_advantages`, `grouper_loss`) follow the
equations of SPEC.md section 5; see `kexaone.rl.objectives`. Verifiers live in `kexaone.rl.verifiers`, the code
sandbox in `kexaone.rl.sandbox`, reward functions in `kexaone.rl.rewards`.
"""

_OBJECTIVES = ("ISStats", "agapo_advantages", "agapo_is_stats", "agapo_loss", "grouper_advantages", "grouper_loss")
__all__ = list(_OBJECTIVES)


def __getattr__(name: str):
    # Lazy, so that `kexaone --help` (which imports the rl command modules) does not import torch.
    if name in _OBJECTIVES:
        from kexaone.rl import objectives

        return getattr(objectives, name)
    raise AttributeError(f"module 'kexaone.rl' has no attribute {name!r}")

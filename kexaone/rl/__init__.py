"""Reinforcement learning and preference learning: verifiers, the code sandbox, rewards and the objectives.

The public objective functions (`agapo_advantages`, `agapo_loss`, `grouper_advantages`, `grouper_loss`) follow the
equations of SPEC.md section 5. The trainers themselves live in their own modules.
"""

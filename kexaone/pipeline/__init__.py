"""kexaone.pipeline: multi-stage recipes run as resumable stages (stages.py), with their budgets (budgets.py).
The speedrun's stages are in recipe.py."""

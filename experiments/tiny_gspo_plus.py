"""A tiny objective ablation: experiments/tiny_dapo.py holds the recipe.

tiny_grpo, tiny_gspo and tiny_gspo_plus differ from it only in the objective line.
"""
from experiments import tiny_dapo

EXPERIMENT = tiny_dapo.EXPERIMENT.replace(
    objective=dict(name="gspo_plus"),  # GSPO+: GSPO ratios and clipping, every token weighs the same
)

"""A tiny objective ablation: experiments/tiny_dapo.py holds the recipe.

tiny_grpo, tiny_gspo and tiny_gspo_plus differ from it only in the objective line.
"""
from experiments import tiny_dapo

EXPERIMENT = tiny_dapo.EXPERIMENT.replace(
    objective=dict(name="gspo"),  # GSPO: sequence ratios clipped at 3e-4 / 4e-4, mean over sequences
)

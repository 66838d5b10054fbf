"""A NousCoder-14B objective ablation: experiments/nouscoder_14b.py holds the recipe.

The three nouscoder_14b_*_40k files differ only in the objective line (compare them with diff).
"""
from experiments import nouscoder_14b

EXPERIMENT = nouscoder_14b.EXPERIMENT.replace(
    objective=dict(name="dapo"),  # DAPO: token ratios clipped at 0.2 / 0.28, one mean over all tokens
)

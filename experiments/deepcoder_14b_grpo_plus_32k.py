"""DeepCoder-14B, stage 2: the 16K run continued with responses up to 32K tokens.

It starts from the final params of deepcoder_14b_grpo_plus_16k (params only: a fresh optimizer
and step count) and otherwise keeps that recipe.
"""
from experiments import deepcoder_14b_grpo_plus_16k as stage_1

EXPERIMENT = stage_1.EXPERIMENT.replace(
    rollout=dict(max_response_tokens=32768),
    batch=dict(micro_batches=16),  # chosen: twice as many tokens per rollout as stage 1
    schedule=dict(
        steps=100,  # chosen: the seed does not publish the length of its 32K stage
        init_from="runs/deepcoder_14b_grpo_plus_16k",
    ),
)

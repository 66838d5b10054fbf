"""DeepCoder-14B, stage 1: GRPO+ on DeepSeek-R1-Distill-Qwen-14B with responses up to 16K tokens.

Published by Agentica / Together (DeepCoder blog, rllm): GRPO+ (DAPO's clip-high 0.28, token mean,
no KL, no entropy bonus, overlong filtering), offline difficulty filtering instead of dynamic
sampling, 1 / 0 rewards, R1-style prompt with no system prompt, iterative context lengthening
16K -> 32K with the switch at step 180, the DeepCoder-Preview problem set, evaluation on
LiveCodeBench v5 at temperature 0.6 / top_p 0.95. Every "chosen" comment marks a setting the seed
does not publish. model.path and the data paths are local copies: point them at yours with --set.
"""
from experiments import base

EXPERIMENT = base.EXPERIMENT.replace(
    model=dict(path="checkpoints/DeepSeek-R1-Distill-Qwen-14B"),
    objective=dict(name="grpo_plus", eps_low=0.2, eps_high=0.28,
                   overlong="mask"),  # chosen mode: truncated responses leave the loss and its token count
    data=dict(
        # DeepCoder-Preview-Dataset's training splits (TACO-verified, PrimeIntellect SYNTHETIC-1,
        # LiveCodeBench 2023-05..2024-07), already filtered by the seed; undated rows, so no window.
        train=("data/deepcoder_preview/taco_train.parquet",
               "data/deepcoder_preview/primeintellect_train.parquet",
               "data/deepcoder_preview/lcbv5_train.parquet"),
        eval=("data/deepcoder_preview/lcbv5_test.parquet",),  # LiveCodeBench v5: 2024-08-01..2025-02-01
        prompt="r1",
        thinking=True,
        max_prompt_tokens=2048,  # chosen
    ),
    rollout=dict(
        group_size=16,  # chosen
        temperature=0.6,  # chosen: the seed's evaluation temperature
        max_response_tokens=16384,
        dynamic_sampling=False,  # DeepCoder filtered always/never-solved problems offline instead
        eval_n=8,  # chosen
    ),
    sandbox=dict(reward="binary"),  # time and memory limits: chosen, the base's 15 s / 4 GB
    batch=dict(
        prompts_per_step=64,  # chosen
        mini_batches=1,  # chosen: one optimizer step per batch of rollouts
        micro_batches=8,  # chosen: fits 16K-token sequences on 80 GB devices with remat
    ),
    optimizer=dict(lr=1e-6),  # chosen: constant, no warmup
    schedule=dict(
        steps=180,  # the published switch to 32K
        eval_every=20,  # chosen
        checkpoint_every=10,  # chosen
    ),
)

"""NousCoder-14B: the recipe its three objective ablations share (Qwen3-14B, 40K-token context).

Published by Nous Research: Qwen3-14B, DeepCoder's training problems, +1 / -1 rewards, 15 s and
4 GB per test, sampling at temperature 1.0 / top_p 1.0 for training and 0.6 / 0.95 for evaluation,
overlong filtering, rollouts at most 2 batches off-policy (Atropos' max_batches_offpolicy),
evaluation on LiveCodeBench v6. Atropos environments drop groups whose scores are all equal, as
DAPO's dynamic sampling does. Every "chosen" comment marks a setting the seed does not publish; so
is the base's unbiased group std (advantages.ddof=1; the Atropos example trainer uses ddof=0).
model.path and the data paths are local copies: point them at yours with --set.
"""
from experiments import base

EXPERIMENT = base.EXPERIMENT.replace(
    model=dict(path="checkpoints/Qwen3-14B"),
    objective=dict(
        overlong="zero_advantage",
        tis_cap=2.0,  # chosen: rollouts may be 2 steps stale, so correct by the rollout logprobs
    ),
    data=dict(
        train=("data/deepcoder_preview/taco_train.parquet",
               "data/deepcoder_preview/primeintellect_train.parquet",
               "data/deepcoder_preview/lcbv5_train.parquet"),
        eval=("data/livecodebench/code_generation_lite.jsonl",),
        eval_window="lcb_v6",  # 2024-08-01..2025-05-01
        prompt="lcb",  # LiveCodeBench's prompt with its system message
        thinking=True,  # Qwen3 thinks first; the answer follows the last </think>
        max_prompt_tokens=2048,  # chosen
    ),
    rollout=dict(
        group_size=8,  # chosen
        temperature=1.0,
        top_p=1.0,
        max_response_tokens=38912,  # prompt + response = 40,960, Qwen3-14B's native context
        max_staleness=2,
        dynamic_sampling=True,
        eval_temperature=0.6,
        eval_top_p=0.95,
        eval_n=8,  # chosen
    ),
    sandbox=dict(reward="pm1", time_limit=15.0, memory_mb=4096),
    batch=dict(
        prompts_per_step=64,  # chosen
        mini_batches=1,  # chosen
        micro_batches=16,  # chosen: fits 40K-token sequences on 80 GB devices with remat
    ),
    optimizer=dict(lr=1e-6),  # chosen
    schedule=dict(
        steps=375,  # chosen: one pass over 24K problems at 64 per step
        eval_every=25,  # chosen
        checkpoint_every=25,  # chosen
    ),
)

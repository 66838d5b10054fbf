"""The CPU-sized twin of the 14B recipes: a tiny Qwen3 learning the rl/tiny problem families.

What the main job and the tests run; tiny_grpo, tiny_gspo and tiny_gspo_plus derive from it and
change only the objective. Every setting here is chosen for a 2-core CPU, none is a seed's.
"""
from experiments import base

EXPERIMENT = base.EXPERIMENT.replace(
    model=dict(
        path="runs/tiny/model",  # placeholder: the tiny model folder the tiny builder writes
        dtype="float32",
        param_dtype="float32",
        remat="none",
        attention="reference",
    ),
    mesh=dict(data=1, fsdp=-1, tensor=1),
    objective=dict(name="dapo"),
    data=dict(
        train=("rl/assets/tiny/train.jsonl",),
        eval=("rl/assets/tiny/heldout.jsonl",),
        max_prompt_tokens=256,  # the tiny prompts are 25-33 tokens (the template paragraphs are one token each)
    ),
    rollout=dict(
        group_size=8,
        max_response_tokens=64,  # the tiny answers are 16-32 tokens
        max_concurrency=64,
        max_refill_rounds=2,
        eval_n=4,  # 56 held-out problems x 4 samples
    ),
    sandbox=dict(time_limit=5.0, memory_mb=1024, workers=2),
    batch=dict(prompts_per_step=16, mini_batches=1, micro_batches=2),
    optimizer=dict(lr=1e-3, warmup_steps=0),
    schedule=dict(steps=20, eval_every=5, checkpoint_every=5, keep_checkpoints=2),
)

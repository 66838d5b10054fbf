"""The typed experiment config: one frozen dataclass per section, composed into `Experiment`.

An experiment file in experiments/ builds an `Experiment`, usually by taking its base experiment and
replacing only what differs (see experiments/README.md). Loading, validation and `--set` overrides
live below the schema.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelSection:
    path: str = ""                      # HF folder (config.json, safetensors, tokenizer files)
    dtype: str = "bfloat16"             # compute dtype
    param_dtype: str = "float32"        # master weights (f32 master, bf16 compute)
    remat: str = "full"                 # "none" | "full" | "matmuls"
    attention: str = "blockwise"        # "reference" | "blockwise" | "cudnn"
    max_context: int = 0                # > native length: YaRN factor = max_context / native (0: native)


@dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = -1                      # -1: every device not used by the other axes
    tensor: int = 1


@dataclass(frozen=True)
class ObjectiveSection:
    name: str = "dapo"                  # a name registered in rl.losses
    eps_low: float | None = None        # None: the objective's default
    eps_high: float | None = None
    overlong: str = "zero_advantage"    # "zero_advantage" | "mask" | "none"
    kl_coef: float = 0.0                # > 0 keeps a frozen reference model
    tis_cap: float | None = None        # truncated importance sampling on rollout logprobs (None: off)


@dataclass(frozen=True)
class AdvantageSection:
    normalize_std: bool = True          # False: Dr. GRPO
    ddof: int = 1
    eps: float = 1e-6


@dataclass(frozen=True)
class DataSection:
    train: tuple[str, ...] = ()         # local problem files (json, jsonl, parquet)
    eval: tuple[str, ...] = ()          # held-out problems
    window: str = ""                    # contest-date window "YYYY-MM-DD:YYYY-MM-DD" ("" = all)
    difficulties: tuple[str, ...] = ()  # keep only these ("" = all)
    dedup: bool = True                  # by problem text
    prompt: str = "lcb"                 # "lcb" (system prompt) | "r1" (everything in one user message)
    max_prompt_tokens: int = 2048       # longer prompts are dropped and counted
    thinking: bool = False              # the model thinks first: the answer follows the last </think>


@dataclass(frozen=True)
class RolloutSection:
    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_response_tokens: int = 8192
    servers: tuple[str, ...] = ()       # SGLang / router URLs; empty: start the embedded server
    max_concurrency: int = 256
    max_staleness: int = 0              # 0: on-policy; 1: one-step-off
    dynamic_sampling: bool = True       # DAPO: drop all-equal groups and refill
    max_refill_rounds: int = 10
    eval_temperature: float = 0.6
    eval_top_p: float = 0.95
    eval_n: int = 4                     # samples per held-out problem


@dataclass(frozen=True)
class SandboxSection:
    time_limit: float = 15.0            # seconds per test (the seeds)
    memory_mb: int = 4096
    workers: int = 0                    # 0: one per core
    reward: str = "pm1"                 # "pm1" (+1 / -1) | "binary" (1 / 0, rllm) | "partial"


@dataclass(frozen=True)
class BatchSection:
    prompts_per_step: int = 32
    mini_batches: int = 1               # optimizer steps per batch of rollouts
    micro_batches: int = 1              # gradient accumulation per mini-batch
    pack: bool = True                   # several sequences per row
    max_tokens_per_row: int = 0         # packed row length (0: the longest prompt + response)


@dataclass(frozen=True)
class OptimizerSection:
    lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 1.0


@dataclass(frozen=True)
class ScheduleSection:
    steps: int = 100
    eval_every: int = 10
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    init_from: str = ""                 # params only: a run directory's checkpoint or an HF folder


@dataclass(frozen=True)
class Experiment:
    name: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    advantages: AdvantageSection = field(default_factory=AdvantageSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    batch: BatchSection = field(default_factory=BatchSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    seed: int = 0

    def replace(self, **sections) -> "Experiment":
        return dataclasses.replace(self, **sections)

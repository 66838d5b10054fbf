"""Compile an experiment's real update (and its logprob pass) ahead of time on a slice's devices.

The update is rl.trainer.Trainer's own jitted function, lowered against `Trainer.abstract_state()`
(ShapeDtypeStructs carrying their shardings) and an abstract rl.packing.Batch whose shapes follow the
experiment's batch section at the worst case: every rollout at the full prompt + response length.
Nothing is allocated; XLA's memory analysis is per device.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tempfile
import time
from pathlib import Path


# config.json fields of the published 14B checkpoints the experiments name (docs/models.md), so a plan
# needs no download: used when model.path holds no config.json.
KNOWN_CHECKPOINTS = {
    "Qwen3-14B": dict(architectures=["Qwen3ForCausalLM"], hidden_size=5120, intermediate_size=17408,
                      num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
                      vocab_size=151936, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
                      max_position_embeddings=40960),
    "DeepSeek-R1-Distill-Qwen-14B": dict(architectures=["Qwen2ForCausalLM"], hidden_size=5120,
                                         intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                                         num_key_value_heads=8, vocab_size=152064, rope_theta=1000000.0,
                                         rms_norm_eps=1e-5, tie_word_embeddings=False,
                                         max_position_embeddings=131072),
}


def model_config(exp, layers: int | None = None):
    """rl.experiment.model_config(exp), from KNOWN_CHECKPOINTS when model.path has no config.json;
    `layers` overrides the depth (quick looks; real plans keep it)."""
    from rl.experiment import ExperimentError, model_config as resolve
    path = Path(exp.model.path)
    if not (path / "config.json").is_file() and path.name in KNOWN_CHECKPOINTS:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "config.json").write_text(json.dumps(KNOWN_CHECKPOINTS[path.name]))
            cfg = resolve(exp.replace(model=dict(path=tmp)))
    elif not (path / "config.json").is_file():
        raise ExperimentError(f"model.path: {path} has no config.json and is not one of the published "
                              f"checkpoints rl.plan knows ({', '.join(KNOWN_CHECKPOINTS)}): "
                              f"--set model.path=A_FOLDER_WITH_ITS_CONFIG_JSON")
    else:
        cfg = resolve(exp)
    return cfg.replace(num_layers=layers) if layers else cfg


@dataclasses.dataclass(frozen=True)
class BatchShape:
    mini: int
    micro: int
    rows: int          # per micro-batch, all devices
    row_len: int
    sequences: int     # per micro-batch
    response_len: int

    @property
    def token_slots(self) -> int:
        """Model-view tokens per step (all mini- and micro-batches): what the compute is spent on."""
        return self.mini * self.micro * self.rows * self.row_len


def batch_shape(exp, shards: int) -> BatchShape:
    """The packed batch of one step when every rollout has the full prompt + response length, as
    rl.packing.pack lays it out (row length from batch.max_tokens_per_row, else the bucketed longest
    sequence; rows and sequences bucketed to multiples of the data x fsdp shard count)."""
    from rl.packing import bucket
    b, r = exp.batch, exp.rollout
    response = max([r.max_response_tokens] + [int(s.split(":")[1]) for s in r.context_stages])
    longest = exp.data.max_prompt_tokens + response
    row_len = b.max_tokens_per_row or bucket(longest)
    sequences = b.prompts_per_step * r.group_size // (b.mini_batches * b.micro_batches)
    per_row = max(1, row_len // longest) if b.pack else 1
    return BatchShape(b.mini_batches, b.micro_batches, bucket(math.ceil(sequences / per_row), shards), row_len,
                      bucket(sequences, shards), bucket(response))


def abstract_batch(shape: BatchShape):
    """An rl.packing.Batch of jax.ShapeDtypeStructs; dtypes from a real one-sample pack."""
    import jax
    from rl import packing
    one = packing.pack([packing.Sample([1], [1], [0.0], 0.0)])
    lead = (shape.mini, shape.micro)
    shapes = packing.Batch(tokens=lead + (shape.rows, shape.row_len), segment_ids=lead + (shape.rows, shape.row_len),
                           index=lead + (shape.sequences, shape.response_len),
                           mask=lead + (shape.sequences, shape.response_len),
                           rollout_logp=lead + (shape.sequences, shape.response_len),
                           advantages=lead + (shape.sequences,), truncated=lead + (shape.sequences,))
    return jax.tree.map(lambda s, x: jax.ShapeDtypeStruct(s, x.dtype), shapes, one,
                        is_leaf=lambda s: isinstance(s, tuple))


@dataclasses.dataclass(frozen=True)
class Compiled:
    """XLA's per-device figures of one compiled program. A TPU compile that runs out of HBM fails
    instead: then `error` holds libtpu's message and `temporaries` the figure it gives."""
    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    code: int = 0
    flops: float = 0.0     # cost_analysis, per device; scan bodies counted once
    seconds: float = 0.0   # lower + compile wall time
    error: str = ""

    @property
    def peak(self) -> int:
        """Bytes the program needs at once: inputs, outputs not written in place, temporaries, code."""
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _hbm_temporaries(message: str) -> int:
    """Bytes from libtpu's "the total memory required for HLO temporaries (279.66G) exceeds available
    HBM (95.74G)" (0 when the message has no such figure)."""
    match = re.search(r"HLO temporaries \(([\d.]+)([KMGT]?)\)", message)
    return int(float(match[1]) * _UNITS[match[2]]) if match else 0


def _figures(lowered, started: float) -> Compiled:
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax raises its runtime error type; only out-of-memory is a result
        message = str(e)
        if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
            raise
        return Compiled(temporaries=_hbm_temporaries(message), seconds=time.perf_counter() - started,
                        error=message.strip().splitlines()[0][:300])
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return Compiled(mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
                    mem.temp_size_in_bytes, mem.generated_code_size_in_bytes, float((cost or {}).get("flops", 0.0)),
                    time.perf_counter() - started)


def trainer_for(exp, cfg, devices, compiler_options: dict | None = None):
    """rl.trainer.Trainer on a mesh of `devices` shaped by the experiment's mesh section."""
    import models
    from rl.trainer import Trainer
    mesh = models.make_mesh(exp.mesh.data, exp.mesh.fsdp, exp.mesh.tensor, devices=devices)
    return Trainer(exp, cfg, mesh, compiler_options=compiler_options)


def compile_update(trainer, shape: BatchShape) -> Compiled:
    started = time.perf_counter()
    return _figures(trainer.lower_update(abstract_batch(shape)), started)


def compile_logprobs(trainer, shape: BatchShape) -> Compiled:
    started = time.perf_counter()
    return _figures(trainer.lower_logprobs(abstract_batch(shape)), started)


def shards(trainer) -> int:
    """The data x fsdp shard count the batch's row and sequence axes split over."""
    return trainer.mesh.shape["data"] * trainer.mesh.shape["fsdp"]

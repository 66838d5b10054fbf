"""Compiled activation memory of the training forward/backward on a TPU topology (AOT, nothing runs):
remat "full" keeps about one [T, D] residual per layer, keeping everything costs more, and one
sequence per chip needs no more memory on four chips than on one."""
import functools
import importlib.util
import os

import pytest

import models
from models.memory import bilinear, saved_residual_bytes, train_temp_bytes

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="compiling for a TPU topology needs libtpu (pip install 'jax[tpu]')")

# bf16 params: no compute-dtype copy of the weights, so the growth with layers is the activations alone.
SMALL = models.ModelConfig(arch="qwen3", vocab_size=512, hidden_size=512, intermediate_size=1024, num_layers=8,
                           num_heads=4, num_kv_heads=2, head_dim=128, dtype="bfloat16", param_dtype="bfloat16",
                           attention="blockwise", attention_block=256)
T = 4096  # long enough that one more layer's [T, D] residual stands out of XLA's packing


@functools.cache
def devices():
    # Compiling touches no chip: other processes (xdist workers, the planner) may hold libtpu too.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    return tuple(topologies.get_topology_desc("v5p:2x2x1", platform="tpu").devices)


@functools.cache
def temp(remat: str, layers: int, chips: int = 4) -> int:
    mesh = models.make_mesh(devices=devices()[:chips])
    return train_temp_bytes(SMALL.replace(remat=remat, num_layers=layers), mesh, T)


def test_remat_full_keeps_one_residual_per_layer():
    cfg = SMALL.replace(remat="full")
    arithmetic = bilinear(lambda L, t: saved_residual_bytes(cfg.replace(num_layers=L), t), (8, 16), (T // 2, T))["d"]
    assert arithmetic == SMALL.hidden_size * 2  # per token per layer: one bf16 [T, D]
    # Eight layers apart: at fewer, XLA's packing of the other buffers shifts by a layer's worth.
    measured = (temp("full", 16) - temp("full", 8)) / (8 * T)
    assert arithmetic / 1.5 <= measured <= 1.5 * arithmetic, (measured, arithmetic)


def test_remat_none_costs_more_than_full():
    assert temp("none", 16) > 2 * temp("full", 16), (temp("none", 16), temp("full", 16))


def test_activations_are_split_by_sequence_not_by_feature():
    # One sequence per chip: each chip's activations are its own sequence's, whatever the chip count.
    # Sharded along features instead, every chip would hold (and all-reduce) all four sequences.
    assert temp("full", 16) <= 1.25 * temp("full", 16, chips=1), (temp("full", 16), temp("full", 16, chips=1))

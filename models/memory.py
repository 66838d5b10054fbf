"""Activation memory of one training forward/backward: what the remat design keeps, and what XLA compiles.

The design: under `lax.scan`, each layer's backward needs the residuals its forward saved, stacked
over layers, so they cost bytes x tokens x layers. `saved_residual_bytes` counts them from JAX's own
record (the residuals of `jax.vjp`, shapes only). Under remat "full" that is the layer's input, one
[T, D] copy of the residual stream in the compute dtype; everything else is one layer's working set,
live for one layer at a time.

The compiled program: `train_temp_bytes` AOT-compiles value_and_grad of a loss over the hidden
states (or the token logprobs) on abstract sharded params, one sequence per batch shard, and returns
XLA's temporary bytes per device. `bilinear` splits temporaries measured at two layer counts and two
lengths into a + b L + c T + d L T: d is what grows with tokens x layers (the saved residuals), c the
per-token working set, b per-layer buffers that do not depend on length (e.g. compute-dtype copies of
the weights), a the rest.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from models.config import ModelConfig
from models.logprobs import token_logprobs
from models.sharding import batch_sharding, param_shardings
from models.transformer import hidden_states, model_inputs
from models.weights import abstract_params

LOSSES = ("hidden", "logprobs")


def _loss(cfg: ModelConfig, loss: str):
    """A scalar of the params and tokens that needs the whole layer stack's backward."""
    def hidden(params, tokens_BT):
        h_BTD, _ = hidden_states(params, cfg, *model_inputs(tokens_BT, None, None))
        return jnp.sum(jnp.square(h_BTD.astype(jnp.float32)))

    def logprobs(params, tokens_BT):
        return jnp.sum(token_logprobs(params, cfg, tokens_BT))

    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; expected one of {LOSSES}")
    return hidden if loss == "hidden" else logprobs


def saved_residual_bytes(cfg: ModelConfig, tokens: int) -> int:
    """Bytes jax.vjp keeps for the backward of the layer stack on one `tokens`-long sequence: the
    scan's stacked residuals plus what the embedding and rope tables leave (nothing is computed)."""
    tokens_BT = jax.ShapeDtypeStruct((1, tokens), jnp.int32)

    def residuals(params, tokens_BT):
        def stack(layers):
            return hidden_states(dict(params, layers=layers), cfg, *model_inputs(tokens_BT, None, None))[0]
        return jax.tree.leaves(jax.vjp(stack, params["layers"])[1])

    leaves = jax.eval_shape(residuals, abstract_params(cfg), tokens_BT)
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)


def train_temp_bytes(cfg: ModelConfig, mesh: Mesh, tokens: int, loss: str = "hidden",
                     compiler_options: dict | None = None) -> int:
    """XLA's temporary bytes per device for value_and_grad of `loss` with params sharded as
    `param_shardings` and one `tokens`-long sequence per batch shard (compiled, never run).
    compiler_options go to XLA (e.g. {"xla_dump_to": dir} for its buffer assignment)."""
    shardings = param_shardings(cfg, mesh)
    params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params(cfg),
                          shardings)
    rows = mesh.shape["data"] * mesh.shape["fsdp"]
    tokens_BT = jax.ShapeDtypeStruct((rows, tokens), jnp.int32, sharding=batch_sharding(mesh))
    step = jax.jit(jax.value_and_grad(_loss(cfg, loss)), out_shardings=(NamedSharding(mesh, P()), shardings))
    return step.lower(params, tokens_BT).compile(compiler_options).memory_analysis().temp_size_in_bytes


def bilinear(f, layers: tuple[int, int], tokens: tuple[int, int]) -> dict:
    """Fit f(L, T) = a + b L + c T + d L T through the four corners of layers x tokens; f is called
    once per corner. Returns the four coefficients and the corner values."""
    (l1, l2), (t1, t2) = layers, tokens
    f11, f12, f21, f22 = f(l1, t1), f(l1, t2), f(l2, t1), f(l2, t2)
    d = (f22 - f21 - f12 + f11) / ((l2 - l1) * (t2 - t1))
    b = (f21 - f11) / (l2 - l1) - d * t1
    c = (f12 - f11) / (t2 - t1) - d * l1
    a = f11 - b * l1 - c * t1 - d * l1 * t1
    return dict(a=a, b=b, c=c, d=d, corners={(l1, t1): f11, (l1, t2): f12, (l2, t1): f21, (l2, t2): f22})

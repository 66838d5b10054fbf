"""What the update must hold and compute, from the model's shapes alone: the check on XLA's figures.

Bytes are per device. Names: P parameters, D hidden, F MLP width, N / K query / key-value heads of
H dims, V vocabulary, L layers, T tokens of a row (the attention context), b the compute dtype's bytes.

- parameters: P x itemsize(param_dtype), sharded as models.param_shardings says;
- optimizer: AdamW's two moments in the params' dtype (optax keeps mu and nu like the params);
- activations saved for the backward pass, per token per layer, by remat policy:
    full     the layer's input, the residual stream: D x b
    matmuls  that plus every weight matmul's output (q, k, v, o, gate, up, down): (D + NH + 2KH + D + 2F + D) x b
    none     every intermediate the layer's backward reads (LAYER_INTERMEDIATES)
  plus, whatever the policy, one layer's intermediates while its backward runs (the none set once);
- FLOPs: 2 per weight per token forward, 4 backward; attention 2NHT forward per token per layer
  (QK^T and PV over T/2 keys on average, causal), 2.5x that backward (blockwise attention recomputes
  the probabilities); remat full runs each layer's forward twice; the chunked logprob head recomputes
  its logits in the backward pass.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from models.config import ModelConfig
from models.weights import full_shape, weight_table


def itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize if dtype != "bfloat16" else 2


def param_count(cfg: ModelConfig) -> int:
    return sum(math.prod(full_shape(w, cfg)) for w in weight_table(cfg))


def param_bytes(cfg: ModelConfig) -> int:
    return param_count(cfg) * itemsize(cfg.param_dtype)


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of jax.ShapeDtypeStruct with shardings (the most any holds)."""
    import jax
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def layer_matmul_params(cfg: ModelConfig) -> int:
    """Weights one layer multiplies every token by: q, k, v, o and the three MLP matrices."""
    D, F, NH, KH = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return D * NH + 2 * D * KH + NH * D + 3 * D * F


def layer_intermediates(cfg: ModelConfig) -> dict[str, int]:
    """Bytes per token of what one layer's backward reads when nothing is recomputed (remat none):
    compute-dtype activations, and the float32 copies the norms and RoPE work in."""
    b = itemsize(cfg.dtype)
    D, F, NH, KH, N = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim,
                       cfg.num_kv_heads * cfg.head_dim, cfg.num_heads)
    qk = NH + KH
    return {
        "residual in, after attention": 2 * D * b,
        "normed inputs (2 norms)": 2 * D * b,
        "norm inputs in float32 (2 norms)": 2 * D * 4,
        "q, k, v": (NH + 2 * KH) * b,
        "q, k after norm and RoPE": (2 * qk * b if cfg.qk_norm else qk * b),
        "q, k in float32 (norm, RoPE)": (2 if cfg.qk_norm else 1) * qk * 4,
        "attention output, logsumexp": NH * b + N * 4,
        "o and down projections": 2 * D * b,
        "gate, up, silu(gate), product": 4 * F * b,
    }


def saved_per_token_layer(cfg: ModelConfig, remat: str) -> int:
    """Bytes per token per layer kept from the forward pass for the backward, by remat policy."""
    b = itemsize(cfg.dtype)
    D, F, NH, KH = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    if remat == "full":
        return D * b
    if remat == "matmuls":
        return (D + NH + 2 * KH + D + 2 * F + D) * b
    if remat == "none":
        return sum(layer_intermediates(cfg).values())
    raise ValueError(f"remat {remat!r}: expected full, matmuls or none")


def activation_bytes_per_token(cfg: ModelConfig, remat: str) -> int:
    """All layers' saved activations plus one layer's working set, per token of a device's micro-batch."""
    return cfg.num_layers * saved_per_token_layer(cfg, remat) + sum(layer_intermediates(cfg).values())


def fixed_temporaries(cfg: ModelConfig, devices: int, tensor: int = 1, chunk: int = 512) -> dict[str, float]:
    """`devices`: those the weights shard over (fsdp x tensor; the data axis holds copies).
    Temporaries that do not grow with tokens, per device: the float32 gradient accumulator and one
    micro-batch's gradients (sharded), AdamW's new moments and update (the mini-batch scan's carry is
    not updated in place: only the jit's outputs alias its inputs), a compute-dtype copy of the layer
    weight shards (docs/scale.md), one layer's weights gathered in
    the compute dtype (two: the next one is fetched while the current one runs), the unembedding
    gathered with its float32 gradient accumulator (models.logprobs), and the logits of one chunk."""
    P = param_count(cfg)
    V, D = cfg.vocab_size, cfg.hidden_size
    b = itemsize(cfg.dtype)
    layer = sum(math.prod(w.shape) for w in weight_table(cfg) if w.stacked)
    return {
        "gradients: accumulator + one micro-batch's, float32": 2 * P * 4 / devices,
        "AdamW step: new mu, nu and the update, float32": 3 * P * 4 / devices,
        "every layer's weight shard cast to the compute dtype (XLA hoists the cast out of the scan)":
            cfg.num_layers * layer * b / devices,
        "two layers' weights gathered": 2 * layer * b / tensor,
        "unembedding gathered + float32 gradient": V * D * (b + 4) / tensor,
        "one chunk of logits, float32 (x3: logits, probabilities, gradient)": 3 * chunk * V * 4 / tensor,
    }


@dataclasses.dataclass(frozen=True)
class Flops:
    model: float      # 6 per weight per token + attention forward and backward: what MFU counts
    executed: float   # plus remat recompute, the logprob head's recompute, extra forward passes


def step_flops(cfg: ModelConfig, token_slots: int, context: int, remat: str, *, old_logprobs: bool = False,
               reference: bool = False) -> Flops:
    """FLOPs of one update over `token_slots` model-view tokens whose rows hold `context`-token
    sequences (causal attention sees context / 2 keys on average)."""
    L, V, D = cfg.num_layers, cfg.vocab_size, cfg.hidden_size
    mm = L * layer_matmul_params(cfg)
    attention = 2 * L * cfg.num_heads * cfg.head_dim * context  # forward, per token
    forward = 2 * mm + attention + 2 * V * D
    model = 6 * (mm + V * D) + 3.5 * attention
    recompute = {"full": 2 * mm + attention, "matmuls": attention, "none": 0.0}[remat] + 2 * V * D
    extra = forward * (int(old_logprobs) + int(reference))
    return Flops(model * token_slots, (model + recompute + extra) * token_slots)

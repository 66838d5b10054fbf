"""The decoder for KV-cache decoding: a Python loop over per-layer weights instead of `lax.scan`.

Under `lax.scan` over stacked weights XLA on CPU copies each layer's weight slice before its matmuls
on every step, which roughly doubles the bytes a decode step moves. Here the stacked weights are
sliced once per weight version (`unstack_layers`), each layer has its own cache arrays, and the
layer loop is unrolled inside the jitted step: every weight is read once, in place. Training and
prefill keep the scan (`models.transformer.hidden_states`), whose compile time does not grow with depth.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.layers import rms_norm, rope_tables
from models.transformer import _decoder_layer


def unstack_layers(params) -> dict:
    """params with "layers" as a list of per-layer dicts (one slice of every stacked weight)."""
    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    layers = [jax.tree.map(lambda w, i=i: w[i], params["layers"]) for i in range(num_layers)]
    return {**params, "layers": layers}


def split_cache(cache_LBSKH: dict) -> list[dict]:
    """A stacked {"k", "v"} [L, B, S, K, H] cache as L caches of [1, B, S, K, H] (one per layer)."""
    return [{name: c[i:i + 1] for name, c in cache_LBSKH.items()} for i in range(cache_LBSKH["k"].shape[0])]


def init_layer_caches(cfg: ModelConfig, batch: int, length: int) -> list[dict]:
    shape = (1, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return [{"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)} for _ in range(cfg.num_layers)]


def hidden_states_unrolled(weights, cfg: ModelConfig, tokens_BT, kv_valid_BS, positions_BT, caches: list[dict],
                           q_offset=0, slots_B=None):
    """As `models.transformer.hidden_states` with a cache, over `unstack_layers` weights and per-layer caches.

    The new keys and values are written at slots q_offset.. of every row, or (one token per row) at
    each row's slot slots_B; kv_valid covers all S slots. Returns the final-normed hidden states
    [B, T, D] and the updated caches.
    """
    x_BTD = weights["embed"].astype(cfg.dtype)[tokens_BT]
    cos, sin = rope_tables(cfg, positions_BT)
    new_caches = []
    for layer, cache in zip(weights["layers"], caches):
        x_BTD, cache = _decoder_layer(cfg, x_BTD, layer, cos, sin, kv_valid_BS, q_offset, cache, 0, slots_B=slots_B)
        new_caches.append(cache)
    return rms_norm(x_BTD, weights["final_norm"], cfg.rms_norm_eps), new_caches

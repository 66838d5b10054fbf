"""The decoder for KV-cache decoding: a Python loop over per-layer weights and caches instead of `lax.scan`.

Under `lax.scan` over stacked weights XLA on CPU copies each layer's weight slice before its matmuls
on every step, which roughly doubles the bytes a decode step moves. Here the stacked weights are
sliced once per weight version (`unstack_layers`), each layer has its own cache arrays, and the
layer loop is unrolled inside the jitted step: every weight is read once, in place. Training and
prefill keep the scan (`models.transformer.hidden_states`), whose compile time does not grow with depth.

Each matmul weight is stored [out..., in...] (the Hugging Face layout) and is the left operand of its
dot while a call has few rows (`dense_out_in`).

The per-layer caches hold keys [B, K, H, S] and values [B, K, S, H], the layouts attention's two
batched dots read: a one-token step then reads each cache in place instead of transposing or packing
all of it (`SLOT_AXIS` says where the slots lie).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from models.attention import attention, reference_attention_bksh
from models.config import ModelConfig
from models.layers import rms_norm, rope_tables
from models.transformer import layer_output, layer_qkv


def decode_logits(h_BD, unembed_VD) -> jax.Array:
    """Float32 logits [B, V] of one position per row, computed as [V, B] and transposed: with the [V, D]
    unembedding as the left operand, XLA's CPU dot reads it in place rather than transposing all of it
    on every step (~10% of a batch-8 step on the ~100M benchmark model, docs/performance.md)."""
    logits_VB = jnp.einsum("VD,BD->VB", unembed_VD, h_BD, preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(logits_VB).T  # else XLA folds the transpose back into the dot


# How many leading axes of each stacked matmul weight (after "layers") are its inputs.
IN_AXES = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}
LEFT_MAX_ROWS = 128  # measured crossover on the ~100M model's MLP (docs/performance.md)


def dense_out_in(x, w, contract: int = 1) -> jax.Array:
    """`models.layers.dense` over a weight laid out [out..., in...]: the last `contract` axes of x
    against the last ones of w.

    Up to LEFT_MAX_ROWS rows the weight is the dot's left operand, [O, I] @ [I, M], and the small
    result is transposed: XLA's CPU dot streams the weight in place, 1.6-1.7x faster than x @ [I, O]
    at 8 rows. With more rows the plain product is faster (the weight is transposed once for all).
    """
    lead, out, inner = x.shape[:x.ndim - contract], w.shape[:w.ndim - contract], w.shape[w.ndim - contract:]
    x_MI, w_OI = x.reshape(-1, math.prod(inner)), w.reshape(-1, math.prod(inner))
    if x_MI.shape[0] <= LEFT_MAX_ROWS:  # the barrier keeps XLA from folding the transpose back into the dot
        y_MO = jax.lax.optimization_barrier(jnp.einsum("OI,MI->OM", w_OI, x_MI)).T
    else:
        y_MO = jnp.einsum("MI,OI->MO", x_MI, w_OI)
    return y_MO.reshape(*lead, *out)


def unstack_layers(params) -> dict:
    """params with "layers" as a list of per-layer dicts in the decode layout: one slice of every
    stacked weight, the matmul weights (IN_AXES) transposed to [out..., in...]."""
    def one(name, w):
        n = IN_AXES.get(name, 0)
        return w.transpose(*range(n, w.ndim), *range(n)) if n else w

    num_layers = jax.tree.leaves(params["layers"])[0].shape[0]
    layers = [{name: one(name, w[i]) for name, w in params["layers"].items()} for i in range(num_layers)]
    return {**params, "layers": layers}


SLOT_AXIS = {"k": 3, "v": 2}  # keys [B, K, H, S], values [B, K, S, H]
_FROM_BSKH = {"k": (0, 2, 3, 1), "v": (0, 2, 1, 3)}


def split_cache(cache_LBSKH: dict) -> list[dict]:
    """A stacked {"k", "v"} [L, B, S, K, H] cache (the scan's) as L per-layer caches in the decode layout."""
    return [{name: c[i].transpose(_FROM_BSKH[name]) for name, c in cache_LBSKH.items()}
            for i in range(cache_LBSKH["k"].shape[0])]


def init_layer_caches(cfg: ModelConfig, batch: int, length: int) -> list[dict]:
    B, K, S, H = batch, cfg.num_kv_heads, length, cfg.head_dim
    return [{"k": jnp.zeros((B, K, H, S), cfg.dtype), "v": jnp.zeros((B, K, S, H), cfg.dtype)}
            for _ in range(cfg.num_layers)]


def hidden_states_unrolled(weights, cfg: ModelConfig, tokens_BT, kv_valid_BS, positions_BT, caches: list[dict],
                           q_offset=0, slots_B=None, matmul=dense_out_in):
    """As `models.transformer.hidden_states` with a cache, over `unstack_layers` weights and per-layer
    caches (keys [B, K, H, S], values [B, K, S, H]).

    The new keys and values are written at slots q_offset.. of every row, or (one token per row) at
    each row's slot slots_B; kv_valid covers all S slots. Returns the final-normed hidden states
    [B, T, D] and the updated caches. (matmul=`models.layers.dense` runs per-layer slices in the
    training layout instead, as benchmarks/decode.py compares.)
    """
    x_BTD = weights["embed"].astype(cfg.dtype)[tokens_BT]
    cos, sin = rope_tables(cfg, positions_BT)
    new_caches = []
    for layer, cache in zip(weights["layers"], caches):
        x_BTD, cache = _layer(cfg, x_BTD, layer, cos, sin, kv_valid_BS, q_offset, cache, slots_B, matmul)
        new_caches.append(cache)
    return rms_norm(x_BTD, weights["final_norm"], cfg.rms_norm_eps), new_caches


def _layer(cfg: ModelConfig, x_BTD, layer, cos, sin, kv_valid_BS, q_offset, cache, slots_B, matmul):
    layer = jax.tree.map(lambda w: w.astype(cfg.dtype), layer)
    q_BTNH, k_BTKH, v_BTKH = layer_qkv(cfg, x_BTD, layer, cos, sin, matmul)
    k_BKHT, v_BKTH = k_BTKH.transpose(0, 2, 3, 1), v_BTKH.transpose(0, 2, 1, 3)
    # Write before anything reads the cache, so XLA updates it in place (reading first copied it).
    if slots_B is None:
        cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k_BKHT, (0, 0, 0, q_offset)),
                 "v": jax.lax.dynamic_update_slice(cache["v"], v_BKTH, (0, 0, q_offset, 0))}
    else:  # one token per row at its own slot: every slot is causally visible, kv_valid_BS says which count
        rows_B = jnp.arange(x_BTD.shape[0])
        cache = {"k": cache["k"].at[rows_B, :, :, slots_B].set(k_BKHT[..., 0]),
                 "v": cache["v"].at[rows_B, :, slots_B].set(v_BKTH[:, :, 0])}
        q_offset = cache["v"].shape[2] - 1
    if x_BTD.shape[1] == 1:  # a decode step: read the cache as it lies
        attn_BTNH = reference_attention_bksh(q_BTNH, cache["k"], cache["v"], q_offset, kv_valid_BS, key_axes="BKHS")
    else:  # a prefill: any attention path, over the cache in the [B, S, K, H] layout they take
        attn_BTNH = attention(cfg, q_BTNH, cache["k"].transpose(0, 3, 1, 2), cache["v"].transpose(0, 2, 1, 3),
                              q_offset, kv_valid_BS)
    return layer_output(cfg, x_BTD, attn_BTNH, layer, matmul), cache

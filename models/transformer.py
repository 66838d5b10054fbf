"""The Qwen2/Qwen3 decoder as pure functions over the params pytree (see models/weights.py).

Layers are stacked and run under `jax.lax.scan`, so compile time does not grow with depth, and each
layer is rematerialised according to `cfg.remat`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from models.attention import attention
from models.config import ModelConfig
from models.layers import apply_rope, dense, rms_norm, rope_tables, swiglu_mlp
from models.sharding import constrain, constrain_batch, params_mesh

REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep weight matmul outputs, recompute attention scores and elementwise work.
    "matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def default_positions(attention_mask_BT: jax.Array) -> jax.Array:
    """RoPE positions that start at 0 on the first real token of each (left-padded) row."""
    return jnp.maximum(jnp.cumsum(attention_mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def segment_positions(segment_ids_BT: jax.Array) -> jax.Array:
    """RoPE positions of a packed row: 0 at the first token of each segment (a run of equal ids)."""
    T = segment_ids_BT.shape[-1]
    t_T = jnp.arange(T, dtype=jnp.int32)
    starts_BT = jnp.concatenate([jnp.ones_like(segment_ids_BT[:, :1], bool),
                                 segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=-1)
    start_BT = jax.lax.cummax(jnp.where(starts_BT, t_T, 0), axis=1)
    return t_T - start_BT


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> dict:
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, cfg.dtype), "v": jnp.zeros(shape, cfg.dtype)}


def _decoder_layer(cfg: ModelConfig, x_BTD, layer, cos, sin, kv_valid_BS, q_offset, cache=None, i=None, *,
                   segment_ids_BT=None):
    """One pre-norm block (layer i of a stacked [L, B, S, K, H] cache, if any); returns x and the cache
    with this call's keys/values written at slots q_offset... With segment_ids_BT (packed rows, no
    cache) a token attends only to its own segment."""
    layer = jax.tree.map(lambda w: w.astype(cfg.dtype), layer)
    q_BTNH, k_BTKH, v_BTKH = layer_qkv(cfg, x_BTD, layer, cos, sin)
    if cache is None:
        k_BSKH, v_BSKH = k_BTKH, v_BTKH
    else:
        # Write into the stacked cache first, then read the layer back: nothing reads the cache before
        # its in-place update, so XLA needs no copy of it (reading first cost 4 full-cache copies a layer).
        cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k_BTKH[None], (i, 0, q_offset, 0, 0)),
                 "v": jax.lax.dynamic_update_slice(cache["v"], v_BTKH[None], (i, 0, q_offset, 0, 0))}
        k_BSKH, v_BSKH = cache["k"][i], cache["v"][i]
    attn_BTNH = attention(cfg, q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS,
                          q_segment_BT=segment_ids_BT, kv_segment_BS=segment_ids_BT)
    return layer_output(cfg, x_BTD, attn_BTNH, layer), cache


def layer_qkv(cfg: ModelConfig, x_BTD, layer, cos, sin, matmul=dense):
    """A layer's queries [B, T, N, H] and keys [B, T, K, H] (normed, rotated) and values [B, T, K, H].
    `matmul` is `dense` or, over decode-layout weights, `models.decode.dense_out_in`."""
    h_BTD = rms_norm(x_BTD, layer["attn_norm"], cfg.rms_norm_eps)
    q_BTNH, k_BTKH, v_BTKH = matmul(h_BTD, layer["q"]), matmul(h_BTD, layer["k"]), matmul(h_BTD, layer["v"])
    if cfg.attention_bias:
        q_BTNH, k_BTKH, v_BTKH = q_BTNH + layer["q_bias"], k_BTKH + layer["k_bias"], v_BTKH + layer["v_bias"]
    if cfg.qk_norm:
        q_BTNH = rms_norm(q_BTNH, layer["q_norm"], cfg.rms_norm_eps)
        k_BTKH = rms_norm(k_BTKH, layer["k_norm"], cfg.rms_norm_eps)
    return apply_rope(q_BTNH, cos, sin), apply_rope(k_BTKH, cos, sin), v_BTKH


def layer_output(cfg: ModelConfig, x_BTD, attn_BTNH, layer, matmul=dense):
    """The rest of a layer after attention: output projection, residual, MLP block, residual."""
    x_BTD = x_BTD + matmul(attn_BTNH, layer["o"], contract=2)
    h_BTD = rms_norm(x_BTD, layer["mlp_norm"], cfg.rms_norm_eps)
    return x_BTD + swiglu_mlp(h_BTD, layer["gate"], layer["up"], layer["down"], matmul)


def hidden_states(params, cfg: ModelConfig, tokens_BT, kv_valid_BS, positions_BT, cache=None, q_offset=0, *,
                  segment_ids_BT=None):
    """Final-normed hidden states [B, T, D], and the updated cache when one is given.

    Without a cache the keys are this call's tokens and kv_valid is their attention mask. With a cache
    [L, B, S, K, H] the new keys are written at slots q_offset.. and kv_valid covers all S slots.
    segment_ids_BT (packed rows; no cache) confines attention to each token's own segment.
    """
    if segment_ids_BT is not None and cache is not None:
        raise ValueError("segment_ids_BT (sequence packing) is for cache-free forward passes only")
    x_BTD = params["embed"].astype(cfg.dtype)[tokens_BT]
    cos, sin = rope_tables(cfg, positions_BT)

    if cache is None:
        mesh = params_mesh(params)
        # Look up every row's tokens in the local feature shard of the table, then move rows to their
        # batch shard: the backward then scatters into that shard, not into a whole [V, D] per chip.
        x_BTD = constrain(x_BTD, mesh, (None, None, "embed"))

        def step(x_BTD, layer):
            x_BTD, _ = _decoder_layer(cfg, constrain_batch(x_BTD, mesh), layer, cos, sin, kv_valid_BS, q_offset,
                                      segment_ids_BT=segment_ids_BT)
            return constrain_batch(x_BTD, mesh), None

        if cfg.remat != "none":
            step = jax.checkpoint(step, policy=REMAT[cfg.remat], prevent_cse=False)
        x_BTD, _ = jax.lax.scan(step, constrain_batch(x_BTD, mesh), params["layers"])
    else:
        # The cache rides in the carry and only the new slots are written, so XLA updates it in place
        # instead of copying all L x S keys and values on every decode step.
        def step(carry, xs):
            x_BTD, cache = carry
            layer, i = xs
            return _decoder_layer(cfg, x_BTD, layer, cos, sin, kv_valid_BS, q_offset, cache, i), None

        (x_BTD, cache), _ = jax.lax.scan(step, (x_BTD, cache), (params["layers"], jnp.arange(cfg.num_layers)))
    return rms_norm(x_BTD, params["final_norm"], cfg.rms_norm_eps), cache


def unembedding(params, cfg: ModelConfig) -> jax.Array:
    """The [V, D] output matrix: the embedding itself when tied."""
    return (params["embed"] if cfg.tie_word_embeddings else params["lm_head"]).astype(cfg.dtype)


def model_inputs(tokens, attention_mask, positions, segment_ids=None):
    """int32 tokens, mask and RoPE positions. Without segment ids: mask all ones and positions from the
    mask by default. With segment ids (packed rows, 0 = padding): mask = segment_ids > 0 and positions
    restarting at each segment by default."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if segment_ids is not None:
        segment_ids = jnp.asarray(segment_ids, jnp.int32)
        if segment_ids.shape != tokens.shape:
            raise ValueError(f"segment_ids has shape {segment_ids.shape}, expected tokens' shape {tokens.shape}")
    if attention_mask is not None:
        mask = jnp.asarray(attention_mask, jnp.int32)
    else:
        mask = jnp.ones(tokens.shape, jnp.int32) if segment_ids is None else (segment_ids > 0).astype(jnp.int32)
    if positions is not None:
        positions = jnp.asarray(positions, jnp.int32)
    else:
        positions = default_positions(mask) if segment_ids is None else segment_positions(segment_ids)
    return tokens, mask, positions


@functools.partial(jax.jit, static_argnums=1)
def forward(params, config: ModelConfig, tokens, attention_mask=None, positions=None, *, segment_ids=None) -> jax.Array:
    """Logits [B, T, V] in float32 for int32 tokens [B, T]; attention_mask is 1 on real tokens.
    segment_ids [B, T] packs several sequences per row (see model_inputs)."""
    tokens, mask, positions = model_inputs(tokens, attention_mask, positions, segment_ids)
    h_BTD, _ = hidden_states(params, config, tokens, mask, positions,
                             segment_ids_BT=None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32))
    B, T, D = h_BTD.shape  # a 2-D dot, as in layers.dense: faster on CPU, backward included
    logits_MV = jnp.einsum("MD,VD->MV", h_BTD.reshape(B * T, D), unembedding(params, config),
                           preferred_element_type=jnp.float32)
    return logits_MV.reshape(B, T, -1)

"""Causal grouped-query attention over a key/value sequence that may be a KV cache.

Queries sit at cache slots q_offset .. q_offset+T-1; query t sees key slot s when s <= q_offset + t
and kv_valid[b, s]. Causality follows slots, not RoPE positions, so left padding just works.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from models.config import ModelConfig

MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so fully padded rows stay NaN-free


def reference_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS):
    """Plain softmax attention that builds the [T, S] score matrix; the path to check others against."""
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    scores_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                              preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(H))
    visible_BTS = causal_visibility(T, k_BSKH.shape[1], q_offset, kv_valid_BS)
    scores_BKGTS = jnp.where(visible_BTS[:, None, None], scores_BKGTS, MASKED)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BSKH.dtype)
    out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS, v_BSKH)
    return out_BTKGH.reshape(B, T, N, H)


def causal_visibility(T: int, S: int, q_offset, kv_valid_BS):
    q_slot_T = q_offset + jnp.arange(T)
    return (jnp.arange(S)[None, :] <= q_slot_T[:, None])[None] & kv_valid_BS[:, None, :].astype(bool)


def attention(cfg: ModelConfig, q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS):
    impl = cfg.attention
    if impl == "auto":
        impl = "blockwise" if k_BSKH.shape[1] >= cfg.blockwise_min_len and q_BTNH.shape[1] > 1 else "reference"
    if impl == "reference":
        return reference_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS)
    raise NotImplementedError(f"attention implementation {impl!r}")

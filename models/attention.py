"""Causal grouped-query attention over a key/value sequence that may be a KV cache.

Queries sit at cache slots q_offset .. q_offset+T-1; query t sees key slot s when s <= q_offset + t
and kv_valid[b, s]. Causality follows slots, not RoPE positions, so left padding just works. With
segment ids (sequence packing: several sequences in one row) query t also needs
q_segment[b, t] == kv_segment[b, s], so attention never crosses from one packed sequence to another.

Three paths: `reference_attention` builds the [T, S] scores; `blockwise_attention` is FlashAttention-2
in pure JAX (any backend, memory O(T + block^2) per head); "cudnn" is jax.nn.dot_product_attention's
fused GPU kernel.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from models.config import ModelConfig

MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so fully padded rows stay NaN-free


def reference_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS, *, q_segment_BT=None, kv_segment_BS=None):
    """Plain softmax attention that builds the [T, S] score matrix; the path to check others against."""
    # Batch axes (B, K) first on every operand, so XLA's CPU dots run as batched matmuls without
    # transposing inside the dot and its gradients.
    return reference_attention_bksh(q_BTNH, k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3), q_offset,
                                    kv_valid_BS, q_segment_BT=q_segment_BT, kv_segment_BS=kv_segment_BS)


def reference_attention_bksh(q_BTNH, k, v_BKSH, q_offset, kv_valid_BS, *, q_segment_BT=None,
                             kv_segment_BS=None, key_axes: str = "BKSH"):
    """`reference_attention` over values laid out [B, K, S, H] and keys laid out `key_axes`: "BKSH", or
    "BKHS" as models.decode keeps its key caches (the scores dot then reads them in place)."""
    B, T, N, H = q_BTNH.shape
    K = k.shape[1]
    q_BKGTH = q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    scores_BKGTS = jnp.einsum(f"BKGTH,{key_axes}->BKGTS", q_BKGTH, k,
                              preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(H))
    visible_BTS = causal_visibility(T, v_BKSH.shape[2], q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS)
    scores_BKGTS = jnp.where(visible_BTS[:, None, None], scores_BKGTS, MASKED)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1).astype(v_BKSH.dtype)
    out_BKGTH = jnp.einsum("BKGTS,BKSH->BKGTH", probs_BKGTS, v_BKSH)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def causal_visibility(T: int, S: int, q_offset, kv_valid_BS, q_segment_BT=None, kv_segment_BS=None):
    """[B, T, S] bool: causal, valid keys and, given segment ids, the query's own segment only."""
    q_slot_T = q_offset + jnp.arange(T)
    visible_BTS = (jnp.arange(S)[None, :] <= q_slot_T[:, None])[None] & kv_valid_BS[:, None, :].astype(bool)
    if q_segment_BT is not None:
        visible_BTS &= q_segment_BT[:, :, None] == kv_segment_BS[:, None, :]
    return visible_BTS


def blockwise_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS, block: int, *, q_segment_BT=None,
                        kv_segment_BS=None):
    """Same result as `reference_attention` on every row that sees at least one key, without the [T, S]
    scores: online softmax over tiles of `block` queries x `block` keys, skipping tiles that lie wholly
    above the causal diagonal, or, with segment ids, wholly in other segments of every row (segments
    are contiguous runs, and query t's segment is that of key slot q_offset + t). Rows that see no key
    (left padding) give zeros and pass no gradient.
    """
    B, T, N, H = q_BTNH.shape
    S, K = k_BSKH.shape[1], k_BSKH.shape[2]
    bq, bk = min(block, T), min(block, S)
    pad_t, pad_s = -T % bq, -S % bk
    # Batch axes (B, K) first on every operand, as in reference_attention: each tile's dots are plain
    # batched matmuls whose outputs are already [B, K, G, T, S]. With queries [B, T, K, G, H] XLA's CPU
    # dot wrote the scores transposed, and every elementwise op of the tile read them with a stride.
    q_BKGTH = jnp.pad(q_BTNH, ((0, 0), (0, pad_t), (0, 0), (0, 0))).reshape(
        B, T + pad_t, K, N // K, H).transpose(0, 2, 3, 1, 4)
    k_BKSH, v_BKSH = (jnp.pad(x, ((0, 0), (0, pad_s), (0, 0), (0, 0))).transpose(0, 2, 1, 3) for x in (k_BSKH, v_BSKH))
    kv_valid_BS = jnp.pad(kv_valid_BS.astype(bool), ((0, 0), (0, pad_s)))  # padded keys are invisible
    if q_segment_BT is None:  # one segment per row: every comparison is true
        q_segment_BT, kv_segment_BS = jnp.zeros((B, T), jnp.int32), jnp.zeros((B, S), jnp.int32)
    q_segment_BT = jnp.pad(jnp.asarray(q_segment_BT, jnp.int32), ((0, 0), (0, pad_t)))
    kv_segment_BS = jnp.pad(jnp.asarray(kv_segment_BS, jnp.int32), ((0, 0), (0, pad_s)))
    q_offset = jnp.asarray(q_offset, jnp.int32)
    out_BKGTH = _flash(bq, bk, q_BKGTH, k_BKSH, v_BKSH, q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T + pad_t, N, H)[:, :T]


def _tile_scores(q_BKGTH, k_BKSH, valid_BS, q_segment_BT, kv_segment_BS, q_start, k_start):
    """Scaled scores of one tile in float32, -inf where a key is not visible."""
    bq, bk, H = q_BKGTH.shape[3], k_BKSH.shape[2], q_BKGTH.shape[-1]
    scores_BKGTS = jnp.einsum("BKGTH,BKSH->BKGTS", q_BKGTH, k_BKSH,
                              preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(H))
    # Slots relative to the key tile.
    visible_BTS = causal_visibility(bq, bk, q_start - k_start, valid_BS, q_segment_BT, kv_segment_BS)
    return jnp.where(visible_BTS[:, None, None], scores_BKGTS, -jnp.inf)


def _segment_runs(kv_segment_BS):
    """[S] first and last slot of the run of equal segment ids around each key slot, the widest over
    the batch. Packed segments are contiguous runs, so tiles outside these bounds are wholly masked."""
    S = kv_segment_BS.shape[1]
    s_S = jnp.arange(S, dtype=jnp.int32)
    change_BS = kv_segment_BS[:, 1:] != kv_segment_BS[:, :-1]
    edge = jnp.ones_like(kv_segment_BS[:, :1], bool)
    first_BS = jax.lax.cummax(jnp.where(jnp.concatenate([edge, change_BS], 1), s_S, 0), axis=1)
    last_BS = jax.lax.cummin(jnp.where(jnp.concatenate([change_BS, edge], 1), s_S, S - 1), axis=1, reverse=True)
    return first_BS.min(axis=0), last_BS.max(axis=0)


def _first_kv_block(run_first_S, q_offset, i, bq, bk):
    """First key tile that query tile i reaches: earlier ones hold only other segments."""
    slot = jnp.clip(q_offset + i * bq, 0, run_first_S.shape[0] - 1)
    return run_first_S[slot] // bk


def _query_blocks_end(run_last_S, q_offset, j, bq, bk, nq):
    """One past the last query tile that reaches key tile j: later ones hold only other segments."""
    slot = jnp.minimum(j * bk + bk - 1, run_last_S.shape[0] - 1)
    return jnp.clip((run_last_S[slot] - q_offset) // bq + 1, 0, nq)


def _visible_kv_blocks(q_offset, i, bq, bk, nk):
    """Number of key tiles that query tile i reaches: later ones lie above the causal diagonal."""
    return jnp.clip((q_offset + (i + 1) * bq - 1) // bk + 1, 0, nk)


def _first_query_block(q_offset, j, bq, bk, nq):
    """First query tile whose last slot reaches key tile j."""
    return jnp.clip((j * bk - q_offset) // bq, 0, nq)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(bq, bk, q_BKGTH, k_BKSH, v_BKSH, q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS):
    return _flash_fwd(bq, bk, q_BKGTH, k_BKSH, v_BKSH, q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS)[0]


def _flash_fwd(bq, bk, q_BKGTH, k_BKSH, v_BKSH, q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS):
    B, K, G, T, H = q_BKGTH.shape
    nq, nk = T // bq, k_BKSH.shape[2] // bk
    run_first_S, _ = _segment_runs(kv_segment_BS)

    def q_block(i, carry):
        out_BKGTH, lse_BKGT = carry
        q_blk = jax.lax.dynamic_slice_in_dim(q_BKGTH, i * bq, bq, axis=3)
        qseg_blk = jax.lax.dynamic_slice_in_dim(q_segment_BT, i * bq, bq, axis=1)
        q_start = q_offset + i * bq

        def kv_block(j, c):
            m_BKGT, l_BKGT, acc_BKGTH = c
            k_blk, v_blk = (jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2) for x in (k_BKSH, v_BKSH))
            valid_BS, kvseg_blk = (jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=1)
                                   for x in (kv_valid_BS, kv_segment_BS))
            scores_BKGTS = _tile_scores(q_blk, k_blk, valid_BS, qseg_blk, kvseg_blk, q_start, j * bk)
            # m starts finite (MASKED), so invisible scores (-inf) give exp(-inf) = 0, never NaN.
            m_new = jnp.maximum(m_BKGT, scores_BKGTS.max(axis=-1))
            p_BKGTS = jnp.exp(scores_BKGTS - m_new[..., None])
            rescale = jnp.exp(m_BKGT - m_new)
            acc_BKGTH = acc_BKGTH * rescale[..., None] + jnp.einsum(
                "BKGTS,BKSH->BKGTH", p_BKGTS.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
            return m_new, l_BKGT * rescale + p_BKGTS.sum(axis=-1), acc_BKGTH

        init = (jnp.full((B, K, G, bq), MASKED, jnp.float32), jnp.zeros((B, K, G, bq), jnp.float32),
                jnp.zeros((B, K, G, bq, H), jnp.float32))
        m_BKGT, l_BKGT, acc_BKGTH = jax.lax.fori_loop(_first_kv_block(run_first_S, q_offset, i, bq, bk),
                                                      _visible_kv_blocks(q_offset, i, bq, bk, nk), kv_block, init)
        # l >= 1 on any row that saw a key; l = 0 (acc = 0) on rows that saw none.
        l_BKGT = jnp.maximum(l_BKGT, jnp.finfo(jnp.float32).tiny)
        out_blk = (acc_BKGTH / l_BKGT[..., None]).astype(q_BKGTH.dtype)
        out_BKGTH = jax.lax.dynamic_update_slice_in_dim(out_BKGTH, out_blk, i * bq, axis=3)
        lse_BKGT = jax.lax.dynamic_update_slice_in_dim(lse_BKGT, m_BKGT + jnp.log(l_BKGT), i * bq, axis=3)
        return out_BKGTH, lse_BKGT

    out_BKGTH, lse_BKGT = jax.lax.fori_loop(
        0, nq, q_block, (jnp.zeros_like(q_BKGTH), jnp.zeros((B, K, G, T), jnp.float32)))
    residuals = (q_BKGTH, k_BKSH, v_BKSH, q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS, out_BKGTH, lse_BKGT)
    return out_BKGTH, residuals


def _flash_bwd(bq, bk, residuals, dout_BKGTH):
    """FlashAttention-2 backward: per key tile, walk the query tiles that see it, recomputing P."""
    q_BKGTH, k_BKSH, v_BKSH, q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS, out_BKGTH, lse_BKGT = residuals
    T, H = q_BKGTH.shape[3], q_BKGTH.shape[-1]
    nq, nk = T // bq, k_BKSH.shape[2] // bk
    _, run_last_S = _segment_runs(kv_segment_BS)
    scale = 1.0 / jnp.sqrt(jnp.float32(H))
    # rowsum(dO * O): the softmax Jacobian's correction term, one number per query row.
    delta_BKGT = jnp.einsum("BKGTH,BKGTH->BKGT", dout_BKGTH.astype(jnp.float32), out_BKGTH.astype(jnp.float32))

    def kv_block(j, carry):
        dq_BKGTH, dk_BKSH, dv_BKSH = carry
        k_blk, v_blk = (jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2) for x in (k_BKSH, v_BKSH))
        valid_BS, kvseg_blk = (jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=1)
                               for x in (kv_valid_BS, kv_segment_BS))

        def q_block(i, c):
            dq_BKGTH, dk_blk, dv_blk = c
            q_blk, dout_blk, dq_blk, lse_blk, delta_blk = (
                jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=3)
                for x in (q_BKGTH, dout_BKGTH, dq_BKGTH, lse_BKGT, delta_BKGT))
            qseg_blk = jax.lax.dynamic_slice_in_dim(q_segment_BT, i * bq, bq, axis=1)
            scores_BKGTS = _tile_scores(q_blk, k_blk, valid_BS, qseg_blk, kvseg_blk, q_offset + i * bq, j * bk)
            p_BKGTS = jnp.exp(scores_BKGTS - lse_blk[..., None])
            dv_blk += jnp.einsum("BKGTS,BKGTH->BKSH", p_BKGTS.astype(dout_blk.dtype), dout_blk,
                                 preferred_element_type=jnp.float32)
            dp_BKGTS = jnp.einsum("BKGTH,BKSH->BKGTS", dout_blk, v_blk, preferred_element_type=jnp.float32)
            ds_BKGTS = (p_BKGTS * (dp_BKGTS - delta_blk[..., None]) * scale).astype(q_blk.dtype)
            dq_blk += jnp.einsum("BKGTS,BKSH->BKGTH", ds_BKGTS, k_blk, preferred_element_type=jnp.float32)
            dk_blk += jnp.einsum("BKGTS,BKGTH->BKSH", ds_BKGTS, q_blk, preferred_element_type=jnp.float32)
            return jax.lax.dynamic_update_slice_in_dim(dq_BKGTH, dq_blk, i * bq, axis=3), dk_blk, dv_blk

        zeros_BKSH = jnp.zeros(k_blk.shape, jnp.float32)
        dq_BKGTH, dk_blk, dv_blk = jax.lax.fori_loop(
            _first_query_block(q_offset, j, bq, bk, nq), _query_blocks_end(run_last_S, q_offset, j, bq, bk, nq),
            q_block, (dq_BKGTH, zeros_BKSH, zeros_BKSH))
        dk_BKSH = jax.lax.dynamic_update_slice_in_dim(dk_BKSH, dk_blk, j * bk, axis=2)
        dv_BKSH = jax.lax.dynamic_update_slice_in_dim(dv_BKSH, dv_blk, j * bk, axis=2)
        return dq_BKGTH, dk_BKSH, dv_BKSH

    init = (jnp.zeros(q_BKGTH.shape, jnp.float32), jnp.zeros(k_BKSH.shape, jnp.float32),
            jnp.zeros(v_BKSH.shape, jnp.float32))
    dq_BKGTH, dk_BKSH, dv_BKSH = jax.lax.fori_loop(0, nk, kv_block, init)
    return (dq_BKGTH.astype(q_BKGTH.dtype), dk_BKSH.astype(k_BKSH.dtype), dv_BKSH.astype(v_BKSH.dtype),
            None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def cudnn_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS, *, q_segment_BT=None, kv_segment_BS=None):
    """cuDNN's fused kernel (GPU only, bf16/fp16 inputs). Left padding and a cache offset do not fit its
    causal/padding mask types, so visibility goes in as a mask, which cuDNN turns into a [B, 1, T, S]
    bias: O(T*S) memory shared by all heads, unlike the reference's per-head float32 scores."""
    if jax.default_backend() != "gpu":
        raise RuntimeError(f"attention='cudnn' needs a GPU (cuDNN); this process runs JAX on "
                           f"{jax.default_backend()!r}: use 'blockwise' or 'auto' there")
    T, S = q_BTNH.shape[1], k_BSKH.shape[1]
    visible_B1TS = causal_visibility(T, S, q_offset, kv_valid_BS, q_segment_BT, kv_segment_BS)[:, None]
    return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=visible_B1TS, implementation="cudnn")


def attention(cfg: ModelConfig, q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS, *, q_segment_BT=None,
              kv_segment_BS=None):
    """Dispatch on cfg.attention; segment ids (both or neither) keep packed sequences apart."""
    if (q_segment_BT is None) != (kv_segment_BS is None):
        raise ValueError("pass both q_segment_BT and kv_segment_BS, or neither")
    segments = dict(q_segment_BT=q_segment_BT, kv_segment_BS=kv_segment_BS)
    impl = cfg.attention
    if impl == "auto":
        impl = "blockwise" if k_BSKH.shape[1] >= cfg.blockwise_min_len and q_BTNH.shape[1] > 1 else "reference"
    if impl == "reference":
        return reference_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS, **segments)
    if impl == "blockwise":
        return blockwise_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS, cfg.attention_block, **segments)
    if impl == "cudnn":
        return cudnn_attention(q_BTNH, k_BSKH, v_BSKH, q_offset, kv_valid_BS, **segments)
    raise NotImplementedError(f"attention implementation {impl!r}")

"""Building blocks of the decoder: RMSNorm, rotary embeddings, SwiGLU MLP."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from models.config import ModelConfig


def rms_norm(x_BTD: jax.Array, weight_D: jax.Array, eps: float) -> jax.Array:
    """Normalise in float32 (as the reference does), then scale in the input dtype."""
    x32 = x_BTD.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight_D.astype(x_BTD.dtype) * normed.astype(x_BTD.dtype)


def rope_tables(cfg: ModelConfig, positions_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, head_dim/2] in float32, with YaRN's attention factor folded in."""
    inv_freq, mscale = cfg.rope_frequencies()
    angles_BTF = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.cos(angles_BTF) * mscale, jnp.sin(angles_BTF) * mscale


def apply_rope(x_BTNH: jax.Array, cos_BTF: jax.Array, sin_BTF: jax.Array) -> jax.Array:
    """Rotate the two halves of each head (the Qwen / Llama "rotate_half" convention)."""
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    cos, sin = cos_BTF[:, :, None, :], sin_BTF[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTNH.dtype)


def dense(x, w, contract: int = 1) -> jax.Array:
    """Contract the last `contract` axes of x with the first ones of w, as one 2-D [M, I] @ [I, O] matmul
    (M = all leading axes of x). On CPU, XLA's 2-D dots and their weight gradients beat the 3-D einsums
    ("BTD,DNH->BTNH"), which it lowers with extra transposes."""
    lead, inner, out = x.shape[:x.ndim - contract], w.shape[:contract], w.shape[contract:]
    x_MI, w_IO = x.reshape(-1, math.prod(inner)), w.reshape(math.prod(inner), -1)
    return jnp.einsum("MI,IO->MO", x_MI, w_IO).reshape(*lead, *out)


def swiglu_mlp(x_BTD: jax.Array, gate_DF: jax.Array, up_DF: jax.Array, down_FD: jax.Array, matmul=dense) -> jax.Array:
    gate_BTF, up_BTF = matmul(x_BTD, gate_DF), matmul(x_BTD, up_DF)
    return matmul(jax.nn.silu(gate_BTF) * up_BTF, down_FD)

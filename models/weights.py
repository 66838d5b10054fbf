"""Every weight declared once: its place in the pytree, shape, logical axes, init and Hugging Face name.

Import, export, sharding, abstract shapes and random init all read `weight_table`, so they cannot
drift apart. Layer weights are stacked on a leading "layers" axis for `jax.lax.scan`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Weight:
    path: tuple[str, ...]  # keys into the params pytree
    hf_name: str  # "{i}" stands for the layer index
    shape: tuple[int, ...]  # our layout, without the stacked layer axis
    axes: tuple[str | None, ...]  # logical axis names of `shape`
    layout: str  # how the Hugging Face tensor maps onto ours, see `from_hf`
    init: str  # "normal" | "ones" | "zeros"

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_name

    @property
    def key(self) -> str:
        return ".".join(self.path)


def weight_table(cfg: ModelConfig) -> list[Weight]:
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn, mlp = "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    table = [
        Weight(("embed",), "model.embed_tokens.weight", (V, D), ("vocab", "embed"), "same", "normal"),
        Weight(("layers", "attn_norm"), "model.layers.{i}.input_layernorm.weight", (D,), ("norm",), "same", "ones"),
        Weight(("layers", "q"), f"{attn}.q_proj.weight", (D, N, H), ("embed", "heads", "head_dim"), "out_heads",
               "normal"),
        Weight(("layers", "k"), f"{attn}.k_proj.weight", (D, K, H), ("embed", "kv_heads", "head_dim"), "out_heads",
               "normal"),
        Weight(("layers", "v"), f"{attn}.v_proj.weight", (D, K, H), ("embed", "kv_heads", "head_dim"), "out_heads",
               "normal"),
        Weight(("layers", "o"), f"{attn}.o_proj.weight", (N, H, D), ("heads", "head_dim", "embed"), "in_heads",
               "normal"),
        Weight(("layers", "mlp_norm"), "model.layers.{i}.post_attention_layernorm.weight", (D,), ("norm",), "same",
               "ones"),
        Weight(("layers", "gate"), f"{mlp}.gate_proj.weight", (D, F), ("embed", "mlp"), "transpose", "normal"),
        Weight(("layers", "up"), f"{mlp}.up_proj.weight", (D, F), ("embed", "mlp"), "transpose", "normal"),
        Weight(("layers", "down"), f"{mlp}.down_proj.weight", (F, D), ("mlp", "embed"), "transpose", "normal"),
        Weight(("final_norm",), "model.norm.weight", (D,), ("norm",), "same", "ones"),
    ]
    if cfg.attention_bias:
        table += [
            Weight(("layers", "q_bias"), f"{attn}.q_proj.bias", (N, H), ("heads", "head_dim"), "heads", "zeros"),
            Weight(("layers", "k_bias"), f"{attn}.k_proj.bias", (K, H), ("kv_heads", "head_dim"), "heads", "zeros"),
            Weight(("layers", "v_bias"), f"{attn}.v_proj.bias", (K, H), ("kv_heads", "head_dim"), "heads", "zeros"),
        ]
    if cfg.qk_norm:
        table += [
            Weight(("layers", "q_norm"), f"{attn}.q_norm.weight", (H,), ("norm",), "same", "ones"),
            Weight(("layers", "k_norm"), f"{attn}.k_norm.weight", (H,), ("norm",), "same", "ones"),
        ]
    if not cfg.tie_word_embeddings:
        # Kept [V, D] like the embedding so tied and untied models share one logits einsum.
        table.append(Weight(("lm_head",), "lm_head.weight", (V, D), ("vocab", "embed"), "same", "normal"))
    return table


def full_shape(w: Weight, cfg: ModelConfig) -> tuple[int, ...]:
    return ((cfg.num_layers,) + w.shape) if w.stacked else w.shape


def full_axes(w: Weight) -> tuple[str | None, ...]:
    return (("layers",) + w.axes) if w.stacked else w.axes


# layout -> the per-layer Hugging Face shape, from ours. Torch Linear weights are [out, in], so the
# "transposed" layouts flip axes before the head dims are split out or merged.
_HF_SHAPE = {
    "same": lambda s: s,
    "transpose": lambda s: s[::-1],
    "heads": lambda s: (s[0] * s[1],),  # [(N H)] <-> [N, H]
    "out_heads": lambda s: (s[1] * s[2], s[0]),  # [(N H), D] <-> [D, N, H]
    "in_heads": lambda s: (s[2], s[0] * s[1]),  # [D, (N H)] <-> [N, H, D]
}
_TRANSPOSED = ("transpose", "out_heads", "in_heads")


def hf_shape(w: Weight) -> tuple[int, ...]:
    """The shape of one (per-layer) Hugging Face tensor for this weight."""
    return _HF_SHAPE[w.layout](w.shape)


def from_hf(w: Weight, x: np.ndarray) -> np.ndarray:
    """One Hugging Face tensor in our layout."""
    return (x.T if w.layout in _TRANSPOSED else x).reshape(w.shape)


def to_hf(w: Weight, x: np.ndarray) -> np.ndarray:
    """Inverse of `from_hf`."""
    target = hf_shape(w)
    return x.reshape(target[::-1]).T if w.layout in _TRANSPOSED else x.reshape(target)


def get_path(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def map_weights(cfg: ModelConfig, fn: Callable[[Weight], object]) -> dict:
    """Build a params-shaped pytree by calling `fn` on every declared weight."""
    tree: dict = {}
    for w in weight_table(cfg):
        set_path(tree, w.path, fn(w))
    return tree


def abstract_params(cfg: ModelConfig) -> dict:
    dtype = jnp.dtype(cfg.param_dtype)
    return map_weights(cfg, lambda w: jax.ShapeDtypeStruct(full_shape(w, cfg), dtype))


def init_params(cfg: ModelConfig, key: jax.Array, std: float = 0.02) -> dict:
    """Random init (normal(0, std) matrices, unit norms, zero biases), as transformers does."""
    dtype = jnp.dtype(cfg.param_dtype)
    table = weight_table(cfg)
    keys = dict(zip((w.key for w in table), jax.random.split(key, len(table))))

    def init(w: Weight):
        shape = full_shape(w, cfg)
        if w.init == "ones":
            return jnp.ones(shape, dtype)
        if w.init == "zeros":
            return jnp.zeros(shape, dtype)
        return (std * jax.random.normal(keys[w.key], shape, jnp.float32)).astype(dtype)

    return map_weights(cfg, init)

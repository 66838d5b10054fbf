"""Model configuration: Hugging Face `config.json` for Qwen2/Qwen3 in, a hashable dataclass out.

The dataclass is frozen so it can be a static argument of `jax.jit`. Runtime choices (compute dtype,
remat policy, attention path) live beside the architecture so one object describes a compiled model.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
REMAT_POLICIES = ("none", "full", "matmuls")
ATTENTION_IMPLS = ("auto", "reference", "blockwise", "cudnn")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config.json that does not describe a model this package can run."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str  # "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    # YaRN as sorted (key, value) pairs so the dataclass stays hashable; () means plain RoPE.
    rope_scaling: tuple = ()
    # Keys of the source config.json we do not interpret (token ids, torch_dtype, ...), kept for export.
    hf_extra: tuple = ()
    # Runtime choices, not part of the checkpoint.
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "full"
    attention: str = "auto"
    attention_block: int = 512  # blockwise attention tile (queries and keys)
    blockwise_min_len: int = 2048  # "auto" switches to blockwise from this sequence length

    def __post_init__(self):
        if self.arch not in ARCHITECTURES.values():
            raise ConfigError(f"unknown arch {self.arch!r}; expected one of {sorted(ARCHITECTURES.values())}")
        if self.head_dim % 2:  # RoPE rotates pairs of dimensions
            raise ConfigError(f"head_dim={self.head_dim} must be even (RoPE rotates pairs of dimensions)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        for field, value, allowed in (("remat", self.remat, REMAT_POLICIES),
                                      ("attention", self.attention, ATTENTION_IMPLS),
                                      ("dtype", self.dtype, DTYPES), ("param_dtype", self.param_dtype, DTYPES)):
            if value not in allowed:
                raise ConfigError(f"{field}={value!r}; expected one of {allowed}")

    @property
    def attention_bias(self) -> bool:
        return self.arch == "qwen2"

    @property
    def qk_norm(self) -> bool:
        return self.arch == "qwen3"

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- Hugging Face config.json -------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **runtime) -> "ModelConfig":
        archs = hf.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"{source}: architectures must be a list of class names, got {json.dumps(archs)[:200]}")
        arch_name = archs[0] if archs else {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}.get(
            hf.get("model_type", ""), "")
        if arch_name not in ARCHITECTURES:
            raise ConfigError(
                f"{source}: architecture {arch_name or hf.get('model_type')!r} is not supported; "
                f"coderl runs {sorted(ARCHITECTURES)}")

        # Variants whose weights or attention pattern this model does not implement: refuse them by
        # name rather than load a model that silently computes something else.
        if _sliding_layers(hf, source):
            raise ConfigError(f"{source}: use_sliding_window=true (sliding-window attention in layers "
                              f">= max_window_layers) is not supported")
        if arch_name == "Qwen3ForCausalLM" and hf.get("attention_bias"):
            raise ConfigError(f"{source}: attention_bias=true (q/k/v/o biases on Qwen3) is not supported")
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):  # transformers: swish is SiLU
            raise ConfigError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (the MLP is SwiGLU)")

        def need(key):
            if key not in hf:
                raise ConfigError(f"{source}: missing required field {key!r}")
            return hf[key]

        def size(key, default=None):  # a count or length: a JSON integer >= 1 (null takes the default)
            value = need(key) if default is None else hf.get(key)
            value = default if value is None else value
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{source}: {key} must be an integer >= 1, got {value!r}")
            return value

        def positive(key, value):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ConfigError(f"{source}: {key} must be a number > 0, got {value!r}")
            return float(value)

        # transformers >= 5 writes RoPE settings as "rope_parameters" (rope_theta inside it); as it
        # does, a legacy "rope_scaling" replaces them whole, and rope_theta falls back to the top level.
        rope_key = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
        rope = hf.get(rope_key) or {}
        if not isinstance(rope, dict):
            raise ConfigError(f"{source}: {rope_key} must be an object, got {type(rope).__name__}")
        hidden, heads = size("hidden_size"), size("num_attention_heads")
        # Qwen3Config's own default is 128, not hidden / heads, when config.json has no head_dim.
        qwen3_default = arch_name == "Qwen3ForCausalLM" and "head_dim" not in hf
        head_dim = size("head_dim", 128 if qwen3_default else hidden // heads)
        known = {"architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                 "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
                 "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "rope_scaling", "rope_parameters"}
        extra = tuple(sorted((k, json.dumps(v)) for k, v in hf.items() if k not in known))
        fields = dict(
            arch=ARCHITECTURES[arch_name],
            vocab_size=size("vocab_size"),
            hidden_size=hidden,
            intermediate_size=size("intermediate_size"),
            num_layers=size("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=size("num_key_value_heads", heads),
            head_dim=head_dim,
            rope_theta=positive("rope_theta", _first_set(rope.get("rope_theta"), hf.get("rope_theta"), 10000.0)),
            rms_norm_eps=positive("rms_norm_eps", hf.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=size("max_position_embeddings", 32768),
            rope_scaling=_parse_rope_scaling(rope, rope_key, hf, source),
            hf_extra=extra,
        )
        try:
            return cls(**fields, **runtime)
        except ConfigError as e:  # the checks across fields (__post_init__), named in the file they came from
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_file(cls, path: str | Path, **runtime) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            hf = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is no error
        except (ValueError, RecursionError) as e:  # ValueError: also undecodable bytes
            raise ConfigError(f"{path}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(hf, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(hf, source=str(path), **runtime)

    def to_hf_dict(self) -> dict[str, Any]:
        hf = {k: json.loads(v) for k, v in self.hf_extra}
        arch_name = {v: k for k, v in ARCHITECTURES.items()}[self.arch]
        hf.update(
            architectures=[arch_name],
            model_type=self.arch,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            rope_scaling=dict(self.rope_scaling) if self.rope_scaling else None,
            torch_dtype=self.param_dtype,  # read by transformers < 5 and SGLang
            dtype=self.param_dtype,  # read by transformers >= 5
            hidden_act="silu",
        )
        # Qwen2Config has no head_dim field: write it only where it overrides hidden / heads.
        if self.arch == "qwen3" or self.head_dim != self.hidden_size // self.num_heads:
            hf["head_dim"] = self.head_dim
        if self.arch == "qwen2":
            hf.setdefault("use_sliding_window", False)
        else:
            hf.setdefault("attention_bias", False)
        return hf

    # ---- RoPE ---------------------------------------------------------------------------------
    def rope_frequencies(self) -> tuple[np.ndarray, float]:
        """Inverse frequencies [head_dim/2] and the attention factor that multiplies cos and sin."""
        d, base = self.head_dim, self.rope_theta
        inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        if not self.rope_scaling:
            return inv_freq, 1.0
        rs = dict(self.rope_scaling)
        l0 = float(rs["original_max_position_embeddings"])
        # As transformers: a null factor is the context extension, null betas take the defaults.
        s = float(rs["factor"]) if rs.get("factor") is not None else self.max_position_embeddings / l0
        beta_fast, beta_slow = float(rs.get("beta_fast") or 32.0), float(rs.get("beta_slow") or 1.0)

        def corr(rotations):  # dimension index whose wavelength fits `rotations` turns in l0 tokens
            return d * math.log(l0 / (2 * math.pi * rotations)) / (2 * math.log(base))

        low, high = corr(beta_fast), corr(beta_slow)
        if rs.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001  # avoid a zero-width ramp
        ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0.0, 1.0)
        inv_freq = inv_freq / s * ramp + inv_freq * (1.0 - ramp)

        def yarn_mscale(scale, m=1.0):
            return 0.1 * m * math.log(scale) + 1.0 if scale > 1 else 1.0

        mscale = rs.get("attention_factor")
        if mscale is None:
            m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")  # DeepSeek-style configs
            mscale = yarn_mscale(s, m) / yarn_mscale(s, m_all) if m and m_all else yarn_mscale(s)
        return inv_freq, float(mscale)


def _parse_rope_scaling(rs: dict[str, Any], key: str, hf: dict[str, Any], source: str) -> tuple:
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return ()
    if kind != "yarn":
        raise ConfigError(f"{source}: {key} type {kind!r} is not supported (only 'yarn')")
    if "factor" not in rs:
        raise ConfigError(f"{source}: {key} is missing 'factor'")
    if rs["factor"] is not None and not (isinstance(rs["factor"], (int, float)) and not isinstance(rs["factor"], bool)
                                         and 0 < rs["factor"] < float("inf")):
        raise ConfigError(f"{source}: {key}.factor must be a number > 0, got {rs['factor']!r}")
    numbers = {k: v for k, v in rs.items() if k in ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                                                     "attention_factor", "original_max_position_embeddings")}
    for k, v in numbers.items():  # a string here failed at the first request, not at load
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < float("inf")):
            raise ConfigError(f"{source}: {key}.{k} must be a number >= 0, got {v!r}")
    keep = {k: v for k, v in rs.items() if k not in ("type", "rope_theta")}
    keep["rope_type"] = "yarn"
    # Where transformers finds L0: a top-level key first (Phi-3 style), else the training context.
    l0 = hf.get("original_max_position_embeddings") or rs.get("original_max_position_embeddings")
    keep["original_max_position_embeddings"] = l0 or hf.get("max_position_embeddings", 32768)
    return tuple(sorted(keep.items()))


def _first_set(*values):
    """The first value that is not None: 0 is a value (refused by its check), not a missing one."""
    return next(v for v in values if v is not None)


def _sliding_layers(hf: dict[str, Any], source: str) -> bool:
    """Whether transformers would give any layer sliding-window attention (Qwen2/Qwen3 configs)."""
    if not hf.get("use_sliding_window") or hf.get("sliding_window", 4096) is None:
        return False
    if hf.get("layer_types") is not None:
        if not isinstance(hf["layer_types"], list):
            raise ConfigError(f"{source}: layer_types must be a list, got {json.dumps(hf['layer_types'])[:200]}")
        return "sliding_attention" in hf["layer_types"]
    counts = {key: hf.get(key, default) for key, default in (("max_window_layers", 28), ("num_hidden_layers", 0))}
    for key, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
    return counts["max_window_layers"] < counts["num_hidden_layers"]

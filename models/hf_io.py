"""Hugging Face checkpoint folders in and out, driven by the one weight table in models/weights.py.

Import streams one tensor at a time from (possibly sharded) safetensors and places each stacked
weight straight onto its target sharding. Export writes config.json plus safetensors shards that
`transformers.AutoModelForCausalLM.from_pretrained` loads; a rollout server reloads this folder after
every training step.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from models.config import DTYPES, ModelConfig
from models.sharding import param_shardings
from models.weights import Weight, from_hf, full_shape, get_path, hf_shape, map_weights, to_hf, weight_table

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot become a correct model; the message names the file and tensor."""


def _weight_files(path: Path) -> dict[str, Path]:
    """Map every tensor name in the folder to the safetensors file that holds it."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
            raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f for f in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names, got "
                                  f"{json.dumps(weight_map)[:200]}")
        files = {name: path / fname for name, fname in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise CheckpointError(f"{index}: lists shard {f.name}, which is missing from {path}")
        return files
    shards = [path / SINGLE_FILE] if (path / SINGLE_FILE).is_file() else sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no {SINGLE_FILE}, {INDEX_FILE} or *.safetensors file")
    files = {}
    for shard in shards:
        with _open(shard) as f:
            for name in f.keys():
                if name in files:
                    raise CheckpointError(f"{path}: tensor {name} is in both {files[name].name} and {shard.name}, "
                                          f"and no {INDEX_FILE} says which to load")
                files[name] = shard
    return files


def _open(file: Path):
    try:
        return safe_open(str(file), framework="np")
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise CheckpointError(f"{file}: unreadable safetensors file ({e})") from None


class _Reader:
    """Keeps each shard open while tensors are streamed out of it."""

    def __init__(self, files: dict[str, Path]):
        self.files, self.handles = files, {}

    def read(self, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
        file = self.files[name]
        if file not in self.handles:
            self.handles[file] = _open(file)
        try:
            x = self.handles[file].get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"{file}: tensor {name!r} cannot be read ({e})") from None
        if tuple(x.shape) != tuple(expected_shape):
            raise CheckpointError(
                f"{file}: tensor {name!r} has shape {tuple(x.shape)}, the config implies {tuple(expected_shape)}")
        return x


def _hf_names(w: Weight, cfg: ModelConfig) -> list[str]:
    return [w.hf_name.format(i=i) for i in range(cfg.num_layers)] if w.stacked else [w.hf_name]


def load_hf(path, dtype=None, mesh=None, **runtime) -> tuple[ModelConfig, dict]:
    """Load a Hugging Face Qwen2/Qwen3 folder as (config, params).

    dtype sets the parameter and compute dtype (default: the checkpoint's dtype / torch_dtype, else float32);
    with a mesh every weight lands directly on its NamedSharding. Extra keyword arguments set runtime
    config fields (remat, attention, ...).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder")
    cfg = ModelConfig.from_file(path)
    if dtype is None:
        extra = dict(cfg.hf_extra)  # transformers >= 5 writes "dtype", older versions "torch_dtype"
        dtype = json.loads(extra.get("dtype", extra.get("torch_dtype", '"float32"')))
        dtype = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    dtype = jnp.dtype(dtype).name
    cfg = cfg.replace(param_dtype=dtype, dtype=runtime.pop("compute_dtype", dtype), **runtime)

    files = _weight_files(path)
    reader = _Reader(files)
    if cfg.tie_word_embeddings and {"lm_head.weight", "model.embed_tokens.weight"} <= files.keys():
        # transformers >= 5 unties a tied config whose checkpoint ships an lm_head that differs from the
        # embedding, and then uses both as stored; an identical copy is merely redundant.
        shape = (cfg.vocab_size, cfg.hidden_size)
        if not np.array_equal(reader.read("lm_head.weight", shape), reader.read("model.embed_tokens.weight", shape)):
            cfg = cfg.replace(tie_word_embeddings=False)
    table = weight_table(cfg)
    wanted = {name for w in table for name in _hf_names(w, cfg)}
    missing = sorted(wanted - files.keys())
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    # A tied model may still ship lm_head.weight, an identical copy of the embedding: skip it.
    unexpected = sorted(files.keys() - wanted - ({"lm_head.weight"} if cfg.tie_word_embeddings else set()))
    unexpected = [n for n in unexpected if not n.endswith("rotary_emb.inv_freq")]
    if unexpected:
        raise CheckpointError(
            f"{files[unexpected[0]]}: unexpected tensor(s) {unexpected[:5]} for {cfg.arch} "
            f"(check config.json's architectures and tie_word_embeddings)")

    shardings = param_shardings(cfg, mesh) if mesh is not None else None
    np_dtype = jnp.dtype(dtype)

    def load(w: Weight):
        stacked = np.stack([from_hf(w, reader.read(name, hf_shape(w))).astype(np_dtype)
                            for name in _hf_names(w, cfg)])
        host = stacked if w.stacked else stacked[0]
        if shardings is None:
            return jnp.asarray(host)
        # Each process places its own devices' slices; device_put would first compare the whole
        # weight across processes (a gather of every copy onto every device).
        return jax.make_array_from_callback(host.shape, get_path(shardings, w.path), lambda idx: host[idx])

    return cfg, map_weights(cfg, load)


def save_hf(path, config: ModelConfig, params, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write config.json and safetensors (sharded with an index above max_shard_bytes)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    for w in weight_table(config):
        x = np.asarray(jax.device_get(get_path(params, w.path)))
        if x.shape != full_shape(w, config):
            raise CheckpointError(f"params[{w.key!r}] has shape {x.shape}, config implies {full_shape(w, config)}")
        for i, name in enumerate(_hf_names(w, config)):
            tensors[name] = np.ascontiguousarray(to_hf(w, x[i] if w.stacked else x))

    shards, current, size = [], {}, 0
    for name, x in tensors.items():
        if current and size + x.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = x, size + x.nbytes
    shards.append(current)

    for stale in list(path.glob("*.safetensors")) + [path / INDEX_FILE]:
        stale.unlink(missing_ok=True)  # a previous export with another sharding must not linger
    if len(shards) == 1:
        _atomic_save(shards[0], path / SINGLE_FILE)
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for shard, fname in zip(shards, names):
            _atomic_save(shard, path / fname)
        index = {"metadata": {"total_size": int(sum(x.nbytes for x in tensors.values()))},
                 "weight_map": {n: fname for shard, fname in zip(shards, names) for n in shard}}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2))
    # config.json names the dtype the tensors were written in (load_hf reads them back in it).
    written = {str(x.dtype) for x in tensors.values()}
    if len(written) == 1 and written <= set(DTYPES):
        config = config.replace(param_dtype=written.pop())
    (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    return path


def _atomic_save(tensors: dict[str, np.ndarray], file: Path) -> None:
    tmp = file.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, file)

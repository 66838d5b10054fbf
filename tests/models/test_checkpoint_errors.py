"""Bad checkpoints fail with one clear error naming the file and the tensor, never a garbage model."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import models
from models.config import ConfigError
from models.hf_io import CheckpointError


def test_missing_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        models.load_hf(tmp_path)


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        models.load_hf(tmp_path / "nope")


def test_unknown_architecture_is_named(hf_model):
    folder, _ = hf_model("qwen3_tied")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="LlamaForCausalLM"):
        models.load_hf(folder)


def test_malformed_config_json(hf_model):
    folder, _ = hf_model("qwen3_tied")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        models.load_hf(folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    with pytest.raises(ConfigError, match="vocab_size|hidden_size"):
        models.load_hf(folder)


def test_missing_safetensors(hf_model):
    folder, _ = hf_model("qwen3_tied")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        models.load_hf(folder)


@pytest.mark.parametrize("variant, edit, message", [
    ("qwen3_tied", lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"),
     r"missing.*model\.layers\.1\.self_attn\.k_norm\.weight"),
    ("qwen3_tied", lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)}),
     r"model\.safetensors.*unexpected.*q_proj\.bias"),
    ("qwen2_tied", lambda t: t.update({"model.layers.0.mlp.up_proj.weight": np.zeros((95, 64), np.float32)}),
     r"model\.safetensors.*up_proj\.weight.*\(95, 64\)"),
], ids=["missing", "unexpected", "shape"])
def test_bad_tensor_is_named_with_its_file(hf_model, variant, edit, message):
    folder, _ = hf_model(variant)
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        models.load_hf(folder)


def test_truncated_safetensors(hf_model):
    folder, _ = hf_model("qwen2_tied")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        models.load_hf(folder)


def test_index_pointing_at_missing_shard(hf_model, tmp_path):
    folder, _ = hf_model("qwen3_tied")
    cfg, params = models.load_hf(folder)
    out = models.save_hf(tmp_path / "sharded", cfg, params, max_shard_bytes=20_000)
    next(iter(sorted(out.glob("model-*.safetensors")))).unlink()
    with pytest.raises(CheckpointError, match="model-00001-of"):
        models.load_hf(out)


@pytest.mark.parametrize("edit, message", [
    (lambda index: dict(index, weight_map=list(index["weight_map"].items())), "'weight_map' must map tensor names"),
    (lambda index: dict(index, weight_map=None), "'weight_map' must map tensor names"),
    (lambda index: dict(index, weight_map={k: 3 for k in index["weight_map"]}), "'weight_map' must map tensor names"),
    (lambda index: dict(index, weight_map={k: None for k in index["weight_map"]}), "'weight_map' must map tensor names"),
    (lambda index: b"\xff\xfe", "not a safetensors index"),
])
def test_a_malformed_index_is_named(hf_model, tmp_path, edit, message):
    """These raised AttributeError, TypeError or UnicodeDecodeError from inside the loader."""
    folder, _ = hf_model("qwen3_tied")
    cfg, params = models.load_hf(folder)
    out = models.save_hf(tmp_path / "sharded", cfg, params, max_shard_bytes=20_000)
    index = out / "model.safetensors.index.json"
    edited = edit(json.loads(index.read_text()))
    index.write_bytes(edited if isinstance(edited, bytes) else json.dumps(edited).encode())
    with pytest.raises(CheckpointError, match=f"model.safetensors.index.json: {message}"):
        models.load_hf(out)


def test_export_names_the_dtype_its_tensors_are_written_in(hf_model, tmp_path):
    """A float32 config exported with bfloat16 params wrote config.json dtype float32 over BF16 tensors,
    so the export loaded back as float32 (twice the memory)."""
    folder, _ = hf_model("qwen3_tied")
    cfg, params = models.load_hf(folder)
    assert cfg.param_dtype == "float32"
    out = models.save_hf(tmp_path / "bf16", cfg, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
    written = json.loads((out / "config.json").read_text())
    assert (written["dtype"], written["torch_dtype"]) == ("bfloat16", "bfloat16")
    back_cfg, back = models.load_hf(out)
    assert back_cfg.param_dtype == "bfloat16" and {x.dtype for x in jax.tree.leaves(back)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("variant, change, key", [
    ("qwen2_tied", dict(use_sliding_window=True, sliding_window=4, max_window_layers=0, layer_types=None),
     "use_sliding_window"),
    ("qwen3_tied", dict(use_sliding_window=True, sliding_window=4, layer_types=["full_attention", "sliding_attention"]),
     "use_sliding_window"),
    ("qwen3_tied", dict(attention_bias=True), "attention_bias"),
    ("qwen3_tied", dict(rope_parameters={"rope_type": "linear", "factor": 2.0}), "rope_parameters type 'linear'"),
    ("qwen2_tied", dict(rope_scaling={"rope_type": "llama3", "factor": 2.0}), "rope_scaling type 'llama3'"),
])
def test_unsupported_variants_are_refused_by_name(hf_model, variant, change, key):
    folder, _ = hf_model(variant)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(change)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=key):
        models.load_hf(folder)


def test_tensor_in_two_loose_shards_is_refused(hf_model):
    """Without an index nothing says which copy is meant: refuse rather than let the last file win."""
    folder, _ = hf_model("qwen3_tied")
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").rename(folder / "a.safetensors")
    name = "model.embed_tokens.weight"
    save_file({name: tensors[name] + 1}, folder / "b.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.embed_tokens\.weight.*a\.safetensors.*b\.safetensors"):
        models.load_hf(folder)
    (folder / "b.safetensors").unlink()
    models.load_hf(folder)  # one copy of every tensor in loose shards loads

"""Logits of the JAX model against transformers (torch CPU, float32) on tiny random checkpoints."""
import jax
import numpy as np
import pytest
import torch
import transformers

import models


def left_padded_batch(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(3, 24)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :5] = 0
    mask[2, :17] = 0
    tokens[mask == 0] = 0
    return tokens, mask


def torch_logits(model, tokens, mask):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.mark.parametrize("variant", ["qwen2_tied", "qwen3_yarn", "qwen3_tied", "qwen2_untied"])
def test_logits_match_transformers_on_left_padded_batch(hf_model, variant):
    folder, ref_model = hf_model(variant)
    cfg, params = models.load_hf(folder)
    tokens, mask = left_padded_batch(cfg.vocab_size)
    ours = np.asarray(models.forward(params, cfg, tokens, mask))
    ref = torch_logits(ref_model, tokens, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


def test_yarn_changes_logits_and_is_pinned_to_installed_transformers(hf_model):
    """YaRN must matter at these lengths (else the parity test above proves nothing about it)."""
    folder, _ = hf_model("qwen3_yarn")
    cfg, params = models.load_hf(folder)
    assert dict(cfg.rope_scaling)["factor"] == 4.0
    tokens, mask = left_padded_batch(cfg.vocab_size)
    plain = np.asarray(models.forward(params, cfg.replace(rope_scaling=()), tokens, mask))
    yarn = np.asarray(models.forward(params, cfg, tokens, mask))
    assert np.abs(plain - yarn).max() > 1e-3


def test_yarn_factor_is_taken_from_the_config_even_when_max_positions_disagree(hf_model):
    """The doc's trap: some transformers versions derive the factor from max_position_embeddings / L0.
    Both read the same file here, so whatever the installed version does, ours must agree with it."""
    folder, ref_model = hf_model("qwen3_yarn", max_position_embeddings=512)  # 512/64 = 8, factor says 4
    cfg, params = models.load_hf(folder)
    tokens, mask = left_padded_batch(cfg.vocab_size, seed=1)
    ours = np.asarray(models.forward(params, cfg, tokens, mask))
    np.testing.assert_allclose(ours[mask == 1], torch_logits(ref_model, tokens, mask)[mask == 1], atol=1e-4)


def test_legacy_rope_scaling_spelling(tmp_path):
    hf = dict(architectures=["Qwen3ForCausalLM"], vocab_size=32, hidden_size=16, intermediate_size=32,
              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8, rope_theta=1e6,
              rope_scaling={"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16})
    new = dict(hf, rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16})
    a, b = models.ModelConfig.from_hf_dict(hf), models.ModelConfig.from_hf_dict(new)
    assert a == b and a.rope_frequencies()[1] == pytest.approx(0.1 * np.log(2.0) + 1)


@pytest.mark.parametrize("variant", ["qwen2_tied", "qwen3_yarn"])
def test_export_reloads_in_transformers_with_same_logits(hf_model, tmp_path, variant):
    folder, _ = hf_model(variant)
    cfg, params = models.load_hf(folder)
    # Perturb so the export cannot pass by copying files: these weights exist only in JAX.
    params = jax.tree.map(lambda w: w * 1.01 + 0.001, params)
    out = models.save_hf(tmp_path / "export", cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    tokens, mask = left_padded_batch(cfg.vocab_size)
    ours = np.asarray(models.forward(params, cfg, tokens, mask))
    np.testing.assert_allclose(ours[mask == 1], torch_logits(reloaded, tokens, mask)[mask == 1], atol=1e-4)


def test_sharded_export_round_trips(hf_model, tmp_path):
    folder, _ = hf_model("qwen3_yarn")
    cfg, params = models.load_hf(folder)
    out = models.save_hf(tmp_path / "sharded", cfg, params, max_shard_bytes=50_000)
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("*.safetensors"))) > 1
    cfg2, params2 = models.load_hf(out)
    assert cfg2.to_hf_dict() == cfg.to_hf_dict()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Re-exporting unsharded must not leave the old shards behind.
    models.save_hf(out, cfg, params)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()


def test_loading_onto_an_8_device_mesh_gives_same_logits(hf_model):
    assert len(jax.devices()) == 8, "tests/conftest.py should simulate 8 CPU devices"
    folder, ref_model = hf_model("qwen3_yarn")
    mesh = models.make_mesh(data=2, fsdp=2, tensor=2)
    cfg, params = models.load_hf(folder, mesh=mesh)
    q = params["layers"]["q"]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec[1:3] == ("fsdp", "tensor")
    tokens, mask = left_padded_batch(cfg.vocab_size)
    tokens, mask = np.concatenate([tokens, tokens[:1]]), np.concatenate([mask, mask[:1]])  # batch 4 = data*fsdp
    batch = models.sharding.batch_sharding(mesh)
    ours = np.asarray(models.forward(params, cfg, jax.device_put(tokens, batch), jax.device_put(mask, batch)))
    np.testing.assert_allclose(ours[mask == 1], torch_logits(ref_model, tokens, mask)[mask == 1], atol=1e-4)


def test_remat_policies_and_dtypes(hf_model):
    folder, _ = hf_model("qwen2_tied")
    cfg, params = models.load_hf(folder)
    tokens, mask = left_padded_batch(cfg.vocab_size)

    def loss(p, c):
        return (models.forward(p, c, tokens, mask) * mask[..., None]).sum()

    grads = {r: jax.grad(loss)(params, cfg.replace(remat=r)) for r in ("none", "full", "matmuls")}
    for r in ("full", "matmuls"):
        for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[r])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # bf16 params with f32 compute, and bf16 throughout, stay close to the f32 model.
    cfg16, params16 = models.load_hf(folder, dtype="bfloat16", compute_dtype="float32")
    assert params16["embed"].dtype == jax.numpy.bfloat16 and cfg16.dtype == "float32"
    full = np.asarray(models.forward(params, cfg, tokens, mask))
    for c in (cfg16, cfg16.replace(dtype="bfloat16")):
        low = np.asarray(models.forward(params16, c, tokens, mask))
        assert np.abs(low - full)[mask == 1].max() < 0.1


def test_bf16_checkpoint_loads_as_bf16_and_matches_transformers(hf_model, tmp_path):
    folder, ref_model = hf_model("qwen3_tied")
    ref_model = ref_model.to(torch.bfloat16)
    ref_model.save_pretrained(tmp_path / "bf16")
    cfg, params = models.load_hf(tmp_path / "bf16")
    assert cfg.param_dtype == cfg.dtype == "bfloat16" and params["layers"]["q"].dtype == jax.numpy.bfloat16
    tokens, mask = left_padded_batch(cfg.vocab_size)
    ours = np.asarray(models.forward(params, cfg, tokens, mask))
    with torch.no_grad():
        ref = ref_model(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.float().numpy()
    assert np.abs(ours - ref)[mask == 1].max() < 0.05
    out = models.save_hf(tmp_path / "export", cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16

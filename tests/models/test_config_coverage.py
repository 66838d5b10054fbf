"""Config shapes beyond the four conftest variants, each checked against transformers on a tiny model:
head layouts (MQA/MHA/GQA), head_dim != hidden/heads, odd sizes, RoPE/YaRN spellings, real-checkpoint
config.json files, extra lm_head tensors and transformers-written shards."""
import json

import numpy as np
import pytest
import torch
import transformers

import models

BASE = dict(vocab_size=151, hidden_size=48, intermediate_size=80, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
YARN = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16}

# name -> (arch, overrides of BASE)
CASES = {
    "qwen2_mqa": ("qwen2", dict(num_key_value_heads=1)),
    "qwen3_mha": ("qwen3", dict(num_key_value_heads=4, head_dim=12)),
    "qwen2_gqa3": ("qwen2", dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, vocab_size=1000)),
    "qwen3_gqa5": ("qwen3", dict(num_attention_heads=5, num_key_value_heads=1, head_dim=16, num_hidden_layers=2)),
    "qwen3_wide_head": ("qwen3", dict(hidden_size=64, head_dim=32, rms_norm_eps=1e-5)),
    "qwen3_narrow_head": ("qwen3", dict(hidden_size=64, head_dim=8, tie_word_embeddings=True)),
    "qwen3_yarn8_betas": ("qwen3", dict(head_dim=16, rope_parameters=dict(YARN, rope_theta=1e6, beta_fast=8,
                                                                          beta_slow=2))),
    "qwen3_yarn2_attn_factor": ("qwen3", dict(head_dim=16, rope_parameters=dict(
        YARN, factor=2.0, rope_theta=1e4, attention_factor=1.3))),
    "qwen3_yarn_legacy_type": ("qwen3", dict(head_dim=16, rope_scaling={"type": "yarn", "factor": 8.0,
                                                                         "original_max_position_embeddings": 16})),
    "qwen3_yarn_untruncated": ("qwen3", dict(head_dim=16, max_position_embeddings=32768, rope_parameters=dict(
        YARN, original_max_position_embeddings=4096, truncate=False))),
    "qwen3_yarn_mscale": ("qwen3", dict(head_dim=16, rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.5))),
    "qwen2_yarn_long": ("qwen2", dict(max_position_embeddings=131072, rope_parameters=dict(
        YARN, factor=4.0, rope_theta=1e6, original_max_position_embeddings=32))),
    "qwen2_5_layers": ("qwen2", dict(num_hidden_layers=5, rms_norm_eps=1e-5, rope_theta=1e6)),
    "qwen2_explicit_head_dim": ("qwen2", dict(head_dim=16)),  # Qwen2Attention honours it over 48/4
}


def tiny_config(arch: str, **overrides) -> transformers.PretrainedConfig:
    # A JSON copy: transformers fills defaults into the rope dicts it is given, in place.
    return transformers.AutoConfig.for_model(arch, **json.loads(json.dumps({**BASE, **overrides})))


def build(folder, config, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(folder)
    return model


def batch(vocab: int):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(3, 20)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[1, :4], mask[2, :13] = 0, 0
    tokens[mask == 0] = 0
    return tokens, mask


def assert_logits_match(folder, ref_model):
    cfg, params = models.load_hf(folder)
    tokens, mask = batch(cfg.vocab_size)
    ours = np.asarray(models.forward(params, cfg, tokens, mask))
    with torch.no_grad():
        ref = ref_model(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours[mask == 1], ref[mask == 1], atol=1e-4, rtol=0)
    return cfg, params


def assert_greedy_matches(cfg, params, ref_model, new: int = 5):
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5]]
    out = models.generate(params, cfg, prompts, max_new_tokens=new, temperature=0.0)
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    ref_model.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = ref_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                 pad_token_id=0)[:, P:].tolist()
    assert [c.token_ids for c in out] == ref


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_variant_matches_transformers(tmp_path, case):
    arch, overrides = CASES[case]
    ref_model = build(tmp_path, tiny_config(arch, **overrides))
    cfg, params = assert_logits_match(tmp_path, ref_model)
    if case in ("qwen2_mqa", "qwen3_gqa5", "qwen3_yarn8_betas", "qwen2_yarn_long"):
        assert_greedy_matches(cfg, params, ref_model)
    assert hf_fields(models.save_hf(tmp_path / "export", cfg, params)) == hf_fields(tmp_path)


# Real checkpoints' config.json files (Qwen/Qwen3-14B, deepseek-ai/DeepSeek-R1-Distill-Qwen-14B) with tiny sizes.
QWEN3_14B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 16, "hidden_act": "silu", "hidden_size": 48, "initializer_range": 0.02,
    "intermediate_size": 80, "max_position_embeddings": 40960, "max_window_layers": 2, "model_type": "qwen3",
    "num_attention_heads": 5, "num_hidden_layers": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 152}
R1_DISTILL_14B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu", "hidden_size": 80, "initializer_range": 0.02, "intermediate_size": 96,
    "max_position_embeddings": 131072, "max_window_layers": 2, "model_type": "qwen2", "num_attention_heads": 5,
    "num_hidden_layers": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-05, "rope_theta": 10000,
    "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.43.1",
    "use_cache": True, "use_mrope": False, "use_sliding_window": False, "vocab_size": 152}
REAL_SHAPES = {
    "qwen3_14b": QWEN3_14B,
    "qwen3_14b_tf5": {**{k: v for k, v in QWEN3_14B.items() if k not in ("rope_scaling", "rope_theta", "torch_dtype")},
                      "dtype": "bfloat16", "transformers_version": "5.0.0", "layer_types": ["full_attention"] * 2,
                      "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"}},
    "qwen3_no_head_dim": {k: v for k, v in QWEN3_14B.items() if k != "head_dim"},  # transformers: 128, not 48/5
    "r1_distill_14b": R1_DISTILL_14B,
    "r1_distill_yarn_legacy": {**R1_DISTILL_14B, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                                   "original_max_position_embeddings": 16}},
    "r1_distill_yarn_no_original": {**R1_DISTILL_14B, "max_position_embeddings": 32,
                                    "rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    # rope_theta inside rope_scaling wins over the top-level one, as in transformers.
    "r1_distill_yarn_theta_inside": {**R1_DISTILL_14B, "rope_theta": 1e6, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 500.0}},
    "qwen3_theta_only_in_rope_scaling": {**{k: v for k, v in QWEN3_14B.items() if k != "rope_theta"},
                                         "rope_scaling": {"rope_type": "default", "rope_theta": 500.0}},
    # A legacy rope_scaling replaces rope_parameters whole (its theta too: the default 1e4 applies).
    "qwen3_rope_scaling_over_parameters": {
        **{k: v for k, v in QWEN3_14B.items() if k != "rope_theta"},
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}},
    "qwen3_swish": {**QWEN3_14B, "hidden_act": "swish"},
    # Sliding windows start at layer max_window_layers: none of these 2 layers has one.
    "r1_distill_sliding_after_last_layer": {**R1_DISTILL_14B, "use_sliding_window": True, "sliding_window": 4,
                                            "max_window_layers": 2},
}
COMPARED_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings",
                   "rope_parameters", "bos_token_id", "eos_token_id", "layer_types", "sliding_window", "model_type")


def write_real_shape(folder, hf: dict):
    """A transformers model built from `hf`, saved, then config.json replaced by `hf` verbatim; returns the
    model transformers itself loads from that folder (float32)."""
    build(folder, tiny_config(hf["model_type"], **{k: v for k, v in hf.items()
                                                   if k not in ("architectures", "model_type")}))
    (folder / "config.json").write_text(json.dumps(hf))
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_fields(folder) -> dict:
    """What transformers builds a model from (the legacy rope "type" key aside, which it ignores)."""
    c = transformers.AutoConfig.from_pretrained(folder)
    fields = {f: getattr(c, f, None) for f in COMPARED_FIELDS}
    fields["rope_parameters"] = {k: v for k, v in c.rope_parameters.items() if k != "type"}
    return fields


@pytest.mark.parametrize("name", sorted(REAL_SHAPES))
def test_real_checkpoint_config_files(tmp_path, name):
    hf = REAL_SHAPES[name]
    ref_model = write_real_shape(tmp_path / "ckpt", hf)
    cfg = models.ModelConfig.from_file(tmp_path / "ckpt")
    assert cfg.param_dtype == "float32" and models.load_hf(tmp_path / "ckpt")[0].param_dtype == "bfloat16"
    cfg, params = models.load_hf(tmp_path / "ckpt", dtype="float32")
    tokens, mask = batch(cfg.vocab_size)
    ours = np.asarray(models.forward(params, cfg, tokens, mask))
    with torch.no_grad():
        ref = ref_model(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours[mask == 1], ref[mask == 1], atol=1e-4, rtol=0)

    # Our export describes the same model to transformers and keeps the token ids.
    out = models.save_hf(tmp_path / "export", cfg, params)
    exported = json.loads((out / "config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"]) == (hf["bos_token_id"], hf["eos_token_id"])
    assert hf_fields(out) == hf_fields(tmp_path / "ckpt")
    assert models.ModelConfig.from_file(out).to_hf_dict() == cfg.to_hf_dict()


@pytest.mark.parametrize("lm_head", ["copy", "different"])
def test_tied_checkpoint_that_ships_lm_head(tmp_path, lm_head):
    """transformers 5 skips an identical lm_head but unties the model when the stored one differs."""
    from safetensors.torch import load_file, save_file
    build(tmp_path, tiny_config("qwen3", head_dim=16, tie_word_embeddings=True))
    tensors = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in tensors
    embed = tensors["model.embed_tokens.weight"]
    tensors["lm_head.weight"] = embed.clone() if lm_head == "copy" else torch.randn_like(embed) * 0.02
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    cfg, params = assert_logits_match(tmp_path, ref_model)
    assert cfg.tie_word_embeddings == (lm_head == "copy") == ("lm_head" not in params)
    out = models.save_hf(tmp_path / "export", cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert_logits_match(out, reloaded)


def test_checkpoint_sharded_by_transformers(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("qwen2", num_hidden_layers=2, tie_word_embeddings=False)
    ref_model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    ref_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    assert_logits_match(tmp_path, ref_model)


@pytest.mark.parametrize("change, match", [(dict(hidden_act="gelu"), "hidden_act"),
                                           (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "linear"),
                                           (dict(rope_scaling={"rope_type": "yarn"}), "factor")])
def test_configs_that_would_compute_another_model_are_refused(change, match):
    with pytest.raises(models.ConfigError, match=match):
        models.ModelConfig.from_hf_dict({**QWEN3_14B, **change})


@pytest.mark.parametrize("change, match", [
    (dict(hidden_size="5120"), "hidden_size must be an integer >= 1, got '5120'"),
    (dict(hidden_size=None), "hidden_size must be an integer"),
    (dict(num_hidden_layers=-1), "num_hidden_layers must be an integer >= 1"),
    (dict(max_position_embeddings=-1), "max_position_embeddings must be"),
    (dict(num_key_value_heads=2.5), "num_key_value_heads must be"),
    (dict(rms_norm_eps="x"), "rms_norm_eps must be a number > 0"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": "4"}), r"rope_scaling.factor must be a number"),
    (dict(use_sliding_window=True, sliding_window=4096, max_window_layers=None),
     "max_window_layers must be an integer, got None"),
    (dict(use_sliding_window=True, sliding_window=4096, num_hidden_layers="40"),
     "num_hidden_layers must be an integer, got '40'"),
    (dict(use_sliding_window=True, sliding_window=4096, layer_types="full_attention"), "layer_types must be a list"),
    (dict(architectures={"a": 1}), "architectures must be a list of class names"),
    (dict(architectures="Qwen3ForCausalLM"), "architectures must be a list of class names"),
    (dict(head_dim=15), "config.json: head_dim=15 must be even"),
    (dict(num_key_value_heads=3), "config.json: num_attention_heads=5 is not a multiple of num_key_value_heads=3"),
])
def test_fields_of_the_wrong_kind_are_named_at_load(change, match):
    """They crashed later with int('abc'), a JAX shape error, or an error on the first request."""
    with pytest.raises(models.ConfigError, match=match):
        models.ModelConfig.from_hf_dict({**QWEN3_14B, **change})


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "config.json").write_bytes(b"\xff")
    with pytest.raises(models.ConfigError, match="config.json: not valid JSON"):
        models.ModelConfig.from_file(tmp_path)


@pytest.mark.parametrize("key", ["max_position_embeddings", "num_key_value_heads", "head_dim"])
def test_zero_is_refused_not_replaced_by_a_default(key):
    with pytest.raises(models.ConfigError, match=f"{key} must be an integer >= 1, got 0"):
        models.ModelConfig.from_hf_dict({**QWEN3_14B, key: 0})


@pytest.mark.parametrize("change, match", [
    (dict(rope_theta=0), "rope_theta must be a number > 0, got 0"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 0}), "rope_theta must be a number > 0, got 0"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 0, "original_max_position_embeddings": 32768}),
     "rope_scaling.factor must be a number > 0, got 0"),
])
def test_zero_rope_numbers_are_refused_not_replaced_by_a_default(change, match):
    """`x or default` ran rope_theta 0 as 10000 and a YaRN factor 0 as the context extension."""
    with pytest.raises(models.ConfigError, match=match):
        models.ModelConfig.from_hf_dict({**QWEN3_14B, **change})


def test_null_rope_numbers_take_their_defaults():
    cfg = models.ModelConfig.from_hf_dict({**QWEN3_14B, "rope_theta": None, "max_position_embeddings": 131072,
                                           "rope_scaling": {"rope_type": "yarn", "factor": None,
                                                            "original_max_position_embeddings": 32768}})
    assert cfg.rope_theta == 10000.0 and dict(cfg.rope_scaling)["factor"] is None
    _, attention_factor = cfg.rope_frequencies()
    assert attention_factor == pytest.approx(0.1 * np.log(131072 / 32768) + 1.0)  # factor = 131072 / 32768

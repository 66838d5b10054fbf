"""Tiny random-init Qwen2 / Qwen3 checkpoints built with transformers, saved to a temporary folder."""
import pytest
import torch
import transformers

BASE = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
VARIANTS = {
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0)),
    "qwen3_yarn": ("qwen3", dict(head_dim=32, tie_word_embeddings=False, rope_theta=1e6,
                                 rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": 64})),
    "qwen3_tied": ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    "qwen2_untied": ("qwen2", dict(tie_word_embeddings=False, num_key_value_heads=4)),
}


def build_hf_model(path, arch: str, seed: int = 0, **overrides):
    """Save a random-init transformers model (float32, eval mode) to `path` and return it."""
    torch.manual_seed(seed)
    cls_cfg, cls_model = {"qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                          "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM)}[arch]
    model = cls_model(cls_cfg(**{**BASE, **overrides})).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture
def hf_model(tmp_path):
    """Factory: hf_model(variant or arch, **overrides) -> (folder, torch model)."""
    def make(variant: str = "qwen3_yarn", **overrides):
        arch, base = VARIANTS[variant] if variant in VARIANTS else (variant, {})
        folder = tmp_path / variant
        return folder, build_hf_model(folder, arch, **{**base, **overrides})
    return make

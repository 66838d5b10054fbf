"""What the model benchmarks share: the ~100M-parameter Qwen3 they measure, built once with transformers."""
from __future__ import annotations

from pathlib import Path

# ~100M parameters: the Qwen3 shape family at GPT-2-small width, tied embeddings.
QWEN3_100M = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                  head_dim=64, intermediate_size=2048, vocab_size=32768, tie_word_embeddings=True)
QWEN3_QUICK = dict(QWEN3_100M, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=768, vocab_size=8192)


def random_qwen3_checkpoint(hf: dict, folder: Path, seed: int = 0):
    """A random-init transformers Qwen3 (float32, eval mode), saved to `folder` for models.load_hf: both
    sides of a benchmark then run the same weights."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.Qwen3Config(**hf, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=4096,
                                      attention_dropout=0.0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    model.save_pretrained(folder)
    return model

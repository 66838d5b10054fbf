import json

import jax
import pytest


@pytest.fixture
def float64():
    """Run a test in float64, to check the doc's figures to 1e-6 (a context, so no global state leaks)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def config_only_model(tmp_path):
    """A model folder holding only a tiny Qwen3 config.json: all that start-up checks and rl.plan read."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(
        architectures=["Qwen3ForCausalLM"], vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=4096)))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-init tiny Qwen3 HF folder (config, safetensors, BPE tokenizer with Qwen's chat template),
    built once per test session; treat it as read-only."""
    from models.demo import PROMPTS_FILE, tiny_qwen3
    from models.hf_io import save_hf
    from models.tokenizer import train_bpe_tokenizer
    from models.weights import init_params

    folder = tmp_path_factory.mktemp("tiny_model")
    tokenizer = train_bpe_tokenizer([p["prompt"] for p in json.loads(PROMPTS_FILE.read_text())])
    tokenizer.save_pretrained(folder)
    cfg = tiny_qwen3(len(tokenizer), 2, tokenizer)
    save_hf(folder, cfg, init_params(cfg, jax.random.key(0)))
    return folder


from tests.rl.serve_helpers import serve_model_dir, served  # noqa: E402,F401  (session fixtures of test_serve_*)

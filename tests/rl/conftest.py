import json

import jax
import pytest


@pytest.fixture
def float64():
    """Run a test in float64, to check the doc's figures to 1e-6 (a context, so no global state leaks)."""
    with jax.enable_x64(True):
        yield


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

"""Session fixtures of the embedded-server tests (tests/rl/test_serve_*.py): one real server process on
127.0.0.1, started once, and the same weights loaded in the test process for reference computations."""
from __future__ import annotations

import shutil

import httpx
import jax
import numpy as np
import pytest

API_KEY = "test-key"
SLOTS = 8
PAD_TO = 64  # reference logprobs are computed at multiples of this length: few compilations per temperature


class Served:
    """The running server, an authorised HTTP client for it, and the model it serves."""

    def __init__(self, server, model_dir):
        import models
        from transformers import AutoTokenizer

        self.server, self.url, self.model_dir = server, server.url, model_dir
        self.http = httpx.Client(base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {API_KEY}"})
        self.cfg, self.params = models.load_hf(model_dir, remat="none")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def post(self, path: str, body=None, **kwargs) -> httpx.Response:
        return self.http.post(path, json=body, **kwargs)

    def generate(self, body: dict):
        r = self.post("/generate", body)
        assert r.status_code == 200, r.text
        return r.json()

    @staticmethod
    def _padded(seq: list[int]):
        width = -(-len(seq) // PAD_TO) * PAD_TO  # one compiled shape for every short sequence
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :len(seq)] = seq
        return tokens, (np.arange(width) < len(seq)).astype(np.int32)[None]

    def reference_logprobs(self, prompt: list[int], completion: list[int], temperature: float) -> np.ndarray:
        """models.token_logprobs of each completion token given everything before it."""
        import models

        logp = models.token_logprobs(self.params, self.cfg, *self._padded(prompt + completion), temperature=temperature)
        return np.asarray(logp[0, len(prompt) - 1:len(prompt) + len(completion) - 1])

    def reference_logits(self, prompt: list[int], completion: list[int]) -> np.ndarray:
        """models.forward's logits [len(completion), V] that predicted each completion token."""
        import models

        logits = models.forward(self.params, self.cfg, *self._padded(prompt + completion))
        return np.asarray(logits[0, len(prompt) - 1:len(prompt) + len(completion) - 1])


@pytest.fixture(scope="session")
def serve_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with larger random weights (sharper distributions: no near-ties for greedy)."""
    import models

    folder = tmp_path_factory.mktemp("serve_model")
    for f in tiny_model_dir.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, folder / f.name)
    cfg, _ = models.load_hf(tiny_model_dir)
    models.save_hf(folder, cfg, models.init_params(cfg, jax.random.key(1), std=0.1))
    return folder


@pytest.fixture(scope="session")
def served(serve_model_dir):
    from rl.rollout.embedded import EmbeddedServer

    with EmbeddedServer(serve_model_dir, extra_args=["--api-key", API_KEY, "--max-running-requests", str(SLOTS),
                                                     "--served-model-name", "tiny"]) as server:
        s = Served(server, serve_model_dir)
        yield s
        s.http.close()

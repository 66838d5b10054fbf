"""models.decode: the unrolled decode path against the scanned one, and its logits against h @ W^T."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models.decode import decode_logits, hidden_states_unrolled, split_cache, unstack_layers
from models.transformer import hidden_states, init_cache


@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_decode_logits_equal_the_plain_product(B, dtype):
    rng = np.random.default_rng(B)
    h_BD = jnp.asarray(rng.standard_normal((B, 48)), dtype)
    w_VD = jnp.asarray(rng.standard_normal((200, 48)), dtype)
    logits = jax.jit(decode_logits)(h_BD, w_VD)
    assert logits.shape == (B, 200) and logits.dtype == jnp.float32
    want = np.asarray(h_BD, np.float64) @ np.asarray(w_VD, np.float64).T
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("variant", ["qwen2_tied", "qwen3_yarn"])
def test_unrolled_decode_step_equals_the_scanned_one(hf_model, variant):
    """One token per row into a cache holding a prompt: same hidden states and the same cache writes."""
    folder, _ = hf_model(variant)
    cfg, params = models.load_hf(folder)
    B, P, S = 3, 5, 8
    rng = np.random.default_rng(0)
    prompt = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, P)))
    valid = jnp.ones((B, S), jnp.int32)  # every slot: causality hides the ones not written yet
    _, cache = hidden_states(params, cfg, prompt, valid, jnp.broadcast_to(jnp.arange(P), (B, P)), init_cache(cfg, B, S))
    token, pos = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, 1))), jnp.full((B, 1), P)
    h_scan, cache_scan = hidden_states(params, cfg, token, valid, pos, cache, P)
    h_loop, caches_loop = hidden_states_unrolled(unstack_layers(params), cfg, token, valid, pos, split_cache(cache), P)
    np.testing.assert_allclose(np.asarray(h_loop), np.asarray(h_scan), rtol=1e-5, atol=1e-5)
    for name in ("k", "v"):  # per-layer [B, K, S, H] against the scan's stacked [L, B, S, K, H]
        np.testing.assert_allclose(np.stack([np.asarray(c[name]) for c in caches_loop]),
                                   np.asarray(cache_scan[name]).transpose(0, 1, 3, 2, 4), rtol=1e-5, atol=1e-5)


def test_rows_written_at_their_own_slots_match_one_row_at_a_time(hf_model):
    """The engine's step: each row writes its token at its own slot (a scatter) and sees slots <= it."""
    folder, _ = hf_model("qwen3_tied")
    cfg, params = models.load_hf(folder)
    weights = unstack_layers(params)
    B, S = 3, 8
    rng = np.random.default_rng(1)
    caches = [{n: jnp.asarray(rng.standard_normal((B, cfg.num_kv_heads, S, cfg.head_dim)), cfg.dtype)
               for n in ("k", "v")} for _ in range(cfg.num_layers)]
    slots_B = jnp.asarray([2, 5, 4])
    token = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, 1)))
    valid_BS = (jnp.arange(S)[None] <= slots_B[:, None]).astype(jnp.int32)
    h, new = hidden_states_unrolled(weights, cfg, token, valid_BS, slots_B[:, None], caches, slots_B=slots_B)
    for b in range(B):
        one = [{n: c[n][b:b + 1] for n in c} for c in caches]
        h_b, new_b = hidden_states_unrolled(weights, cfg, token[b:b + 1], jnp.ones((1, S), jnp.int32),
                                            slots_B[b:b + 1, None], one, int(slots_B[b]))
        np.testing.assert_allclose(np.asarray(h[b]), np.asarray(h_b[0]), rtol=1e-5, atol=1e-5)
        for c, c_b in zip(new, new_b):
            for n in ("k", "v"):
                np.testing.assert_allclose(np.asarray(c[n][b]), np.asarray(c_b[n][0]), rtol=1e-6, atol=1e-6)

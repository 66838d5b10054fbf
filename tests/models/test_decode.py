"""models.decode: the unrolled decode path against the scanned one, and its logits against h @ W^T."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models.decode import (LEFT_MAX_ROWS, SLOT_AXIS, decode_logits, dense_out_in, hidden_states_unrolled,
                           init_layer_caches, split_cache, unstack_layers)
from models.layers import dense
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


@pytest.mark.parametrize("rows", [1, 8, LEFT_MAX_ROWS, LEFT_MAX_ROWS + 1])
@pytest.mark.parametrize("contract", [1, 2])
def test_dense_out_in_equals_dense_over_the_transposed_weight(rows, contract):
    """Both of its forms (weight on the left up to LEFT_MAX_ROWS rows, on the right past it)."""
    rng = np.random.default_rng(rows)
    in_shape, out_shape = ((24,), (3, 8)) if contract == 1 else ((3, 8), (24,))
    x = jnp.asarray(rng.standard_normal((rows, 1, *in_shape)), jnp.float32)
    w_in_out = jnp.asarray(rng.standard_normal((*in_shape, *out_shape)), jnp.float32)
    w_out_in = w_in_out.transpose(*range(contract, w_in_out.ndim), *range(contract))
    got = jax.jit(dense_out_in, static_argnums=2)(x, w_out_in, contract)
    assert got.shape == (rows, 1, *out_shape)
    np.testing.assert_allclose(np.asarray(got), np.asarray(dense(x, w_in_out, contract)), rtol=1e-5, atol=1e-5)


def test_unstack_layers_puts_every_matmul_weight_out_before_in(hf_model):
    folder, _ = hf_model("qwen2_tied")
    cfg, params = models.load_hf(folder)
    layers = unstack_layers(params)["layers"]
    assert len(layers) == cfg.num_layers
    D, N, K, H, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    want = {"q": (N, H, D), "k": (K, H, D), "v": (K, H, D), "o": (D, N, H), "gate": (F, D), "up": (F, D),
            "down": (D, F), "q_bias": (N, H), "attn_norm": (D,)}
    for name, shape in want.items():
        assert layers[-1][name].shape == shape, name
    np.testing.assert_array_equal(np.asarray(layers[-1]["o"]), np.asarray(params["layers"]["o"][-1]).transpose(2, 0, 1))


@pytest.mark.parametrize("variant", ["qwen2_tied", "qwen3_yarn"])
def test_unrolled_prefill_equals_the_scanned_one(hf_model, variant):
    """A prefill of more rows than LEFT_MAX_ROWS (the plain product) and of fewer (the weight on the left)."""
    folder, _ = hf_model(variant)
    cfg, params = models.load_hf(folder)
    weights = unstack_layers(params)
    rng = np.random.default_rng(2)
    for B, P in ((2, 5), (3, LEFT_MAX_ROWS // 2)):
        tokens = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, P)))
        pos, valid = jnp.broadcast_to(jnp.arange(P), (B, P)), jnp.ones((B, P), jnp.int32)
        h_scan, cache = hidden_states(params, cfg, tokens, valid, pos, init_cache(cfg, B, P))
        h_loop, caches = hidden_states_unrolled(weights, cfg, tokens, valid, pos, split_cache(init_cache(cfg, B, P)))
        np.testing.assert_allclose(np.asarray(h_loop), np.asarray(h_scan), rtol=1e-4, atol=1e-4)
        for name, c in caches[-1].items():
            np.testing.assert_allclose(np.asarray(c), np.asarray(split_cache(cache)[-1][name]), rtol=1e-4, atol=1e-4)


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
    # per-layer keys [B, K, H, S] and values [B, K, S, H] against the scan's stacked [L, B, S, K, H]
    for name, axes in (("k", (0, 1, 3, 4, 2)), ("v", (0, 1, 3, 2, 4))):
        np.testing.assert_allclose(np.stack([np.asarray(c[name]) for c in caches_loop]),
                                   np.asarray(cache_scan[name]).transpose(axes), rtol=1e-5, atol=1e-5)


def test_rows_written_at_their_own_slots_match_one_row_at_a_time(hf_model):
    """The engine's step: each row writes its token at its own slot (a scatter) and sees slots <= it."""
    folder, _ = hf_model("qwen3_tied")
    cfg, params = models.load_hf(folder)
    weights = unstack_layers(params)
    B, S = 3, 8
    rng = np.random.default_rng(1)
    caches = [{n: jnp.asarray(rng.standard_normal(c.shape), cfg.dtype) for n, c in layer.items()}
              for layer in init_layer_caches(cfg, B, S)]
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
    for c, old in zip(new, caches):  # only each row's own slot changed
        for n in ("k", "v"):
            other_axes = tuple(a for a in range(4) if a not in (0, SLOT_AXIS[n]))
            changed = np.any(np.asarray(c[n]) != np.asarray(old[n]), axis=other_axes)
            np.testing.assert_array_equal(changed, np.arange(S)[None] == np.asarray(slots_B)[:, None])

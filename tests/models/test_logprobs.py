"""Chunked token logprobs and entropies against full log_softmax logits: values, gradients, memory."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models.logprobs import KEEP_LOGP_BYTES, chunked_logprobs, token_logprobs

TINY = models.ModelConfig(arch="qwen2", vocab_size=101, hidden_size=32, intermediate_size=48, num_layers=1,
                          num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0, remat="none")
PADS = [0, 4]  # row 1 is left-padded
T = 12  # 2 x 11 = 22 predicted tokens


@functools.cache
def _untied_params():
    """Initialised once per worker (init compiles slowly on CPU); peaked enough for non-trivial entropy."""
    return models.init_params(TINY, jax.random.key(0, impl="rbg"), std=0.3)


def _params(tied: bool):
    params = _untied_params()
    return {k: v for k, v in params.items() if k != "lm_head"} if tied else params


def _batch(cfg):
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (len(PADS), T))
    mask = (np.arange(T)[None, :] >= np.asarray(PADS)[:, None]).astype(np.int32)
    return tokens, mask


def _full(params, cfg, tokens, mask, temperature):
    """The definition: log_softmax of the full [B, T, V] logits, gathered at the next token."""
    logp_BTV = jax.nn.log_softmax(models.forward(params, cfg, tokens, mask)[:, :-1] / temperature, axis=-1)
    entropy_BT = -jnp.sum(jnp.exp(logp_BTV) * logp_BTV, axis=-1)
    return jnp.take_along_axis(logp_BTV, tokens[:, 1:, None], axis=-1)[..., 0], entropy_BT


@pytest.mark.parametrize("tied,chunk,return_entropy,temperature,keep", [
    (True, 5, True, 1.0, 0),  # 5 does not divide 22; the backward recomputes each chunk's logits
    (False, 11, True, 0.7, 0),  # 11 does
    (False, 512, False, 1.0, 0),  # one chunk larger than the rows
    (True, 5, True, 0.7, KEEP_LOGP_BYTES),  # small enough: the forward's log-softmax is kept, one chunk
])
def test_token_logprobs_match_full_logits(tied, chunk, return_entropy, temperature, keep):
    cfg = TINY.replace(tie_word_embeddings=tied)
    params = _params(tied)
    tokens, mask = _batch(cfg)
    real = (mask[:, :-1] & mask[:, 1:]).astype(bool)  # a real token predicted from a real position
    w_logp, w_ent = np.random.default_rng(4).standard_normal((2, len(PADS), T - 1), np.float32) * real

    @functools.partial(jax.jit, static_argnums=1)
    @functools.partial(jax.value_and_grad, has_aux=True)
    def loss(params, fn):
        logp, entropy = fn(params)
        return jnp.sum(w_logp * logp) + (jnp.sum(w_ent * entropy) if return_entropy else 0.0), (logp, entropy)

    def ours(params):
        out = token_logprobs(params, cfg, tokens, mask, return_entropy=return_entropy, chunk_size=chunk,
                             temperature=temperature, keep_logp_bytes=keep)
        return out if return_entropy else (out, None)

    full = lambda params: _full(params, cfg, tokens, mask, temperature)  # noqa: E731
    (_, (logp, entropy)), grads = loss(params, ours)
    (_, (logp_ref, entropy_ref)), grads_ref = loss(params, full)
    assert logp.shape == (len(PADS), T - 1) and logp.dtype == jnp.float32
    np.testing.assert_allclose(logp[real], logp_ref[real], atol=1e-5, rtol=1e-5)
    if return_entropy:
        np.testing.assert_allclose(entropy[real], entropy_ref[real], atol=1e-5, rtol=1e-5)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g_ref = dict(jax.tree_util.tree_leaves_with_path(grads_ref))[path]
        scale = float(jnp.abs(g_ref).max())
        np.testing.assert_allclose(g, g_ref, atol=1e-5 * scale, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("keep", [0, KEEP_LOGP_BYTES])
def test_chunked_logprobs_on_hidden_states_bf16(keep):
    """The trainer's entry point with bf16 inputs: float32 results close to a float32 computation."""
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((37, 16)), jnp.bfloat16)
    unembed = jnp.asarray(rng.standard_normal((50, 16)), jnp.bfloat16)
    targets = rng.integers(0, 50, 37)
    logp, entropy = chunked_logprobs(hidden, unembed, targets, 8, return_entropy=True, keep_logp_bytes=keep)
    logp_NV = jax.nn.log_softmax(hidden.astype(jnp.float32) @ unembed.astype(jnp.float32).T, axis=-1)
    assert logp.dtype == entropy.dtype == jnp.float32
    np.testing.assert_allclose(logp, logp_NV[jnp.arange(37), targets], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(entropy, -jnp.sum(jnp.exp(logp_NV) * logp_NV, -1), atol=1e-4, rtol=1e-4)
    dh, dw = jax.grad(lambda h, w: chunked_logprobs(h, w, targets, 8, keep_logp_bytes=keep).sum(),
                      argnums=(0, 1))(hidden, unembed)
    assert dh.dtype == dw.dtype == jnp.bfloat16


def test_chunked_logprobs_memory_is_a_chunk_not_the_logits():
    N, V, D, chunk = 8192, 32768, 64, 512
    args = (jax.ShapeDtypeStruct((N, D), jnp.float32), jax.ShapeDtypeStruct((V, D), jnp.float32),
            jax.ShapeDtypeStruct((N,), jnp.int32))

    def full(h, w, t):
        logp_NV = jax.nn.log_softmax(jnp.einsum("ND,VD->NV", h, w), axis=-1)
        return jnp.take_along_axis(logp_NV, t[:, None], axis=-1)[:, 0]

    def chunked(h, w, t):
        return chunked_logprobs(h, w, t, chunk, return_entropy=True)[0]

    def temp_bytes(fn):
        loss = lambda h, w, t: fn(h, w, t).sum()  # noqa: E731
        fwd = jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes
        bwd = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().memory_analysis().temp_size_in_bytes
        return fwd, bwd

    logits_bytes = N * V * 4
    (full_fwd, full_bwd), (ours_fwd, ours_bwd) = temp_bytes(full), temp_bytes(chunked)
    assert full_fwd >= logits_bytes and full_bwd >= logits_bytes
    assert ours_fwd < logits_bytes / 8 and ours_bwd < logits_bytes / 8, (ours_fwd, ours_bwd)


def test_one_token_rows_have_no_logprobs():
    """No position of a one-token row has a next token: chunking 0 rows divided by zero."""
    tokens = np.ones((2, 1), np.int32)
    assert token_logprobs(_params(False), TINY, tokens).shape == (2, 0)
    logp, entropy = token_logprobs(_params(False), TINY, tokens, return_entropy=True)
    assert logp.shape == entropy.shape == (2, 0)

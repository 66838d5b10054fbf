"""Blockwise and cuDNN attention against the reference path: values, gradients, whole model, memory."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import models
from models.attention import attention, blockwise_attention, causal_visibility, reference_attention
from models.transformer import default_positions

TINY = models.ModelConfig(arch="qwen3", vocab_size=97, hidden_size=32, intermediate_size=48, num_layers=2,
                          num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0)


def _inputs(B, T, S, N, K, H, left_pad, seed=0):
    rng = np.random.default_rng(seed)  # numpy, not jax.random: nothing to compile
    q, k, v = (rng.standard_normal(shape, np.float32) for shape in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))
    valid = np.arange(S)[None, :] >= np.asarray(left_pad)[:, None]
    return q, k, v, valid


# (B, T, S, N, K, H, q_offset, block, left padding per row)
CASES = {
    "self_gqa_ragged": (3, 13, 13, 4, 2, 8, 0, 4, [0, 5, 13]),  # the last row sees no key at all
    "mha_block_larger_than_seq": (1, 5, 7, 2, 2, 4, 2, 64, [1]),
    "prefill_after_cache": (2, 6, 19, 4, 1, 8, 9, 4, [2, 0]),
    "decode": (2, 1, 16, 4, 2, 8, 11, 4, [0, 7]),
}


@pytest.mark.parametrize("case", CASES)
def test_blockwise_matches_reference_values_and_grads(case):
    B, T, S, N, K, H, q_offset, block, left_pad = CASES[case]
    q, k, v, valid = _inputs(B, T, S, N, K, H, left_pad)
    # Rows that see no key are padding: blockwise gives zeros there, the reference a uniform average.
    seen_BT = causal_visibility(T, S, q_offset, valid).any(-1)
    weights = np.random.default_rng(1).standard_normal(q.shape, np.float32) * seen_BT[:, :, None, None]

    @jax.jit
    def out_and_grads(q, k, v, q_offset):  # q_offset traced, as the sampler passes it during decode
        out_ref, vjp_ref = jax.vjp(lambda *x: reference_attention(*x, q_offset, valid), q, k, v)
        out_blk, vjp_blk = jax.vjp(lambda *x: blockwise_attention(*x, q_offset, valid, block), q, k, v)
        return out_ref, out_blk, vjp_ref(weights), vjp_blk(weights)

    out_ref, out_blk, g_ref, g_blk = out_and_grads(q, k, v, jnp.int32(q_offset))
    seen = np.asarray(seen_BT)[:, :, None, None]
    np.testing.assert_allclose(np.where(seen, out_blk, 0), np.where(seen, out_ref, 0), atol=2e-6, rtol=1e-5)
    np.testing.assert_array_equal(np.where(seen, 0, out_blk), 0)  # rows that see no key give zeros
    for name, a, b in zip("qkv", g_blk, g_ref):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5, err_msg=f"d{name}")


def test_blockwise_bf16_returns_bf16_close_to_float32():
    q, k, v, valid = _inputs(1, 12, 12, 4, 2, 8, [2])  # rows 0 and 1 see no key
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
    out = jax.jit(blockwise_attention, static_argnums=5)(q, k, v, 0, valid, 4)
    ref = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), 0, valid)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out[:, 2:].astype(np.float32), ref[:, 2:], atol=3e-2, rtol=3e-2)


def _left_padded_batch(vocab, T, pads, seed=0):
    tokens = np.random.default_rng(seed).integers(0, vocab, (len(pads), T))
    mask = (np.arange(T)[None, :] >= np.asarray(pads)[:, None]).astype(np.int32)
    return tokens, mask


def test_model_forward_blockwise_matches_reference():
    """Logits, and parameter gradients through the rematerialised layer scan (cfg.remat="full")."""
    params = models.init_params(TINY, jax.random.key(0, impl="rbg"), std=0.2)  # rbg: compiles faster on CPU
    tokens, mask = _left_padded_batch(TINY.vocab_size, 21, [0, 6])
    real = mask.astype(bool)
    weights = np.random.default_rng(2).standard_normal((*tokens.shape, TINY.vocab_size), np.float32) * real[..., None]

    @functools.partial(jax.jit, static_argnums=1)
    @functools.partial(jax.value_and_grad, has_aux=True)
    def loss(params, cfg):
        logits = models.forward(params, cfg, tokens, mask)
        return jnp.sum(logits * weights), logits

    (_, ref), g_ref = loss(params, TINY.replace(attention="reference"))
    (_, blk), g_blk = loss(params, TINY.replace(attention="blockwise", attention_block=8))
    np.testing.assert_allclose(np.asarray(blk)[real], np.asarray(ref)[real], atol=2e-5, rtol=1e-5)
    for path, a in jax.tree_util.tree_leaves_with_path(g_blk):
        b = dict(jax.tree_util.tree_leaves_with_path(g_ref))[path]
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()), rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))


def test_auto_switches_to_blockwise_at_min_len():
    q, k, v, valid = _inputs(1, 12, 12, 2, 1, 4, [0])
    cfg = TINY.replace(attention="auto", blockwise_min_len=12, attention_block=4)
    blocky = jax.make_jaxpr(lambda *a: attention(cfg, *a, 0, valid))(q, k, v)
    short = jax.make_jaxpr(lambda *a: attention(cfg.replace(blockwise_min_len=13), *a, 0, valid))(q, k, v)
    assert "custom_vjp" in str(blocky) and "custom_vjp" not in str(short)


@pytest.mark.parametrize("variant", ["qwen3_yarn", "qwen2_tied"])
def test_blockwise_model_matches_transformers_left_padded(hf_model, variant):
    folder, torch_model = hf_model(variant)
    cfg, params = models.load_hf(folder, attention="blockwise", attention_block=16)
    tokens, mask = _left_padded_batch(cfg.vocab_size, 37, [0, 11])
    ours = np.asarray(models.forward(params, cfg, tokens, mask))
    with torch.no_grad():
        theirs = torch_model(input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask),
                             position_ids=torch.as_tensor(np.array(default_positions(jnp.asarray(mask))))
                             ).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_blockwise_never_allocates_scores():
    T, H = 4096, 64
    q = jax.ShapeDtypeStruct((1, T, 1, H), jnp.float32)
    valid = jax.ShapeDtypeStruct((1, T), jnp.bool_)
    scores_bytes = T * T * 4

    def temp_bytes(fn):
        loss = lambda q, k, v, valid: fn(q, k, v, 0, valid).sum()  # noqa: E731
        fwd = jax.jit(lambda q, k, v, valid: fn(q, k, v, 0, valid)).lower(q, q, q, valid).compile()
        bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, q, q, valid).compile()
        return fwd.memory_analysis().temp_size_in_bytes, bwd.memory_analysis().temp_size_in_bytes

    blk_fwd, blk_bwd = temp_bytes(lambda *a: blockwise_attention(*a, block=256))
    ref_fwd, ref_bwd = temp_bytes(reference_attention)
    assert ref_fwd > scores_bytes and ref_bwd > scores_bytes
    assert blk_fwd < scores_bytes / 8 and blk_bwd < scores_bytes / 8, (blk_fwd, blk_bwd)


def test_cudnn_needs_a_gpu():
    if jax.default_backend() == "gpu":
        pytest.skip("runs on a GPU: cudnn is usable here")
    q, k, v, valid = _inputs(1, 4, 4, 2, 1, 8, [0])
    with pytest.raises(RuntimeError, match="cudnn.*needs a GPU"):
        attention(TINY.replace(attention="cudnn"), q, k, v, 0, valid)

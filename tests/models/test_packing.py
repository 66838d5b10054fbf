"""Sequence packing in the model: several sequences in one row, kept apart by segment ids, give each
sequence exactly the logprobs (and gradients) it gets alone, in both attention paths."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models.attention import blockwise_attention, reference_attention
from models.transformer import segment_positions
from models.weights import full_shape, map_weights

CFG = models.ModelConfig(arch="qwen3", vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True)
LENGTHS = (5, 9, 3, 11)  # packed into one row of 32 (28 tokens + 4 padding)
# Half of each compile is LLVM optimising tiny kernels; these checks do not need it.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(scope="module")
def params():
    # numpy: models.init_params runs eagerly, one small compile per weight.
    rng = np.random.default_rng(0)
    return map_weights(CFG, lambda w: float(w.init == "ones")
                       + 0.2 * rng.standard_normal(full_shape(w, CFG)).astype(np.float32))


def _packed_row(seqs, row_len):
    tokens, segments = np.zeros(row_len, np.int32), np.zeros(row_len, np.int32)
    start = 0
    for k, s in enumerate(seqs):
        tokens[start:start + len(s)], segments[start:start + len(s)] = s, k + 1
        start += len(s)
    return tokens[None], segments[None]


def test_segment_positions_restart_per_segment():
    seg = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(segment_positions(seg), [[0, 1, 2, 0, 1, 0, 0, 1], list(range(8))])


@pytest.mark.parametrize("attention", ["reference", "blockwise"])
def test_packed_logprobs_and_grads_equal_unpacked(params, attention):
    cfg = CFG.replace(attention=attention, attention_block=4)  # several tiles, segments straddle them
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, CFG.vocab_size, n).astype(np.int32) for n in LENGTHS]
    tokens, segments = _packed_row(seqs, 32)
    starts = np.cumsum((0,) + LENGTHS)
    # Within-sequence targets only: a segment's first token has no context in either layout.
    packed_valid = np.zeros((1, 31), bool)
    for k in range(len(LENGTHS)):
        packed_valid[0, starts[k]:starts[k + 1] - 1] = True
    # Unpacked: one right-padded row per sequence (causal, so the padding is never seen).
    padded = np.zeros((len(seqs), max(LENGTHS)), np.int32)
    for k, s in enumerate(seqs):
        padded[k, :len(s)] = s
    padded_valid = np.arange(max(LENGTHS) - 1)[None] < np.array(LENGTHS)[:, None] - 1

    def loss_and_logp(p, tokens, valid, **kw):
        logp = models.token_logprobs(p, cfg, tokens, **kw)
        return jnp.where(valid, logp, 0.0).sum(), logp

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def both(p):  # one compile for both layouts, values and gradients
        grad = jax.grad(loss_and_logp, has_aux=True)
        return (grad(p, tokens, packed_valid, segment_ids=segments),
                grad(p, padded, padded_valid))

    (g_packed, logp_packed), (g_unpacked, logp_unpacked) = both(params)
    np.testing.assert_allclose(logp_packed[packed_valid], logp_unpacked[padded_valid], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_unpacked)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_attention_paths_agree_with_segments():
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 13, n, 8)), jnp.float32) for n in (4, 2, 2))
    seg = jnp.asarray([[1] * 4 + [2] * 6 + [3] * 2 + [0], [1] * 13])
    valid = seg > 0

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def paths(q, k, v):
        return (reference_attention(q, k, v, 0, valid, q_segment_BT=seg, kv_segment_BS=seg),
                blockwise_attention(q, k, v, 0, valid, 4, q_segment_BT=seg, kv_segment_BS=seg),
                reference_attention(q, k, v, 0, valid))

    ref, blk, plain = paths(q, k, v)
    np.testing.assert_allclose(blk[:, :12], ref[:, :12], rtol=1e-5, atol=1e-6)
    # The segment mask is real: without it the second segment sees the first.
    assert not np.allclose(plain[0, 4:10], ref[0, 4:10], atol=1e-3)

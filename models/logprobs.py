"""Token log-probabilities and entropies without ever holding [B, T, V] logits.

Rows (tokens) are processed `chunk_size` at a time under `lax.scan`; a custom VJP keeps only the hidden
states, the unembedding and two floats per row (logsumexp, entropy) for the backward pass, which
recomputes each chunk's logits. Peak temporary memory is a few [chunk, V] float32 buffers, plus, for
gradients, a float32 [V, D] accumulator so bf16 unembedding gradients are summed over chunks without
bf16 rounding at every step.

DEFAULT_CHUNK = 512, for one 32K-token Qwen3-14B sequence (V = 151,936, D = 5120, bf16): the forward's
temporaries are one [chunk, V] float32 logits buffer, 0.29 GiB, against 18.5 GiB for full logits. On
the CPU backend XLA adds a float32 copy of the bf16 hidden states (0.63 GiB), giving 0.92 GiB: still
under the 1 GiB goal, which 1024 (1.21 GiB there) is not; 256 halves the chunk buffer for twice the
scan steps. `python -m benchmarks.logprob_memory --chunk N` prints the figures.

When the float32 log-softmax of all rows fits in KEEP_LOGP_BYTES (short batches, small vocabularies:
the ~100M benchmark's 2,044 x 32,768 rows are 0.27 GB) it is kept for the backward instead: one
chunk, and the backward is elementwise plus the two gradient matmuls, with no logits recompute (a
third more lm_head FLOPs; ~4% of the RL update on that model).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from models.config import ModelConfig
from models.transformer import model_inputs, hidden_states, unembedding

DEFAULT_CHUNK = 512
KEEP_LOGP_BYTES = 512 << 20


def chunked_logprobs(hidden_ND, unembed_VD, targets_N, chunk_size: int = DEFAULT_CHUNK,
                     return_entropy: bool = False, temperature: float = 1.0, keep_logp_bytes: int = KEEP_LOGP_BYTES):
    """log softmax(h @ W^T / temperature)[target] per row, float32 [N]; with return_entropy also the
    entropy of that distribution [N]. Gradients flow to hidden_ND and unembed_VD. Up to keep_logp_bytes
    the backward reuses the forward's [N, V] log-softmax (one chunk); above, it recomputes chunk by chunk."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0 (greedy rollouts report raw logits: pass 1.0)")
    N, D = hidden_ND.shape
    if N == 0:  # one-token rows: no position has a next token
        empty = jnp.zeros((0,), jnp.float32)
        return (empty, empty) if return_entropy else empty
    keep = N * unembed_VD.shape[0] * 4 <= keep_logp_bytes
    chunk = N if keep else max(1, min(chunk_size, N))
    pad = -N % chunk
    hidden_CcD = jnp.pad(hidden_ND, ((0, pad), (0, 0))).reshape(-1, chunk, D)
    targets_Cc = jnp.pad(jnp.asarray(targets_N, jnp.int32), (0, pad)).reshape(-1, chunk)
    logp_Cc, entropy_Cc = _chunked(float(temperature), return_entropy, keep, hidden_CcD, unembed_VD, targets_Cc)
    logp_N, entropy_N = logp_Cc.reshape(-1)[:N], entropy_Cc.reshape(-1)[:N]
    return (logp_N, entropy_N) if return_entropy else logp_N


def _chunk_logits(temperature, hidden_cD, unembed_VD):
    logits_cV = jnp.einsum("cD,VD->cV", hidden_cD, unembed_VD, preferred_element_type=jnp.float32)
    return logits_cV / temperature if temperature != 1.0 else logits_cV


def _chunk_stats(temperature, with_entropy, hidden_cD, unembed_VD, targets_c):
    """Target logprob, entropy (zeros unless with_entropy), logsumexp and log-softmax of one chunk."""
    z_cV = _chunk_logits(temperature, hidden_cD, unembed_VD)
    lse_c = jax.nn.logsumexp(z_cV, axis=-1)
    # -sum p log p rather than lse - sum p z: no cancellation between two large numbers.
    logp_cV = z_cV - lse_c[:, None]
    entropy_c = -jnp.sum(jnp.exp(logp_cV) * logp_cV, axis=-1) if with_entropy else jnp.zeros_like(lse_c)
    target_logp_c = jnp.take_along_axis(logp_cV, targets_c[:, None], axis=-1)[:, 0]
    return target_logp_c, entropy_c, lse_c, logp_cV


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _chunked(temperature, with_entropy, keep, hidden_CcD, unembed_VD, targets_Cc):
    return _forward(temperature, with_entropy, keep, hidden_CcD, unembed_VD, targets_Cc)[0]


def _forward(temperature, with_entropy, keep, hidden_CcD, unembed_VD, targets_Cc):
    """(logp, entropy) [C, c] and the backward's residuals: the [C, c, V] log-softmax when keep."""
    def step(_, xs):
        hidden_cD, targets_c = xs
        target_logp_c, entropy_c, lse_c, logp_cV = _chunk_stats(temperature, with_entropy, hidden_cD, unembed_VD,
                                                                 targets_c)
        return None, (target_logp_c, entropy_c, lse_c, logp_cV if keep else None)

    _, (logp_Cc, entropy_Cc, lse_Cc, logp_CcV) = jax.lax.scan(step, None, (hidden_CcD, targets_Cc))
    return (logp_Cc, entropy_Cc), (hidden_CcD, unembed_VD, targets_Cc, lse_Cc, entropy_Cc, logp_CcV)


def _chunked_fwd(temperature, with_entropy, keep, hidden_CcD, unembed_VD, targets_Cc):
    # symbolic_zeros=True hands the primals over wrapped (value, perturbed).
    return _forward(temperature, with_entropy, keep, hidden_CcD.value, unembed_VD.value, targets_Cc.value)


def _chunked_bwd(temperature, with_entropy, keep, residuals, cotangents):
    """d logp / dz = onehot(target) - p;  d entropy / dz = -p (log p + entropy); z = logits / temperature.
    A cotangent that is symbolically zero (the trainer's stop_gradient entropy) costs nothing."""
    hidden_CcD, unembed_VD, targets_Cc, lse_Cc, entropy_Cc, logp_CcV = residuals
    dlogp_Cc, dentropy_Cc = (None if isinstance(ct, SymbolicZero) else ct for ct in cotangents)
    if dlogp_Cc is None:
        dlogp_Cc = jnp.zeros(lse_Cc.shape, jnp.float32)
    if not with_entropy:
        dentropy_Cc = None

    def step(dunembed_VD, xs):
        hidden_cD, targets_c, lse_c, entropy_c, dlogp_c, dentropy_c, logp_cV = xs
        if logp_cV is None:
            logp_cV = _chunk_logits(temperature, hidden_cD, unembed_VD) - lse_c[:, None]
        p_cV = jnp.exp(logp_cV)
        onehot_cV = jnp.arange(p_cV.shape[1])[None, :] == targets_c[:, None]
        dz_cV = dlogp_c[:, None] * (onehot_cV - p_cV)
        if dentropy_c is not None:
            dz_cV -= dentropy_c[:, None] * p_cV * (logp_cV + entropy_c[:, None])
        dlogits_cV = (dz_cV / temperature).astype(unembed_VD.dtype)
        dhidden_cD = jnp.einsum("cV,VD->cD", dlogits_cV, unembed_VD, preferred_element_type=jnp.float32)
        dunembed_VD += jnp.einsum("cV,cD->VD", dlogits_cV, hidden_cD.astype(unembed_VD.dtype),
                                  preferred_element_type=jnp.float32)
        return dunembed_VD, dhidden_cD.astype(hidden_cD.dtype)

    dunembed_VD, dhidden_CcD = jax.lax.scan(
        step, jnp.zeros(unembed_VD.shape, jnp.float32),
        (hidden_CcD, targets_Cc, lse_Cc, entropy_Cc, dlogp_Cc, dentropy_Cc, logp_CcV))
    return dhidden_CcD, dunembed_VD.astype(unembed_VD.dtype), None


_chunked.defvjp(_chunked_fwd, _chunked_bwd, symbolic_zeros=True)


@functools.partial(jax.jit, static_argnames=("config", "return_entropy", "chunk_size", "temperature",
                                             "keep_logp_bytes"))
def token_logprobs(params, config: ModelConfig, tokens, attention_mask=None, positions=None, *,
                   return_entropy: bool = False, chunk_size: int = DEFAULT_CHUNK, temperature: float = 1.0,
                   segment_ids=None, keep_logp_bytes: int = KEEP_LOGP_BYTES):
    """[B, T-1] float32: [:, t] = log p(tokens[:, t+1] | tokens[:, :t+1]) under logits / temperature
    (the sampler's definition). With return_entropy, also the predictive entropies [B, T-1]. Where
    attention_mask[:, :-1] & attention_mask[:, 1:] is 0 (padding, and a left-padded row's first real
    token, which has no context) values are finite but meaningless: mask them. With segment_ids
    (packed rows, 0 = padding) each segment sees only itself, so [:, t] is the logprob within token
    t+1's own sequence, except at a segment's first token (no context there either). chunk_size and
    keep_logp_bytes: see chunked_logprobs."""
    tokens, mask, positions = model_inputs(tokens, attention_mask, positions, segment_ids)
    h_BTD, _ = hidden_states(params, config, tokens, mask, positions,
                             segment_ids_BT=None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32))
    B, T, D = h_BTD.shape
    out = chunked_logprobs(h_BTD[:, :-1].reshape(B * (T - 1), D), unembedding(params, config),
                           tokens[:, 1:].reshape(-1), chunk_size, return_entropy, temperature, keep_logp_bytes)
    return jax.tree.map(lambda x_N: x_N.reshape(B, T - 1), out)

"""Batched sampling with a KV cache, with SGLang's sampling semantics (see shared docs/rollouts.md).

One jitted program per shape bucket runs the whole request batch: prefill of the left-padded prompts,
then a `lax.while_loop` of one-token decode steps that exits as soon as every row has stopped.
Sampling parameters are per-row arrays, so a server can batch requests with different temperature,
top_p, top_k, max_new_tokens, stop tokens and seeds into one call (`generate_batch`).

Semantics (SGLang's, with no_stop_trim):
- temperature < 1e-6 is greedy; top_k <= 0, top_p >= 1 and min_p <= 0 switch those filters off.
- top-k, top-p and min-p are applied jointly, all measured on the unfiltered distribution at the given
  temperature (SGLang's "joint" filter order).
- a completion's logprobs are log_softmax(logits / temperature) BEFORE filtering (raw logits when
  greedy); the matched stop token is included in the completion and nothing follows it.
- a row's randomness depends on its seed and its index in the batch only (`jax.random.fold_in` of the
  row, then of the step), so a seed reproduces a batch and repeated prompts in one batch still differ.

Decode steps run the unrolled layer loop of `models.decode` (weights sliced once per call, not once
per step); the prompt prefill runs the scanned decoder.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.decode import decode_logits, hidden_states_unrolled, split_cache, unstack_layers
from models.transformer import default_positions, hidden_states, init_cache, unembedding

GREEDY_BELOW = 1e-6
NO_TOKEN = -1  # fills output slots after a row stopped, and unused stop-token slots


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop_token_ids: tuple[int, ...] = ()
    seed: int = 0
    min_p: float = 0.0


@dataclasses.dataclass
class Completion:
    token_ids: list[int]  # new tokens, the matched stop token included
    logprobs: list[float]  # one per new token
    finish_reason: str  # "stop" | "length"
    matched_stop: int | None = None  # the stop token id when finish_reason == "stop"


def bucket(n: int, minimum: int = 16) -> int:
    """Round up to a power of two, so shapes (and compilations) come from a short list."""
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def generate(params, config: ModelConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, stop_token_ids: Sequence[int] = (),
             seed: int = 0) -> list[Completion]:
    """Complete every prompt (a list of token ids; lengths may differ) with one set of sampling params."""
    sp = SamplingParams(max_new_tokens, temperature, top_p, top_k, tuple(stop_token_ids), seed)
    return generate_batch(params, config, prompts, [sp] * len(prompts))


def generate_batch(params, config: ModelConfig, prompts: Sequence[Sequence[int]],
                   sampling: Sequence[SamplingParams]) -> list[Completion]:
    """Complete prompts[i] with sampling[i]: the entry point for a server batching its requests.

    The batch is padded to bucketed sizes (rows, prompt length, new tokens, stop-token count), so calls
    with similar shapes reuse one compiled program.
    """
    if len(prompts) != len(sampling):
        raise ValueError(f"{len(prompts)} prompts but {len(sampling)} sampling params")
    if not prompts:
        return []
    for i, p in enumerate(prompts):
        if not len(p):
            raise ValueError(f"prompt {i} is empty")
        if min(p) < 0 or max(p) >= config.vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {config.vocab_size})")
    n = len(prompts)
    B, P = bucket(n, 1), bucket(max(len(p) for p in prompts))
    N = bucket(max(s.max_new_tokens for s in sampling))
    K = bucket(max(len(s.stop_token_ids) for s in sampling), 4)

    tokens = np.zeros((B, P), np.int32)
    mask = np.zeros((B, P), np.int32)
    mask[n:, -1] = 1  # padding rows: one token, nothing to generate
    stop = np.full((B, K), NO_TOKEN, np.int32)
    for i, (p, s) in enumerate(zip(prompts, sampling)):
        tokens[i, P - len(p):], mask[i, P - len(p):] = p, 1
        stop[i, :len(s.stop_token_ids)] = s.stop_token_ids

    def column(field, dtype, pad):
        return np.array([getattr(s, field) for s in sampling] + [pad] * (B - n), dtype)

    temperature = column("temperature", np.float32, 0.0)
    top_p, top_k = column("top_p", np.float32, 1.0), column("top_k", np.int32, -1)
    min_p = column("min_p", np.float32, 0.0)
    sampled = temperature >= GREEDY_BELOW
    out = decode(params, config, tokens, mask, temperature, top_p, top_k, min_p,
                 column("max_new_tokens", np.int32, 0), stop,
                 np.array([s.seed % 2**32 for s in sampling] + [0] * (B - n), np.uint32),
                 max_new=N, sample=bool(sampled.any()), filtering=needs_filtering(temperature, top_p, top_k, min_p))
    tokens_BN, logprobs_BN, length_B, stopped_B = jax.device_get(out)
    completions = []
    for i in range(n):
        m = int(length_B[i])
        ids = tokens_BN[i, :m].tolist()
        stopped = bool(stopped_B[i])
        completions.append(Completion(ids, logprobs_BN[i, :m].tolist(), "stop" if stopped else "length",
                                      ids[-1] if stopped else None))
    return completions


def needs_filtering(temperature_B, top_p_B, top_k_B, min_p_B) -> bool:
    """Whether any sampled row uses top-k, top-p or min-p (else the sort they need is skipped)."""
    sampled_B = np.asarray(temperature_B) >= GREEDY_BELOW
    return bool((sampled_B & ((np.asarray(top_k_B) > 0) | (np.asarray(top_p_B) < 1.0)
                              | (np.asarray(min_p_B) > 0.0))).any())


@functools.partial(jax.jit, static_argnames=("config", "max_new", "sample", "filtering"))
def decode(params, config: ModelConfig, tokens_BP, mask_BP, temperature_B, top_p_B, top_k_B, min_p_B, max_new_B,
           stop_BK, seed_B, *, max_new: int, sample: bool, filtering: bool):
    """Prefill left-padded prompts [B, P], then decode up to max_new tokens per row.

    Returns tokens [B, max_new] (NO_TOKEN after a row's end), their logprobs [B, max_new], the number
    of new tokens per row and whether each row ended on a stop token. `sample` is False when every
    row is greedy and `filtering` is False when no sampled row uses top-k, top-p or min-p: both skip work.
    """
    B, P = tokens_BP.shape
    W_VD = unembedding(params, config)
    weights = unstack_layers(params)  # once per call: the steps then read each weight in place
    keys_B = jax.vmap(lambda s, b: jax.random.fold_in(jax.random.key(s), b))(seed_B, jnp.arange(B))

    def pick(logits_BV, step):
        step_keys_B = jax.vmap(jax.random.fold_in, (0, None))(keys_B, step)
        token_B, logp_BV = sample_tokens(logits_BV, step_keys_B, temperature_B, top_p_B, top_k_B, min_p_B,
                                         sample=sample, filtering=filtering)
        return token_B, jnp.take_along_axis(logp_BV, token_B[:, None], axis=1)[:, 0]

    def last_logits(h_BTD):
        return decode_logits(h_BTD[:, -1], W_VD)

    # Prefill into a cache just long enough for the prompts (attention over P keys, not P + max_new).
    h_BPD, cache = hidden_states(params, config, tokens_BP, mask_BP, default_positions(mask_BP),
                                 init_cache(config, B, P), 0)
    cache = split_cache(jax.tree.map(lambda c: jnp.pad(c, ((0, 0), (0, 0), (0, max_new), (0, 0), (0, 0))), cache))
    # Decode slots are valid for every row; causality hides the ones not written yet.
    kv_valid_BS = jnp.concatenate([mask_BP, jnp.ones((B, max_new), mask_BP.dtype)], axis=1)
    prompt_len_B = mask_BP.sum(axis=1)

    def record(state, logits_BV):
        step = state["step"]
        token_B, logprob_B = pick(logits_BV, step)
        live_B = ~state["done"]
        hit_B = live_B & jnp.any(token_B[:, None] == stop_BK, axis=1)
        return dict(
            state, step=step + 1, token=token_B,
            tokens=state["tokens"].at[:, step].set(jnp.where(live_B, token_B, NO_TOKEN)),
            logprobs=state["logprobs"].at[:, step].set(jnp.where(live_B, logprob_B, 0.0)),
            length=state["length"] + live_B, stopped=state["stopped"] | hit_B,
            done=state["done"] | hit_B | (step + 1 >= max_new_B))

    def step_fn(state):
        # Feed the token sampled at step-1: cache slot P + step - 1, RoPE position prompt_len + step - 1.
        slot = P + state["step"] - 1
        h_B1D, cache = hidden_states_unrolled(weights, config, state["token"][:, None], kv_valid_BS,
                                              (prompt_len_B + state["step"] - 1)[:, None], state["cache"], slot)
        return record(dict(state, cache=cache), last_logits(h_B1D))

    state = dict(step=jnp.int32(0), token=jnp.zeros(B, jnp.int32), cache=cache,
                 tokens=jnp.full((B, max_new), NO_TOKEN, jnp.int32), logprobs=jnp.zeros((B, max_new), jnp.float32),
                 length=jnp.zeros(B, jnp.int32), stopped=jnp.zeros(B, bool), done=max_new_B <= 0)
    state = record(state, last_logits(h_BPD))
    state = jax.lax.while_loop(lambda s: (s["step"] < max_new) & ~jnp.all(s["done"]), step_fn, state)
    return state["tokens"], state["logprobs"], state["length"], state["stopped"]


def sample_tokens(logits_BV, keys_B, temperature_B, top_p_B, top_k_B, min_p_B, *, sample: bool, filtering: bool):
    """The next token of every row, and log_softmax(logits / temperature) [B, V] (raw logits when greedy)
    taken before filtering: the logprobs SGLang reports. keys_B are this step's per-row keys."""
    greedy_B = temperature_B < GREEDY_BELOW
    scaled_BV = logits_BV / jnp.where(greedy_B, 1.0, temperature_B)[:, None]
    logp_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
    token_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if sample:
        probs_BV = jax.nn.softmax(_filter(scaled_BV, top_k_B, top_p_B, min_p_B)) if filtering else jnp.exp(logp_BV)
        token_B = jnp.where(greedy_B, token_B, _draw(keys_B, probs_BV))
    return token_B, logp_BV


def _draw(keys_B, probs_BV):
    """One draw per row from probs_BV (rows need not sum to 1) by inverse CDF: the first token whose
    cumulative probability exceeds u ~ U[0, total). One uniform per row; Gumbel-max needs V of them,
    and threefry made that ~30-40 ms a step at 64 rows x 32K tokens on 2 CPU cores (5 ms this way).
    A zero-probability token is never drawn (`inverse_cdf`)."""
    return inverse_cdf(probs_BV, jax.vmap(jax.random.uniform)(keys_B))


def inverse_cdf(probs_BV, u_B):
    """The first token with probability > 0 whose cumulative probability exceeds u_B x the total, for
    u_B in [0, 1). Only tokens with probability count: a float32 cumsum is not monotone (on CPU a
    parallel scan), and counting CDF values <= u gave filtered tokens ~1e-5 of the draws at 152K."""
    positive_BV = probs_BV > 0
    cdf_BV = jnp.cumsum(probs_BV, axis=-1)
    total_B = jnp.max(jnp.where(positive_BV, cdf_BV, 0.0), axis=-1)
    return jnp.argmax(positive_BV & (cdf_BV > (u_B * total_B)[:, None]), axis=-1).astype(jnp.int32)


def _filter(scaled_BV, top_k_B, top_p_B, min_p_B):
    """Mask (to -inf) all but the top_k tokens that also lie in the top_p nucleus and have at least
    min_p times the top probability.

    As SGLang: a token stays in the nucleus when the probability of the tokens above it is <= top_p,
    and tokens are kept by rank (ties in the lower index first), so top_k=1 is greedy even when
    logits tie.
    """
    V = scaled_BV.shape[-1]
    order_BV = jnp.argsort(-scaled_BV, axis=-1, stable=True)  # ties: the lower index ranks first
    sorted_BV = jnp.take_along_axis(scaled_BV, order_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    above_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    n_p_B = jnp.where(top_p_B < 1.0, jnp.sum(above_BV <= top_p_B[:, None], axis=-1), V)
    n_k_B = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, V), V)
    n_min_p_B = jnp.sum(probs_BV >= min_p_B[:, None] * probs_BV[:, :1], axis=-1)  # min_p <= 0 keeps all
    keep_B = jnp.maximum(jnp.minimum(jnp.minimum(n_p_B, n_k_B), n_min_p_B), 1)
    # The first keep_B by rank: everything above the last kept value, and of the tokens tied with it
    # those up to its index (no scatter of the ranks back to token order).
    last_B1 = keep_B[:, None] - 1
    cut_B1, cut_index_B1 = (jnp.take_along_axis(a, last_B1, axis=1) for a in (sorted_BV, order_BV))
    kept_BV = (scaled_BV > cut_B1) | ((scaled_BV == cut_B1) & (jnp.arange(V)[None, :] <= cut_index_B1))
    return jnp.where(kept_BV, scaled_BV, -jnp.inf)

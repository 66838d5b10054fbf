"""A short supervised warm start: cross-entropy on the answer tokens of the demonstrations.

The demonstrations are a noisy demonstrator's (rl.tiny.tasks.demonstrations): for every training
problem the reference program and the same program opened by each wrong habit, in equal shares. The
warm-started model writes the right program about as often as it picks the reference habit, about
one time in three on any problem; which habit passes is what RL has to find out from the sandbox.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.config import ModelConfig
from models.logprobs import token_logprobs


def pack(pairs: list[tuple[list[int], list[int]]], length: int, pad_id: int):
    """Right-padded tokens [N, length], attention mask and answer mask (1 on answer tokens)."""
    N = len(pairs)
    tokens, attention, answer = (np.zeros((N, length), np.int32) for _ in range(3))
    for i, (prompt, reply) in enumerate(pairs):
        n = len(prompt) + len(reply)
        if n > length:
            raise ValueError(f"example {i}: {n} tokens, over the packing length {length}")
        tokens[i, :n], tokens[i, n:] = prompt + reply, pad_id
        attention[i, :n] = 1
        answer[i, len(prompt):n] = 1
    return tokens, attention, answer


def answer_loss(params, config: ModelConfig, tokens_BT, attention_BT, answer_BT):
    """Mean negative log-likelihood of the answer tokens."""
    logp_BT = token_logprobs(params, config, tokens_BT, attention_BT)  # [:, t] predicts tokens[:, t + 1]
    target_BT = answer_BT[:, 1:]
    return -(logp_BT * target_BT).sum() / jnp.maximum(target_BT.sum(), 1)


@functools.partial(jax.jit, static_argnames=("config", "optimizer"), donate_argnums=(0, 1))
def _step(params, opt_state, batch, *, config, optimizer):
    loss, grads = jax.value_and_grad(answer_loss)(params, config, *batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def warm_start(params, config: ModelConfig, pairs, *, steps: int, batch_size: int, lr: float, seed: int,
               pad_id: int, on_step: Callable[[int, float], None] | None = None):
    """AdamW with a linear warmup and cosine decay for `steps` minibatches drawn without replacement
    (reshuffled every epoch). Returns (params, losses per step)."""
    length = max(len(p) + len(r) for p, r in pairs)
    data = pack(pairs, length, pad_id)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), steps, lr / 10)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(seed)
    order, losses = np.array([], np.int64), []
    for step in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(pairs))])
        idx, order = order[:batch_size], order[batch_size:]
        params, opt_state, loss = _step(params, opt_state, tuple(x[idx] for x in data),
                                        config=config, optimizer=optimizer)
        losses.append(float(loss))
        if on_step is not None:
            on_step(step, losses[-1])
    return params, losses

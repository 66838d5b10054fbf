"""The policy objectives: a per-token surrogate plus an aggregation, registered by name.

Each surrogate returns per-token terms [B, T]; padded positions hold finite values (policy_loss
zeroes the inputs there) and the aggregations select valid tokens with jnp.where, so padding never
leaks.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl.losses.registry import alias, register


class Surrogate(NamedTuple):
    loss: jax.Array          # [B, T] per-token loss, before KL, importance weights and aggregation
    ratio: jax.Array         # [B, T] the ratio the objective clips (token or sequence ratio)
    clipped_low: jax.Array   # [B, T] bool: clipped at 1 - eps_low (A < 0), so no gradient
    clipped_high: jax.Array  # [B, T] bool: clipped at 1 + eps_high (A > 0), so no gradient


# exp of a log-ratio above this overflows float32 (e^88.7), and inf * 0 made a NaN loss at A = 0 and
# a NaN gradient: capped, its gradient is 0, as the clip gives one so far above 1 + eps_high anyway.
MAX_LOG_RATIO = 80.0


def clipped_surrogate(ratio, advantages, eps_low, eps_high):
    """PPO's pessimistic clipped surrogate, -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)."""
    clipped_ratio = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
    loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    clipped_low = (advantages < 0) & (ratio < 1.0 - eps_low)
    clipped_high = (advantages > 0) & (ratio > 1.0 + eps_high)
    return Surrogate(loss, ratio, clipped_low, clipped_high)


def token_mean(loss_bt, mask, *, token_normalizer, sequence_normalizer):
    """One mean over every valid token of the (global) batch: every token weighs the same."""
    del sequence_normalizer
    return jnp.where(mask, loss_bt, 0.0).sum() / token_normalizer


def sequence_mean(loss_bt, mask, *, token_normalizer, sequence_normalizer):
    """Mean over each sequence's tokens, then over the (global) batch's sequences."""
    del token_normalizer
    tokens_b = mask.sum(axis=-1)
    per_sequence_b = jnp.where(mask, loss_bt, 0.0).sum(axis=-1) / jnp.maximum(tokens_b, 1)
    return per_sequence_b.sum() / sequence_normalizer


@register("dapo", aggregate=token_mean, eps_low=0.2, eps_high=0.28)
@register("grpo", aggregate=sequence_mean, eps_low=0.2, eps_high=0.2)
def token_ratio_clip(logp, old_logp, advantages, mask, *, eps_low, eps_high):
    """Each token clipped on its own ratio exp(logp - old) (GRPO, DAPO)."""
    del mask
    return clipped_surrogate(jnp.exp(jnp.minimum(logp - old_logp, MAX_LOG_RATIO)), advantages, eps_low, eps_high)


@register("gspo_plus", aggregate=token_mean, eps_low=3e-4, eps_high=4e-4)
@register("gspo", aggregate=sequence_mean, eps_low=3e-4, eps_high=4e-4)
def sequence_ratio_clip(logp, old_logp, advantages, mask, *, eps_low, eps_high):
    """Every token clipped on its sequence's ratio s = exp(mean_t(logp - old)) (GSPO, GSPO+).

    Written in GSPO-token form, sg[s] * exp(logp - sg[logp]): the value is s on every token and, for
    an advantage constant along the sequence, the gradient equals sequence-level GSPO's once
    aggregated; it also accepts per-token advantages.
    """
    log_ratio_bt = jnp.where(mask, logp - old_logp, 0.0)
    log_s_b = log_ratio_bt.sum(axis=-1) / jnp.maximum(mask.sum(axis=-1), 1)
    s_b1 = jnp.exp(jnp.minimum(jax.lax.stop_gradient(log_s_b), MAX_LOG_RATIO))[:, None]
    # A token at logp = -inf makes s 0; zeroed here, its exp(logp - sg[logp]) is 1, not exp(-inf + inf).
    finite_bt = jnp.where(jnp.isfinite(logp), logp, 0.0)
    ratio_bt = s_b1 * jnp.exp(finite_bt - jax.lax.stop_gradient(finite_bt))
    return clipped_surrogate(ratio_bt, advantages, eps_low, eps_high)


# DeepCoder's GRPO+ is DAPO's clipping and token mean with its defaults (no KL, no entropy bonus).
alias("grpo_plus", "dapo")

"""Overlong filtering: rollouts cut at the length limit contribute no policy gradient."""
import jax.numpy as jnp

OVERLONG_MODES = ("zero_advantage", "mask")


def apply_overlong_filter(advantages, mask, truncated, mode="zero_advantage"):
    """Returns (advantages, mask) with truncated rollouts filtered.

    advantages [B] or [B, T] (already normalised, so truncated rollouts stayed in their group's
    statistics); mask [B, T]; truncated bool [B].
    "zero_advantage": truncated rows get advantage 0; their tokens stay in the loss denominators.
    "mask": additionally their tokens leave the mask, so the rows count as padding (no token, no
    sequence, no KL term).
    """
    if mode not in OVERLONG_MODES:
        raise ValueError(f"unknown overlong mode {mode!r}; known: {', '.join(OVERLONG_MODES)}")
    truncated = jnp.asarray(truncated, bool)
    truncated_b1 = truncated.reshape(truncated.shape + (1,) * (jnp.ndim(advantages) - 1))
    advantages = jnp.where(truncated_b1, 0.0, advantages)
    if mode == "mask":
        mask = jnp.logical_and(mask, ~truncated[:, None])
    return advantages, mask

"""Group-relative advantages and the dynamic-sampling filter."""
import jax.numpy as jnp


def _grouped(rewards, group_size):
    rewards = jnp.asarray(rewards)
    rewards = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
    if rewards.shape[-1] % group_size:
        raise ValueError(f"{rewards.shape[-1]} rewards do not split into groups of {group_size}")
    return rewards.reshape(*rewards.shape[:-1], -1, group_size)


def groups_with_signal(rewards, group_size):
    """[..., N] rewards in consecutive groups -> bool [..., N // group_size]: not all rewards equal.

    DAPO's dynamic sampling keeps only these groups: an all-equal group has zero advantage.
    """
    return _signal(_grouped(rewards, group_size))


def _signal(rewards_ng):
    return jnp.any(rewards_ng != rewards_ng[..., :1], axis=-1)


def compute_advantages(rewards, group_size, *, normalize_std=True, ddof=1, eps=1e-6):
    """[..., N] rewards in consecutive groups of group_size -> [..., N] advantages.

    A_i = (R_i - mean) / (std + eps), or R_i - mean with normalize_std=False (Dr. GRPO).
    ddof=1 (unbiased std) matches verl and TRL; ddof=0 matches the Atropos example trainer.
    """
    rewards_ng = _grouped(rewards, group_size)
    centered_ng = rewards_ng - rewards_ng.mean(axis=-1, keepdims=True)
    # A size-1 group has no ddof=1 std (0/0); its advantage is 0 anyway.
    if normalize_std and group_size > 1:
        centered_ng = centered_ng / (rewards_ng.std(axis=-1, ddof=ddof, keepdims=True) + eps)
    # Exact zeros for all-equal groups: the float mean of equal rewards can miss them by an ulp.
    signal_ng = _signal(rewards_ng)[..., None]
    return jnp.where(signal_ng, centered_ng, 0.0).reshape(rewards_ng.shape[:-2] + (-1,))

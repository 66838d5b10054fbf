"""policy_loss: one entry point for every registered objective, with the options they share."""
import jax
import jax.numpy as jnp

from rl.losses.overlong import apply_overlong_filter
from rl.losses.registry import get_objective

KL_LOG_RATIO_MAX = 20.0  # |ref_logp - logp| the k3 KL term sees


def _masked_mean(x_bt, mask):
    return jnp.where(mask, x_bt, 0.0).sum() / jnp.maximum(mask.sum(), 1)


def _masked_max(nonneg_bt, mask):
    return jnp.where(mask, nonneg_bt, 0.0).max()


def _check_shapes(mask, truncated=None, advantages=None, **inputs_bt):
    """Static shape checks, since broadcasting turns a mis-shaped input into a wrong loss."""
    mask_shape = jnp.shape(mask)
    if len(mask_shape) != 2:
        raise ValueError(f"mask has shape {mask_shape}, expected 2-D [B, T] (for one sequence pass "
                         f"[1, T]; vmap over any extra leading axis)")
    batch_shape = mask_shape[:1]
    for name, x in inputs_bt.items():
        if x is not None and jnp.shape(x) != mask_shape:
            raise ValueError(f"{name} has shape {jnp.shape(x)}, expected mask's shape {mask_shape}")
    if advantages is not None and jnp.shape(advantages) not in (batch_shape, mask_shape):
        raise ValueError(f"advantages has shape {jnp.shape(advantages)}, expected {batch_shape} "
                         f"or {mask_shape} (mask's shape {mask_shape})")
    if truncated is not None and jnp.shape(truncated) != batch_shape:
        raise ValueError(f"truncated has shape {jnp.shape(truncated)}, expected {batch_shape} "
                         f"(mask's shape {mask_shape})")


def loss_normalizers(mask, truncated=None, overlong="zero_advantage"):
    """Local counts to sum over micro-batches and data-parallel shards, then pass to policy_loss.

    Returns {"token_normalizer": valid tokens, "sequence_normalizer": sequences with a valid token},
    counted after overlong filtering (mode "mask" removes truncated rows from both).
    """
    _check_shapes(mask, truncated)
    mask = jnp.asarray(mask, bool)
    if truncated is not None:
        _, mask = apply_overlong_filter(jnp.zeros(mask.shape[:1]), mask, truncated, overlong)
    tokens_b = mask.sum(axis=-1)
    return {"token_normalizer": tokens_b.sum(), "sequence_normalizer": (tokens_b > 0).sum()}


def policy_loss(objective, logp, old_logp, advantages, mask, *, kl_coef=0.0, ref_logp=None,
                truncated=None, overlong="zero_advantage", rollout_logp=None, tis_cap=2.0,
                token_normalizer=None, sequence_normalizer=None, entropy=None, **hyperparams):
    """Loss (scalar) and metrics (dict of scalars) of a registered objective.

    logp [B, T] is differentiated; old_logp, ref_logp, rollout_logp [B, T] and advantages ([B] or
    [B, T]) are constants. mask [B, T] marks response tokens; any value at padded positions, NaN and
    inf included, is ignored. entropy is [B, T], truncated [B]. Shapes are checked (ValueError),
    never broadcast: one sequence is a batch [1, T], and several batches are an extra leading axis
    to jax.vmap over. hyperparams override the objective's defaults (eps_low, eps_high).
    See docs/objectives.md for every option.
    """
    _check_shapes(mask, truncated, advantages, logp=logp, old_logp=old_logp, ref_logp=ref_logp,
                  rollout_logp=rollout_logp, entropy=entropy)
    spec = get_objective(objective)
    unknown = set(hyperparams) - set(spec.defaults)
    if unknown:
        raise TypeError(f"{objective!r} got unknown options {sorted(unknown)}; "
                        f"its hyperparameters: {sorted(spec.defaults)}")
    if ref_logp is None and not (isinstance(kl_coef, (int, float)) and kl_coef == 0):
        raise ValueError("kl_coef needs ref_logp")

    mask = jnp.asarray(mask, bool)
    has_tokens_b = mask.any(axis=-1)
    advantages = jnp.asarray(advantages)
    if advantages.ndim == 1:
        advantages = advantages[:, None]
    if truncated is not None:
        advantages, mask = apply_overlong_filter(advantages, mask, truncated, overlong)

    # Zero every input at padding before any arithmetic: jnp.where stops garbage there reaching the
    # loss and, unlike multiplying by the mask, its gradient (0 * inf is NaN).
    def valid(x_bt):  # bf16 / f16 logprobs are upcast: GSPO's 3e-4 clip range is below bf16's resolution
        x_bt = jnp.asarray(x_bt)
        return jnp.where(mask, x_bt.astype(jnp.promote_types(x_bt.dtype, jnp.float32)), 0.0)

    def constant(x_bt):
        return jax.lax.stop_gradient(valid(x_bt))

    logp = valid(logp)
    old_logp = constant(old_logp)
    advantages = constant(jnp.broadcast_to(advantages, mask.shape))
    terms = spec.surrogate(logp, old_logp, advantages, mask, **{**spec.defaults, **hyperparams})
    loss_bt = terms.loss

    log_ratio_bt = logp - old_logp
    metrics = {
        "clip_frac_low": _masked_mean(terms.clipped_low, mask),
        "clip_frac_high": _masked_mean(terms.clipped_high, mask),
        "ratio_mean": _masked_mean(terms.ratio, mask),
        "ratio_max": _masked_max(terms.ratio, mask),
        "approx_kl": _masked_mean(jnp.expm1(log_ratio_bt) - log_ratio_bt, mask),
        "tokens": mask.sum(),
        "overlong_frac": (jnp.zeros(()) if truncated is None else
                          (has_tokens_b & jnp.asarray(truncated, bool)).sum()
                          / jnp.maximum(has_tokens_b.sum(), 1)),
    }
    if rollout_logp is not None:
        gap_bt = old_logp - constant(rollout_logp)
        metrics["mismatch_mean"] = _masked_mean(jnp.abs(gap_bt), mask)
        metrics["mismatch_max"] = _masked_max(jnp.abs(gap_bt), mask)
        if tis_cap is not None:
            # Truncated importance sampling: rollouts came from the inference engine, not pi_old.
            # Only the policy-gradient term is an estimate over those rollouts (the KL is added
            # after, uncorrected), as in verl.
            loss_bt = loss_bt * jnp.minimum(jnp.exp(gap_bt), tis_cap)
            metrics["tis_capped_frac"] = _masked_mean(gap_bt > jnp.log(tis_cap), mask)
    if ref_logp is not None:
        # Bounded as verl's low_var_kl bounds it: past it exp() overflows float32 (inf loss, NaN update).
        ref_minus_logp_bt = jnp.clip(constant(ref_logp) - logp, -KL_LOG_RATIO_MAX, KL_LOG_RATIO_MAX)
        kl_bt = jnp.expm1(ref_minus_logp_bt) - ref_minus_logp_bt  # k3: unbiased and >= 0
        loss_bt = loss_bt + kl_coef * kl_bt
        metrics["kl_ref"] = _masked_mean(kl_bt, mask)
    if entropy is not None:
        metrics["entropy"] = _masked_mean(entropy, mask)

    local = loss_normalizers(mask)
    if token_normalizer is None:
        token_normalizer = local["token_normalizer"]
    if sequence_normalizer is None:
        sequence_normalizer = local["sequence_normalizer"]
    # A count of 0 (no token anywhere, e.g. every rollout masked as overlong) means an empty sum:
    # loss and gradient 0, not 0 / 0.
    loss = spec.aggregate(loss_bt, mask, token_normalizer=jnp.maximum(token_normalizer, 1),
                          sequence_normalizer=jnp.maximum(sequence_normalizer, 1))
    return loss, metrics

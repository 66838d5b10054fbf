"""Hypothesis properties on random shapes and masks, for every objective."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from losses_batches import OBJECTIVE_NAMES, random_batch, token_weights
from rl.losses import OVERLONG_MODES, policy_loss

SETTINGS = settings(max_examples=20, deadline=None)  # each new shape compiles


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def loss_and_grad(objective, extras, overlong, batch):
    options = {}
    if extras:
        options = {"kl_coef": 0.1, "ref_logp": batch["ref_logp"],
                   "rollout_logp": batch["rollout_logp"], "entropy": batch["entropy"],
                   "truncated": batch["advantages"] > 0.5, "overlong": overlong}

    def loss(logp):
        return policy_loss(objective, logp, batch["old_logp"], batch["advantages"], batch["mask"],
                           **options)
    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(batch["logp"])
    return value, metrics, grad


@SETTINGS
@given(objective=st.sampled_from(OBJECTIVE_NAMES), seed=st.integers(0, 2**16),
       garbage=st.sampled_from(["nan", "inf", "big"]), extras=st.booleans(),
       overlong=st.sampled_from(OVERLONG_MODES), data=st.data())
def test_finite_and_blind_to_padding(objective, seed, garbage, extras, overlong, data):
    shape = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 6)))
    empty_rows = data.draw(st.integers(0, shape[0]))
    clean = random_batch(seed, *shape, empty_rows=empty_rows)
    dirty = random_batch(seed, *shape, empty_rows=empty_rows, garbage=garbage)
    with jax.enable_x64(True):
        clean_loss, clean_metrics, clean_grad = loss_and_grad(objective, extras, overlong, clean)
        loss, metrics, grad = loss_and_grad(objective, extras, overlong, dirty)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert np.isfinite(grad).all()
    assert (np.asarray(grad)[~dirty["mask"]] == 0).all()
    np.testing.assert_allclose(loss, clean_loss, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, clean_grad, rtol=1e-12, atol=1e-15)
    for name, value in metrics.items():
        np.testing.assert_allclose(value, clean_metrics[name], rtol=1e-12, atol=1e-15, err_msg=name)


@SETTINGS
@given(objective=st.sampled_from(OBJECTIVE_NAMES), seed=st.integers(0, 2**16), data=st.data())
def test_on_policy_gradient_is_plain_policy_gradient(objective, seed, data):
    """logp == old (ratio 1, nothing clipped): d loss / d logp_t = -A_i * aggregation weight."""
    batch_size = data.draw(st.integers(1, 4))
    batch = random_batch(seed, batch_size, data.draw(st.integers(1, 6)),
                         empty_rows=data.draw(st.integers(0, batch_size - 1)), garbage="nan")
    batch["logp"] = batch["old_logp"]
    with jax.enable_x64(True):
        loss, metrics, grad = loss_and_grad(objective, False, None, batch)
        assert float(metrics["clip_frac_low"]) == 0 and float(metrics["clip_frac_high"]) == 0
    expected = -batch["advantages"][:, None] * token_weights(objective, batch["mask"])
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(loss, expected.sum(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_a_ratio_beyond_float32_stays_finite(objective):
    """exp(100) overflows float32: the loss was right but the gradient NaN, and at A = 0 the loss was NaN."""
    logp = jnp.array([[-0.5, -1.0]], jnp.float32)
    old = jnp.array([[-100.5, -1.0]], jnp.float32)
    mask = jnp.ones((1, 2), bool)
    for advantage in (1.0, 0.0, -1.0):
        (value, _), grad = jax.value_and_grad(
            lambda lp, a=advantage: policy_loss(objective, lp, old, jnp.array([a]), mask), has_aux=True)(logp)
        assert np.isfinite(value) and np.isfinite(grad).all(), (advantage, value, grad)
        if advantage == 0.0:
            assert value == 0.0 and not np.asarray(grad).any()


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_a_token_of_zero_probability_stays_finite(objective):
    """A valid token at logp = -inf (a logit of -inf): its ratio is 0, so the loss is finite and no
    gradient reaches it; GSPO's exp(logp - sg[logp]) was exp(-inf + inf), NaN, on every token."""
    logp = jnp.array([[-0.5, -jnp.inf, -1.0]], jnp.float32)
    old = jnp.array([[-0.6, -1.0, -1.0]], jnp.float32)
    mask = jnp.ones((1, 3), bool)
    for advantage in (1.0, 0.0, -1.0):
        (value, _), grad = jax.value_and_grad(
            lambda lp, a=advantage: policy_loss(objective, lp, old, jnp.array([a]), mask), has_aux=True)(logp)
        assert np.isfinite(value) and np.isfinite(grad).all(), (advantage, value, grad)
        assert grad[0, 1] == 0.0


@pytest.mark.parametrize("objective", ["gspo", "dapo"])
def test_low_precision_logprobs_are_upcast(objective):
    """GSPO's 3e-4 clip range is below bf16's resolution near 1: computed in bf16, the ratio rounded to 1."""
    rng = np.random.default_rng(0)
    old = rng.normal(-1.0, 0.3, (4, 8))
    logp = old + rng.normal(0.0, 2e-3, (4, 8))
    mask, adv = np.ones((4, 8), bool), np.array([1.0, -1.0, 0.5, -0.5])
    bf16 = [jnp.asarray(x, jnp.bfloat16) for x in (logp, old)]
    low, low_metrics = policy_loss(objective, *bf16, adv, mask)
    ref, ref_metrics = policy_loss(objective, *[x.astype(jnp.float32) for x in bf16], adv, mask)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, rtol=1e-6)
    assert low_metrics["clip_frac_low"] == ref_metrics["clip_frac_low"]
    assert low_metrics["clip_frac_high"] == ref_metrics["clip_frac_high"]


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_the_kl_term_stays_finite_far_from_the_reference(objective):
    """k3 = expm1(ref - logp) - (ref - logp) overflowed float32 at a gap of ~89: an inf loss and gradient."""
    mask = jnp.ones((1, 2), bool)
    ref = jnp.full((1, 2), -1.0)
    for far in (-30.0, -95.0, -jnp.inf):
        logp = jnp.array([[-0.5, far]], jnp.float32)
        (value, metrics), grad = jax.value_and_grad(
            lambda lp: policy_loss(objective, lp, ref, jnp.array([1.0]), mask, kl_coef=0.04, ref_logp=ref),
            has_aux=True)(logp)
        assert np.isfinite(value) and np.isfinite(grad).all() and np.isfinite(metrics["kl_ref"]), (far, value, grad)

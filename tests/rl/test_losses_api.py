"""Registry, options, shapes, overlong filtering, importance sampling, metrics, advantages, jit and
vmap."""
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losses_batches import OBJECTIVE_NAMES, random_batch, token_weights
import rl.losses as losses
from rl.losses import (OBJECTIVES, alias, apply_overlong_filter, compute_advantages, get_objective,
                       groups_with_signal, loss_normalizers, policy_loss, register)


pytestmark = pytest.mark.usefixtures("float64")


def dapo_token_loss(batch, eps_low=0.2, eps_high=0.28):
    """The doc's DAPO per-token loss, -min(r A, clip(r) A), in numpy."""
    ratio = np.exp(np.where(batch["mask"], batch["logp"] - batch["old_logp"], 0.0))
    advantages_b1 = batch["advantages"][:, None]
    return -np.minimum(ratio * advantages_b1,
                       np.clip(ratio, 1 - eps_low, 1 + eps_high) * advantages_b1), ratio


# Registry

def test_builtin_objectives_registered():
    assert {"grpo", "dapo", "gspo", "gspo_plus", "grpo_plus"} <= set(OBJECTIVES)
    assert get_objective("grpo").defaults == {"eps_low": 0.2, "eps_high": 0.2}
    assert get_objective("dapo").defaults == {"eps_low": 0.2, "eps_high": 0.28}
    assert get_objective("gspo").defaults == {"eps_low": 3e-4, "eps_high": 4e-4}
    assert get_objective("gspo_plus").defaults == {"eps_low": 3e-4, "eps_high": 4e-4}


def test_grpo_plus_is_dapo_with_its_defaults():
    batch = random_batch(1, garbage="nan")
    args = (batch["logp"], batch["old_logp"], batch["advantages"], batch["mask"])
    assert get_objective("grpo_plus").defaults == get_objective("dapo").defaults
    assert float(policy_loss("grpo_plus", *args)[0]) == float(policy_loss("dapo", *args)[0])


def test_unknown_objective_lists_known_names():
    with pytest.raises(KeyError, match="unknown objective 'ppo'.*dapo.*grpo.*gspo_plus"):
        get_objective("ppo")
    with pytest.raises(KeyError, match="gspo"):
        policy_loss("ppo", np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1), np.ones((1, 1), bool))


def test_new_objective_is_one_function_and_one_registration():
    @register("test_vanilla_pg", aggregate=losses.token_mean)
    def vanilla(logp, old_logp, advantages, mask):
        del mask
        ratio = jnp.exp(logp - old_logp)
        return losses.Surrogate(-ratio * advantages, ratio, ratio < 0, ratio < 0)

    try:
        batch = random_batch(2, garbage="nan")
        loss, metrics = policy_loss("test_vanilla_pg", batch["logp"], batch["old_logp"],
                                    batch["advantages"], batch["mask"])
        ratio = np.exp(np.where(batch["mask"], batch["logp"] - batch["old_logp"], 0.0))
        expected = np.where(batch["mask"], -ratio * batch["advantages"][:, None], 0).sum() / batch[
            "mask"].sum()
        assert float(loss) == pytest.approx(expected, rel=1e-12)
        with pytest.raises(ValueError, match="already registered"):
            register("test_vanilla_pg", aggregate=losses.token_mean)(vanilla)
    finally:
        del OBJECTIVES["test_vanilla_pg"]


def test_alias_goes_through_the_duplicate_check():
    with pytest.raises(ValueError, match="'grpo_plus' is already registered"):
        alias("grpo_plus", "grpo")
    assert get_objective("grpo_plus").surrogate is get_objective("dapo").surrogate
    with pytest.raises(KeyError, match="cannot alias 'test_x' to unknown objective 'ppo'.*dapo"):
        alias("test_x", "ppo")
    assert "test_x" not in OBJECTIVES
    alias("test_alias", "gspo")
    try:
        assert get_objective("test_alias") == dataclasses.replace(get_objective("gspo"),
                                                                  name="test_alias")
    finally:
        del OBJECTIVES["test_alias"]


def test_option_errors():
    args = (np.zeros((1, 2)), np.zeros((1, 2)), np.ones(1), np.ones((1, 2), bool))
    with pytest.raises(TypeError, match="eps_hgih.*eps_high"):
        policy_loss("dapo", *args, eps_hgih=0.3)
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss("grpo", *args, kl_coef=0.1)
    with pytest.raises(ValueError, match="unknown overlong mode"):
        policy_loss("grpo", *args, truncated=np.array([True]), overlong="drop")


B, T = 3, 4
GOOD = {"logp": np.zeros((B, T)), "old_logp": np.zeros((B, T)), "advantages": np.ones(B),
        "mask": np.ones((B, T), bool)}


@pytest.mark.parametrize("name, shape, expected", [
    ("logp", (1, T), "logp has shape (1, 4), expected mask's shape (3, 4)"),
    ("old_logp", (T,), "old_logp has shape (4,), expected mask's shape (3, 4)"),
    ("ref_logp", (B, 1), "ref_logp has shape (3, 1), expected mask's shape (3, 4)"),
    ("rollout_logp", (B, T, 1), "rollout_logp has shape (3, 4, 1), expected mask's shape (3, 4)"),
    ("entropy", (B,), "entropy has shape (3,), expected mask's shape (3, 4)"),
    ("advantages", (B + 1,), "advantages has shape (4,), expected (3,) or (3, 4)"),
    ("advantages", (B, 1), "advantages has shape (3, 1), expected (3,) or (3, 4)"),
    ("advantages", (), "advantages has shape (), expected (3,) or (3, 4)"),
    ("truncated", (1,), "truncated has shape (1,), expected (3,)"),
    ("truncated", (B, T), "truncated has shape (3, 4), expected (3,)"),
])
def test_mis_shaped_input_names_itself(name, shape, expected):
    """Each of these used to broadcast into a wrong loss, or fail naming no argument."""
    inputs = {**GOOD, "kl_coef": 0.1, "ref_logp": np.zeros((B, T)),
              "rollout_logp": np.zeros((B, T)), "entropy": np.zeros((B, T)),
              "truncated": np.zeros(B, bool)}
    inputs[name] = np.zeros(shape, bool if name == "truncated" else float)
    with pytest.raises(ValueError, match=re.escape(expected)):
        policy_loss("dapo", **inputs)
    if name == "truncated":
        with pytest.raises(ValueError, match=re.escape(expected)):
            loss_normalizers(GOOD["mask"], inputs["truncated"])


@pytest.mark.parametrize("mask_shape", [(T,), (2, B, T)])
def test_mask_must_be_2d(mask_shape):
    """[T] inputs (e.g. vmapped per sequence) used to fail with an IndexError."""
    others = {k: np.zeros(mask_shape[:-1] if k == "advantages" else mask_shape)
              for k in ("logp", "old_logp", "advantages")}
    with pytest.raises(ValueError, match=r"mask has shape \(.*\), expected 2-D \[B, T\]"):
        policy_loss("dapo", mask=np.ones(mask_shape, bool), **others)
    with pytest.raises(ValueError, match="mask has shape"):
        loss_normalizers(np.ones(mask_shape, bool))
    if len(mask_shape) == 1:  # vmapping over the sequences of a batch gives such [T] inputs
        with pytest.raises(ValueError, match=r"mask has shape \(4,\)"):
            jax.vmap(functools.partial(policy_loss, "dapo"))(*[GOOD[k] for k in
                                                               ("logp", "old_logp", "advantages",
                                                                "mask")])


def test_hyperparameters_override_defaults():
    batch = random_batch(3, garbage="nan")
    token_loss, _ = dapo_token_loss(batch, 0.1, 0.5)
    loss, _ = policy_loss("dapo", batch["logp"], batch["old_logp"], batch["advantages"],
                          batch["mask"], eps_low=0.1, eps_high=0.5)
    expected = np.where(batch["mask"], token_loss, 0.0).sum() / batch["mask"].sum()
    assert float(loss) == pytest.approx(expected, rel=1e-12)


# Advantages

def test_advantages_per_group():
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    advantages = np.asarray(compute_advantages(rewards, 4))
    for group in range(2):
        r = rewards[4 * group:4 * group + 4]
        np.testing.assert_allclose(advantages[4 * group:4 * group + 4],
                                   (r - r.mean()) / (r.std(ddof=1) + 1e-6), rtol=1e-12)
    assert (advantages[8:] == 0).all()  # all-equal group, exactly zero
    dr_grpo = np.asarray(compute_advantages(rewards, 4, normalize_std=False))
    np.testing.assert_allclose(dr_grpo[:4], rewards[:4] - 0.25, rtol=1e-12)
    assert (dr_grpo[8:] == 0).all()


@pytest.mark.parametrize("normalize_std", [True, False])
def test_groups_of_one_have_zero_advantage(normalize_std):
    advantages = compute_advantages(np.array([1.0, 0.0, 3.0]), 1, normalize_std=normalize_std)
    assert (np.asarray(advantages) == 0).all()


def test_advantages_int_rewards_jit_vmap():
    rewards = np.array([[1, 0, 1, 1], [0, 0, 0, 0]])
    advantages = jax.jit(jax.vmap(functools.partial(compute_advantages, group_size=2)))(rewards)
    np.testing.assert_allclose(advantages, [[0.7071064, -0.7071064, 0, 0], [0, 0, 0, 0]], atol=1e-6)
    with pytest.raises(ValueError, match="groups of 3"):
        compute_advantages(np.zeros(4), 3)


def test_groups_with_signal():
    rewards = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.25])
    np.testing.assert_array_equal(groups_with_signal(rewards, 2), [False, True, False, True])
    np.testing.assert_array_equal(groups_with_signal(rewards, 4), [True, True])
    np.testing.assert_array_equal(jax.jit(groups_with_signal, static_argnums=1)(rewards, 8), [True])


# Overlong filtering

def test_apply_overlong_filter():
    advantages, mask = np.array([1.0, -2.0, 3.0]), np.ones((3, 2), bool)
    truncated = np.array([False, True, False])
    adv, new_mask = apply_overlong_filter(advantages, mask, truncated, "zero_advantage")
    np.testing.assert_array_equal(adv, [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(new_mask, mask)
    advantages_bt = np.repeat(advantages[:, None], 2, axis=1)
    adv, new_mask = apply_overlong_filter(advantages_bt, mask, truncated, "mask")
    np.testing.assert_array_equal(adv, [[1, 1], [0, 0], [3, 3]])
    np.testing.assert_array_equal(new_mask, [[1, 1], [0, 0], [1, 1]])


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_overlong_modes(objective):
    """Both modes: truncated rows get no gradient. zero_advantage keeps them in the denominators
    (token mean: N, sequence mean: G); mask removes them, which equals dropping the rows."""
    batch = random_batch(4, batch=6, noise=1e-2, garbage="nan")
    truncated = np.array([False, True, False, False, True, False])
    keep = {k: v[~truncated] for k, v in batch.items()}

    def run(b, **options):
        def loss(logp):
            return policy_loss(objective, logp, b["old_logp"], b["advantages"], b["mask"],
                               **options)[0]
        return jax.value_and_grad(loss)(b["logp"])

    zero_loss, zero_grad = run(batch, truncated=truncated, overlong="zero_advantage")
    mask_loss, mask_grad = run(batch, truncated=truncated, overlong="mask")
    kept_loss, kept_grad = run(keep)
    assert (np.asarray(zero_grad)[truncated] == 0).all()
    assert (np.asarray(mask_grad)[truncated] == 0).all()
    assert float(mask_loss) == pytest.approx(float(kept_loss), rel=1e-12)
    np.testing.assert_allclose(np.asarray(mask_grad)[~truncated], kept_grad, rtol=1e-12)
    if objective in ("grpo", "gspo"):
        scale = (~truncated).sum() / len(truncated)
    else:
        scale = keep["mask"].sum() / batch["mask"].sum()
    assert float(zero_loss) == pytest.approx(float(kept_loss) * scale, rel=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_every_rollout_masked_with_global_normalizers(objective):
    """Every row truncated with overlong="mask": the global counts are 0, and the loss was 0 / 0."""
    batch = random_batch(9, garbage="nan")
    truncated = np.ones(len(batch["mask"]), bool)
    normalizers = loss_normalizers(batch["mask"], truncated, "mask")
    assert int(normalizers["token_normalizer"]) == int(normalizers["sequence_normalizer"]) == 0

    def loss(logp):
        return policy_loss(objective, logp, batch["old_logp"], batch["advantages"], batch["mask"],
                           truncated=truncated, overlong="mask", **normalizers)[0]

    value, grad = jax.value_and_grad(loss)(batch["logp"])
    assert float(value) == 0
    assert (np.asarray(grad) == 0).all()


# KL, truncated importance sampling and metrics

def test_kl_term_is_k3_aggregated_like_the_objective():
    batch = random_batch(5, garbage="nan")
    args = (batch["logp"], batch["old_logp"], batch["advantages"], batch["mask"])
    with_kl, metrics = policy_loss("dapo", *args, kl_coef=0.3, ref_logp=batch["ref_logp"])
    without = policy_loss("dapo", *args)[0]
    x = np.where(batch["mask"], batch["ref_logp"] - batch["logp"], 0.0)
    kl = np.exp(x) - x - 1
    mean_kl = kl[batch["mask"]].mean()
    assert float(with_kl - without) == pytest.approx(0.3 * mean_kl, rel=1e-10)
    assert float(metrics["kl_ref"]) == pytest.approx(mean_kl, rel=1e-10)


def test_truncated_importance_sampling():
    batch = random_batch(6, noise=0.3, garbage="nan")
    # Wider mismatch than random_batch's, so that some weights pass the cap of 2.
    noise = np.random.default_rng(0).normal(size=batch["mask"].shape)
    batch["rollout_logp"] = batch["old_logp"] + noise
    weight = np.exp(batch["old_logp"] - batch["rollout_logp"])
    assert (weight[batch["mask"]] > 2).any() and (weight[batch["mask"]] < 1).any()
    args = (batch["old_logp"], batch["advantages"], batch["mask"])

    def loss(logp, **options):
        return policy_loss("dapo", logp, *args, rollout_logp=batch["rollout_logp"], **options)

    (value, metrics), grad = jax.value_and_grad(loss, has_aux=True)(batch["logp"])
    token_loss, ratio = dapo_token_loss(batch)
    capped = np.where(batch["mask"], np.minimum(weight, 2.0), 0.0)
    n = batch["mask"].sum()
    expected = (capped * np.where(batch["mask"], token_loss, 0)).sum() / n
    assert float(value) == pytest.approx(expected, rel=1e-12)
    advantages_b1 = batch["advantages"][:, None]
    clipped = ((advantages_b1 > 0) & (ratio > 1.28)) | ((advantages_b1 < 0) & (ratio < 0.8))
    np.testing.assert_allclose(grad, np.where(clipped, 0, -capped * ratio * advantages_b1 / n),
                               rtol=1e-10, atol=1e-15)
    gap = np.abs(batch["old_logp"] - batch["rollout_logp"])[batch["mask"]]
    assert float(metrics["mismatch_mean"]) == pytest.approx(gap.mean(), rel=1e-12)
    assert float(metrics["mismatch_max"]) == pytest.approx(gap.max(), rel=1e-12)
    assert float(metrics["tis_capped_frac"]) == pytest.approx((weight[batch["mask"]] > 2).mean())
    # tis_cap=None reports the mismatch but leaves the loss alone.
    off, off_metrics = loss(batch["logp"], tis_cap=None)
    assert float(off) == pytest.approx(np.where(batch["mask"], token_loss, 0).sum() / n, rel=1e-12)
    assert "mismatch_mean" in off_metrics


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_importance_weights_leave_the_kl_term_alone(objective):
    """TIS corrects the policy-gradient term only: the KL term's value and gradient do not depend
    on rollout_logp."""
    batch = random_batch(10, noise=0.3, garbage="nan")
    batch["rollout_logp"] = batch["old_logp"] + np.random.default_rng(1).normal(
        size=batch["mask"].shape)  # weights on both sides of 1 and past the cap

    def kl_term(rollout_logp):
        def loss(logp, kl_coef):
            return policy_loss(objective, logp, batch["old_logp"], batch["advantages"],
                               batch["mask"], kl_coef=kl_coef, ref_logp=batch["ref_logp"],
                               rollout_logp=rollout_logp)[0]
        with_kl, grad_with = jax.value_and_grad(loss)(batch["logp"], 0.3)
        without, grad_without = jax.value_and_grad(loss)(batch["logp"], 0.0)
        return with_kl - without, grad_with - grad_without

    value, grad = kl_term(batch["rollout_logp"])
    plain_value, plain_grad = kl_term(None)
    assert float(value) == pytest.approx(float(plain_value), rel=1e-12)
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-10, atol=1e-15)


def test_metrics():
    batch = random_batch(7, batch=8, noise=0.4, empty_rows=1, garbage="nan")
    truncated = np.array([True, False, False, True, False, False, False, True])
    loss, metrics = policy_loss("dapo", batch["logp"], batch["old_logp"], batch["advantages"],
                                batch["mask"], truncated=truncated, entropy=batch["entropy"])
    mask = batch["mask"]
    adv_b1 = np.where(truncated, 0.0, batch["advantages"])[:, None]
    ratio = np.exp(np.where(mask, batch["logp"] - batch["old_logp"], 0.0))
    low = ((adv_b1 < 0) & (ratio < 0.8))[mask].mean()
    high = ((adv_b1 > 0) & (ratio > 1.28))[mask].mean()
    assert 0 < low and 0 < high
    log_r = np.log(ratio[mask])
    expected = {
        "clip_frac_low": low, "clip_frac_high": high,
        "ratio_mean": ratio[mask].mean(), "ratio_max": ratio[mask].max(),
        "approx_kl": ((ratio[mask] - 1) - log_r).mean(), "tokens": mask.sum(),
        "overlong_frac": 2 / 7,  # row 7 is empty padding and does not count
        "entropy": batch["entropy"][mask].mean(),
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert float(metrics[name]) == pytest.approx(value, rel=1e-12), name


def test_sequence_objective_clip_fraction_counts_tokens_of_clipped_sequences():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
    old = np.full((2, 4), -1.0)
    logp = old + np.array([[0.01], [0.0]])  # s = [1.01, 1]: only sequence 0 leaves the band
    _, metrics = policy_loss("gspo", logp, old, np.array([1.0, 1.0]), mask)
    assert float(metrics["clip_frac_high"]) == pytest.approx(3 / 4)
    assert float(metrics["clip_frac_low"]) == 0


def test_per_token_advantages_equal_broadcast_sequence_advantages():
    batch = random_batch(8, noise=1e-3, garbage="big")
    per_token = np.repeat(batch["advantages"][:, None], batch["mask"].shape[1], axis=1)
    for objective in OBJECTIVE_NAMES:
        def grad(advantages):
            return jax.grad(lambda lp: policy_loss(objective, lp, batch["old_logp"], advantages,
                                                   batch["mask"])[0])(batch["logp"])
        np.testing.assert_allclose(grad(per_token), grad(batch["advantages"]), rtol=1e-12)


# Transformations

@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_jit_and_vmap_match_eager(objective):
    batches = [random_batch(seed, batch=4, length=5, garbage="nan") for seed in (10, 11, 12)]
    stacked = {k: np.stack([b[k] for b in batches]) for k in batches[0]}

    def loss(b):
        return policy_loss(objective, b["logp"], b["old_logp"], b["advantages"], b["mask"],
                           kl_coef=0.1, ref_logp=b["ref_logp"], rollout_logp=b["rollout_logp"],
                           truncated=b["advantages"] > 1.0, overlong="mask", entropy=b["entropy"])

    def grad(b):
        return jax.grad(lambda lp: loss({**b, "logp": lp})[0])(b["logp"])

    eager = [loss(b) for b in batches]
    jitted = jax.jit(jax.vmap(loss))(stacked)
    grads = jax.jit(jax.vmap(grad))(stacked)
    for i, (value, metrics) in enumerate(eager):
        assert float(jitted[0][i]) == pytest.approx(float(value), rel=1e-12)
        for name in metrics:
            assert float(jitted[1][name][i]) == pytest.approx(float(metrics[name]), rel=1e-12), name
        np.testing.assert_allclose(grads[i], grad(batches[i]), rtol=1e-12, atol=1e-15)
    assert set(eager[0][1]) >= {"kl_ref", "mismatch_mean", "mismatch_max", "entropy"}


def test_token_weights_helper_matches_doc_example():
    """Guards the test helper itself: doc example, G = 2, |y| = [2, 4]."""
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    np.testing.assert_allclose(token_weights("gspo", mask), [[1 / 4, 1 / 4, 0, 0], [1 / 8] * 4])
    np.testing.assert_allclose(token_weights("dapo", mask), np.where(mask, 1 / 6, 0))

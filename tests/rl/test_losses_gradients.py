"""Gradient structure on random batches, checked against the doc's formulas (not the code)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losses_batches import random_batch, token_weights
from rl.losses import policy_loss

EPS = {"grpo": (0.2, 0.2), "dapo": (0.2, 0.28), "gspo": (3e-4, 4e-4), "gspo_plus": (3e-4, 4e-4)}


pytestmark = pytest.mark.usefixtures("float64")


def clipped(ratio, advantage, objective):
    eps_low, eps_high = EPS[objective]
    return ((advantage > 0) & (ratio > 1 + eps_high)) | ((advantage < 0) & (ratio < 1 - eps_low))


def grad_logp(objective, batch):
    def loss(logp):
        return policy_loss(objective, logp, batch["old_logp"], batch["advantages"],
                           batch["mask"])[0]
    return np.asarray(jax.grad(loss)(jnp.asarray(batch["logp"])))


@pytest.mark.parametrize("objective", ["grpo", "dapo"])
@pytest.mark.parametrize("seed", range(3))
def test_token_objectives(objective, seed):
    """d loss / d logp_t = -r_t A_i w_t, w = 1/N (DAPO) or 1/(G |y_i|) (GRPO); 0 where clipped."""
    batch = random_batch(seed, noise=0.3, garbage="nan")
    mask, advantages_b1 = batch["mask"], batch["advantages"][:, None]
    ratio = np.exp(np.where(mask, batch["logp"] - batch["old_logp"], 0.0))
    is_clipped = clipped(ratio, advantages_b1, objective) & mask
    assert 0 < is_clipped.sum() < mask.sum()  # both cases are exercised
    expected = np.where(is_clipped, 0.0, -ratio * advantages_b1 * token_weights(objective, mask))
    np.testing.assert_allclose(grad_logp(objective, batch), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("objective", ["gspo", "gspo_plus"])
@pytest.mark.parametrize("seed", range(3))
def test_sequence_objectives(objective, seed):
    """GSPO: every token of y_i weighs -s_i A_i / (G |y_i|); GSPO+: -s_i A_i / sum_j |y_j|, the same
    weight for all tokens of the batch. Clipped sequences get no gradient."""
    batch = random_batch(seed, noise=1e-3, garbage="big")
    mask, advantages_b1 = batch["mask"], batch["advantages"][:, None]
    lengths_b1 = mask.sum(axis=1, keepdims=True)
    s_b1 = np.exp(np.where(mask, batch["logp"] - batch["old_logp"], 0.0).sum(1, keepdims=True)
                  / lengths_b1)
    seq_clipped_b1 = clipped(s_b1, advantages_b1, objective)
    assert 0 < seq_clipped_b1.sum() < len(s_b1)
    if objective == "gspo":
        weight_b1 = s_b1 * advantages_b1 / (len(s_b1) * lengths_b1)
    else:
        weight_b1 = s_b1 * advantages_b1 / lengths_b1.sum()
    expected = np.where(mask & ~seq_clipped_b1, -weight_b1, 0.0)
    np.testing.assert_allclose(grad_logp(objective, batch), expected, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("objective", ["grpo", "dapo", "gspo", "gspo_plus"])
def test_clipping_is_one_sided(objective):
    """A ratio outside the band on the side that does not help the advantage is not clipped."""
    mask = np.ones((2, 3), bool)
    old = np.full((2, 3), -1.0)
    # Row 0: A > 0 and ratio 0.61, below every band; row 1: A < 0 and ratio 1.65, above it.
    logp = old + np.array([[-0.5], [0.5]])
    advantages = np.array([1.0, -1.0])
    grad = jax.grad(lambda lp: policy_loss(objective, lp, old, advantages, mask)[0])(
        jnp.asarray(logp))
    ratio = np.exp(logp - old)
    expected = -ratio * advantages[:, None] * token_weights(objective, mask)
    np.testing.assert_allclose(grad, expected, rtol=1e-10)

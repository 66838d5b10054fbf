"""The worked example of docs/objectives.md, in float64, to 1e-6."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.losses import compute_advantages, policy_loss

MASK = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
LOGP = np.array([[-0.7, -2.1, 0, 0], [-0.6, -1.2, -0.3, -0.8]])
OLD = np.array([[-1.0, -2.0, 0, 0], [-0.5, -1.5, -0.3, -2.0]])
REF = np.array([[-0.9, -2.0, 0, 0], [-0.5, -1.3, -0.4, -1.0]])
ADVANTAGES = np.array([1.0, -0.5])
WIDE = {"eps_low": 0.2, "eps_high": 0.28}


pytestmark = pytest.mark.usefixtures("float64")


def loss(objective, logp=LOGP, **options):
    return policy_loss(objective, jnp.asarray(logp), OLD, ADVANTAGES, MASK, **options)[0]


@pytest.mark.parametrize("objective, options, expected", [
    ("grpo", {"kl_coef": 0.04, "ref_logp": REF}, -0.114877),
    ("grpo", {}, -0.115284),
    ("dapo", {}, 0.183762),
    ("grpo_plus", {}, 0.183762),
    ("gspo", {}, -0.145433),
    ("gspo_plus", {}, 0.139556),
    ("gspo", WIDE, -0.197819),
    ("gspo_plus", WIDE, 0.104632),
])
def test_loss_values(objective, options, expected):
    assert float(loss(objective, **options)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("objective, seq1, seq2", [
    ("gspo", -0.276293, 0.088692),
    ("gspo_plus", -0.184195, 0.118256),
])
def test_unclipped_sequence_gradients(objective, seq1, seq2):
    grad = jax.grad(lambda logp: loss(objective, logp, **WIDE))(jnp.asarray(LOGP))
    expected = np.where(MASK, np.array([[seq1], [seq2]]), 0.0)
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_ratios_in_metrics():
    # Token ratios: seq1 [1.349859, 0.904837], seq2 [0.904837, 1.349859, 1, 3.320117].
    assert float(policy_loss("dapo", LOGP, OLD, ADVANTAGES, MASK)[1]["ratio_max"]) == pytest.approx(
        3.320117, abs=1e-6)
    # Sequence ratios s = [1.105171, 1.419068], each counted once per token.
    ratio_mean = policy_loss("gspo", LOGP, OLD, ADVANTAGES, MASK)[1]["ratio_mean"]
    assert float(ratio_mean) == pytest.approx((2 * 1.105171 + 4 * 1.419068) / 6, abs=1e-6)


REWARDS = np.array([1.0, -1.0, -1.0, -1.0])


def test_advantages_ddof1_default():
    np.testing.assert_allclose(compute_advantages(REWARDS, 4), [1.499999, -0.5, -0.5, -0.5],
                               atol=1e-6)


def test_advantages_ddof0():
    # The doc's ddof=0 figures are sqrt(3) and 1/sqrt(3) to 6 places, i.e. computed without eps.
    np.testing.assert_allclose(compute_advantages(REWARDS, 4, ddof=0, eps=0.0),
                               [1.732051, -0.577350, -0.577350, -0.577350], atol=1e-6)
    np.testing.assert_allclose(compute_advantages(REWARDS, 4, ddof=0),
                               [1.732051, -0.577350, -0.577350, -0.577350], atol=3e-6)

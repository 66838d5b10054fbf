"""Micro-batches with the global normalizers reproduce the whole batch's loss and gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losses_batches import OBJECTIVE_NAMES, random_batch
from rl.losses import loss_normalizers, policy_loss

SPLITS = (0, 2, 3, 6)  # uneven micro-batches [0:2], [2:3], [3:6]


pytestmark = pytest.mark.usefixtures("float64")


def loss_fn(objective, batch, **options):
    def loss(logp):
        return policy_loss(objective, logp, batch["old_logp"], batch["advantages"], batch["mask"],
                           kl_coef=0.05, ref_logp=batch["ref_logp"],
                           rollout_logp=batch["rollout_logp"], truncated=batch["truncated"],
                           **options)[0]
    return jax.value_and_grad(loss)


def micro_batches(batch):
    return [{k: v[lo:hi] for k, v in batch.items()} for lo, hi in zip(SPLITS, SPLITS[1:])]


def accumulate(objective, batch, **options):
    results = [loss_fn(objective, micro, **options)(jnp.asarray(micro["logp"]))
               for micro in micro_batches(batch)]
    return sum(loss for loss, _ in results), np.concatenate([grad for _, grad in results])


@pytest.fixture
def batch():
    batch = random_batch(0, batch=SPLITS[-1], empty_rows=1, garbage="nan")
    batch["truncated"] = np.arange(SPLITS[-1]) % 3 == 1  # rows 1 and 4
    return batch


@pytest.mark.parametrize("overlong", ["zero_advantage", "mask"])
@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_micro_batches_match_whole_batch(objective, overlong, batch):
    logp = jnp.asarray(batch["logp"])
    whole_loss, whole_grad = loss_fn(objective, batch, overlong=overlong)(logp)
    normalizers = loss_normalizers(batch["mask"], batch["truncated"], overlong)
    loss, grad = accumulate(objective, batch, overlong=overlong, **normalizers)
    assert float(loss) == pytest.approx(float(whole_loss), rel=1e-12)
    np.testing.assert_allclose(grad, whole_grad, rtol=1e-10, atol=1e-15)


def test_local_normalizers_do_not_accumulate(batch):
    """Control: without the global token count DAPO's accumulated loss depends on the split."""
    whole_loss, _ = loss_fn("dapo", batch)(jnp.asarray(batch["logp"]))
    loss, _ = accumulate("dapo", batch)
    assert abs(float(loss) - float(whole_loss)) > 1e-3


def test_normalizers_add_up_over_micro_batches(batch):
    for overlong in ("zero_advantage", "mask"):
        parts = [loss_normalizers(micro["mask"], micro["truncated"], overlong)
                 for micro in micro_batches(batch)]
        whole = loss_normalizers(batch["mask"], batch["truncated"], overlong)
        for key, value in whole.items():
            assert sum(int(p[key]) for p in parts) == int(value)
    # Counted by hand: the doc's definitions of the two denominators.
    kept = batch["mask"] & ~batch["truncated"][:, None]
    assert int(loss_normalizers(batch["mask"])["token_normalizer"]) == batch["mask"].sum()
    assert int(loss_normalizers(batch["mask"])["sequence_normalizer"]) == batch["mask"].any(1).sum()
    masked = loss_normalizers(batch["mask"], batch["truncated"], "mask")
    assert int(masked["token_normalizer"]) == kept.sum()
    assert int(masked["sequence_normalizer"]) == kept.any(1).sum()

"""Random float64 batches for the objective tests, plus the doc's gradient-weight definitions."""
import numpy as np

OBJECTIVE_NAMES = ("grpo", "dapo", "gspo", "gspo_plus")
SEQUENCE_MEAN = ("grpo", "gspo")  # the others are token means (docs/objectives.md)


def random_batch(seed, batch=6, length=7, *, noise=0.3, empty_rows=0, garbage=None):
    """dict of numpy float64 arrays [B, T]; rows have 1..T valid tokens at random positions.

    The last `empty_rows` rows have no valid token (batch padding). garbage in {None, "nan", "inf",
    "big"} fills padded positions of every [B, T] input with junk.
    """
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, length)) < rng.uniform(0.3, 1.0, size=(batch, 1))
    mask[np.arange(batch), rng.integers(0, length, size=batch)] = True
    mask[batch - empty_rows:] = False
    old = -np.abs(rng.normal(size=(batch, length))) - 0.05
    arrays = {
        "logp": old + noise * rng.normal(size=(batch, length)),
        "old_logp": old,
        "ref_logp": old + 0.2 * rng.normal(size=(batch, length)),
        "rollout_logp": old + 0.5 * rng.normal(size=(batch, length)),
        "entropy": rng.uniform(0.0, 3.0, size=(batch, length)),
    }
    if garbage is not None:
        junk = {"nan": np.nan, "inf": np.inf, "big": 1e30}[garbage]
        signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], (batch, length))
        for name in arrays:
            arrays[name] = np.where(mask, arrays[name], junk * signs)
    arrays["advantages"] = rng.normal(size=batch)
    arrays["mask"] = mask
    return arrays


def token_weights(objective, mask):
    """Per-token aggregation weight [B, T]: 1/(G |y_i|) (sequence mean) or 1/sum|y| (token mean)."""
    tokens_b = mask.sum(axis=1, keepdims=True)
    if objective in SEQUENCE_MEAN:
        weights = 1.0 / ((tokens_b > 0).sum() * np.maximum(tokens_b, 1))
    else:
        weights = np.full(mask.shape, 1.0 / mask.sum())
    return np.where(mask, weights, 0.0)

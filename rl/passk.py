"""pass@k as LiveCodeBench reports it, and how sure a comparison of two evaluations is.

pass@k per problem is the unbiased estimator 1 - C(n-c, k) / C(n, k) for n samples of which c passed,
averaged over problems. Two evaluations over the same problems are compared with a paired bootstrap
over problems (the 95% interval of the pass@1 difference) and a sign test on per-problem pass rates.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k), as a running product (no huge binomials)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> dict[int, float]:
    """{k: mean over problems of pass@k} for (n, c) per problem; k larger than some n is left out."""
    out = {}
    for k in ks:
        if counts and all(n >= k for n, _ in counts):
            out[k] = float(np.mean([pass_at_k(n, c, k) for n, c in counts]))
    return out


def breakdown(rows: Sequence[Mapping], key: str, ks: Sequence[int]) -> dict[str, dict]:
    """Mean pass@k per value of `key` (difficulty, platform) over per-problem rows with n and c."""
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(str(r.get(key) or "unknown"), []).append((r["n"], r["c"]))
    return {name: {"problems": len(v), **{f"pass@{k}": p for k, p in mean_pass_at_k(v, ks).items()}}
            for name, v in sorted(groups.items())}


def _paired(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """b - a per problem; the two must list the same problems in the same order."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need one value per problem on both sides, got {a.shape} and {b.shape}")
    return b - a


BOOTSTRAP_DRAWS = 1 << 22  # problem indices drawn at a time (32 MB)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of b - a over problems and its percentile bootstrap interval (problems resampled in pairs)."""
    d = _paired(a, b)
    if d.size == 0:
        raise ValueError("no common problems to compare")
    rng, rows = np.random.default_rng(seed), max(1, BOOTSTRAP_DRAWS // d.size)  # bounded memory at any size
    means = np.concatenate([d[rng.integers(0, d.size, size=(min(rows, resamples - start), d.size))].mean(axis=1)
                            for start in range(0, resamples, rows)])
    tail = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def sign_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided exact sign test on per-problem differences (ties dropped)."""
    d = _paired(a, b)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(0, min(wins, losses) + 1)) / 2 ** n if n else 1.0
    return {"b_better": wins, "a_better": losses, "ties": int(d.size - n), "p_value": min(1.0, 2 * tail)}

"""rl.passk against direct computations: the estimator, the bootstrap's coverage, the sign test."""
import math

import numpy as np
import pytest
from scipy import stats

from rl import passk


def direct_pass_at_k(n, c, k):
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n", [1, 2, 5, 16, 64])
def test_pass_at_k_matches_binomials(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert passk.pass_at_k(n, c, k) == pytest.approx(direct_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_1_is_the_pass_rate_and_pass_at_k_grows_with_k():
    assert passk.pass_at_k(16, 5, 1) == pytest.approx(5 / 16)
    values = [passk.pass_at_k(16, 3, k) for k in range(1, 17)]
    assert all(b >= a for a, b in zip(values, values[1:])) and values[-1] == 1.0


def test_mean_pass_at_k_on_hand_made_verdicts():
    verdicts = {"p1": [True, False, False, True], "p2": [False] * 4, "p3": [True] * 4, "p4": [False, True, False, False]}
    counts = [(len(v), sum(v)) for v in verdicts.values()]
    got = passk.mean_pass_at_k(counts, [1, 2, 4, 8])
    for k in (1, 2, 4):
        assert got[k] == pytest.approx(np.mean([direct_pass_at_k(n, c, k) for n, c in counts]))
    assert 8 not in got  # more than the 4 samples drawn: not estimable
    assert got[1] == pytest.approx((2 + 0 + 4 + 1) / 16)


def test_breakdown_groups_by_key():
    rows = [{"n": 2, "c": 2, "difficulty": "easy"}, {"n": 2, "c": 0, "difficulty": "easy"},
            {"n": 2, "c": 1, "difficulty": "hard"}, {"n": 2, "c": 1, "difficulty": None}]
    got = passk.breakdown(rows, "difficulty", [1, 2])
    assert got["easy"] == {"problems": 2, "pass@1": 0.5, "pass@2": 0.5}
    assert got["hard"]["pass@2"] == 1.0 and got["unknown"]["problems"] == 1


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="c <= n"):
        passk.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="at least 8 samples"):
        passk.pass_at_k(4, 1, 8)


def _pass_probabilities(rng, problems):
    """Per-problem pass probabilities of a baseline and of a model better by about 4 points on average."""
    base = rng.beta(0.6, 0.9, problems)
    return base, np.clip(base + rng.normal(0.04, 0.08, problems), 0, 1)


def test_paired_bootstrap_covers_the_true_difference_at_its_nominal_rate():
    """Each trial draws a fresh problem set and n samples per problem from both models; the 95% interval should
    hold the true difference (over the whole population of problems) about 95% of the time."""
    base, better = _pass_probabilities(np.random.default_rng(123), 1_000_000)
    true = float(np.mean(better - base))
    rng = np.random.default_rng(0)
    problems, n, trials, covered = 200, 4, 300, 0
    for _ in range(trials):
        base, better = _pass_probabilities(rng, problems)
        a, b = rng.binomial(n, base) / n, rng.binomial(n, better) / n
        _, low, high = passk.paired_bootstrap(a, b, resamples=1000, seed=int(rng.integers(1 << 31)))
        covered += low <= true <= high
    rate = covered / trials
    assert 0.91 <= rate <= 0.985, rate  # binomial sd at 300 trials is ~1.3 points (seeds 0-4 give 0.93-0.97)


def test_paired_bootstrap_draws_in_bounded_chunks_without_changing_the_answer(monkeypatch):
    rng = np.random.default_rng(1)
    a, b = rng.random(7), rng.random(7)
    whole = passk.paired_bootstrap(a, b, resamples=1001, seed=3)
    monkeypatch.setattr(passk, "BOOTSTRAP_DRAWS", 30)  # 4 resamples of 7 problems a chunk, the last one short
    assert passk.paired_bootstrap(a, b, resamples=1001, seed=3) == whole
    monkeypatch.setattr(passk, "BOOTSTRAP_DRAWS", 1)  # fewer draws than problems: still a resample a chunk
    assert passk.paired_bootstrap(a, b, resamples=1001, seed=3) == whole


def test_paired_bootstrap_centre_and_errors():
    diff, low, high = passk.paired_bootstrap([0.0, 0.5, 1.0], [0.5, 0.5, 1.0], resamples=2000)
    assert diff == pytest.approx(1 / 6) and low <= diff <= high
    assert passk.paired_bootstrap([1, 1], [1, 1]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="no common problems"):
        passk.paired_bootstrap([], [])
    with pytest.raises(ValueError, match="one value per problem"):
        passk.paired_bootstrap([0.5], [0.5, 1.0])  # would broadcast silently
    with pytest.raises(ValueError, match="one value per problem"):
        passk.sign_test([0.5, 0.0, 1.0], [0.5, 1.0])


@pytest.mark.parametrize("a_rates,b_rates", [
    ([0, 0, 0, 0.5, 1, 0.25, 0.5], [1, 0.5, 0, 0.75, 1, 0.5, 0.25]),
    ([0.1] * 20, [0.2] * 15 + [0.0] * 5),
    ([0.5] * 5, [0.5] * 5),
    ([0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1]),
])
def test_sign_test_matches_scipy_binomtest(a_rates, b_rates):
    got = passk.sign_test(a_rates, b_rates)
    d = np.asarray(b_rates) - np.asarray(a_rates)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    assert (got["b_better"], got["a_better"], got["ties"]) == (wins, losses, int((d == 0).sum()))
    expected = stats.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    assert got["p_value"] == pytest.approx(expected, rel=1e-9)

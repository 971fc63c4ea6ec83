"""Peaks over threshold: the GPD fit, the profile-likelihood bound, the fallback to quantile."""

import math

import numpy as np
import pytest
from scipy import stats

from calibration.evt import evt_threshold, fit_tail, profile_upper_excess


def test_fit_recovers_a_known_shape():
    # excesses of a GPD over a higher level are GPD with the same shape (threshold stability)
    x = np.sort(stats.genpareto.rvs(0.2, size=20000, random_state=np.random.default_rng(3)))
    _, shape, _, _ = fit_tail(x, 2000)
    assert shape == pytest.approx(0.2, abs=0.08)
    x = np.sort(np.random.default_rng(4).exponential(size=20000))  # shape 0, scale 1
    _, shape, scale, _ = fit_tail(x, 2000)
    assert abs(shape) < 0.08 and scale == pytest.approx(1.0, rel=0.15)


def test_profile_bound_covers_the_true_rate_in_most_trials():
    # evt_threshold's bound, without its (slow, Monte Carlo) fit test: target 0.1% from 1000 scores
    covered, trials, target = 0, 100, 0.001
    for seed in range(trials):
        x = np.sort(np.random.default_rng(seed).exponential(size=1000))
        u, shape, scale, excess = fit_tail(x, 100)
        threshold = u + profile_upper_excess(excess, shape, scale, target * 1000 / 100, 0.95)
        covered += math.exp(-threshold) <= target
    assert covered / trials >= 0.85  # nominal 95%; measured 93%


def test_evt_reaches_rates_the_sample_cannot():
    x = np.random.default_rng(5).exponential(size=1000)
    r = evt_threshold(x, target_frr=0.001, confidence=0.95, gof_samples=99)
    assert r.method == "evt" and r.enough
    assert r.details["gof_pvalue"] > 0.05
    assert r.expected_frr < 0.001  # the threshold sits above the point estimate, by the fit's uncertainty
    assert r.threshold > r.details["point_threshold"]
    assert math.exp(-r.threshold) <= 0.001  # this seed's true FRR is within the stated bound
    # the quantile method cannot promise 0.1% with 1000 images
    from calibration.quantile import quantile_threshold
    assert not quantile_threshold(x, 0.001).enough


def test_falls_back_to_quantile_when_the_tail_does_not_fit():
    rng = np.random.default_rng(6)
    # coarsely quantised scores: the top tail is a few repeated values, not a GPD
    x = np.round(rng.exponential(size=2000), 0)
    r = evt_threshold(x, target_frr=0.002, gof_samples=99)
    assert r.method == "quantile (evt fell back)"
    assert "does not fit" in r.message or "all equal" in r.message


def test_falls_back_when_the_sample_is_too_small_or_the_rate_is_in_the_body():
    r = evt_threshold(np.random.default_rng(7).exponential(size=40), 0.01)
    assert r.method.startswith("quantile") and "too short a tail" in r.details["evt_fallback"]
    r = evt_threshold(np.random.default_rng(7).exponential(size=1000), 0.2)
    assert "body of the sample" in r.details["evt_fallback"]

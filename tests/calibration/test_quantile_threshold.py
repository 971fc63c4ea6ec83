"""The quantile threshold and its Clopper-Pearson bound, on distributions with known answers."""

import math

import numpy as np
import pytest
from scipy import stats

from calibration.quantile import add_escapes, min_count_for, quantile_threshold, upper_bound
from edge_infer.errors import LinesideError


def test_bound_holds_in_most_seeded_trials():
    # exponential good scores: the true FRR at threshold t is exp(-t), known exactly
    covered, measured_ok = 0, 0
    trials = 200
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        result = quantile_threshold(rng.exponential(size=1000), target_frr=0.01, confidence=0.95)
        covered += math.exp(-result.threshold) <= result.frr_bound
        fresh = rng.exponential(size=20000)
        measured_ok += np.mean(fresh > result.threshold) <= result.frr_bound
        assert result.enough and result.frr_bound <= 0.01
    assert covered / trials >= 0.9  # nominal 95%
    assert measured_ok / trials >= 0.9


def test_bound_is_clopper_pearson_of_the_rejects_above():
    x = np.random.default_rng(1).normal(size=2000)
    r = quantile_threshold(x, target_frr=0.01, confidence=0.9)
    k = int(np.sum(x > r.threshold))
    assert k == r.details["scores_above"] and k > 0
    assert r.frr_bound == pytest.approx(stats.beta.ppf(0.9, k + 1, 2000 - k))
    # one more reject and the bound would break the target: the threshold is the lowest that meets it
    assert stats.beta.ppf(0.9, k + 2, 2000 - k - 1) > 0.01
    assert r.expected_frr == pytest.approx((k + 1) / 2001)


def test_too_few_images_say_how_many_are_needed():
    x = np.random.default_rng(2).normal(size=120)
    r = quantile_threshold(x, target_frr=0.005, confidence=0.95)
    assert not r.enough
    assert r.min_good_count == 598 == min_count_for(0.005, 0.95)
    assert r.threshold == x.max()  # the most it can do: reject none of the good images seen
    assert "120 good images" in r.message and "2.47%" in r.message and "598" in r.message
    # with the count it asks for, the bound meets the target
    assert quantile_threshold(np.arange(598.0), 0.005, 0.95).enough
    assert not quantile_threshold(np.arange(597.0), 0.005, 0.95).enough


def test_bad_inputs_are_refused_with_the_fix():
    with pytest.raises(LinesideError, match="no good scores"):
        quantile_threshold([])
    with pytest.raises(LinesideError, match="not finite"):
        quantile_threshold([0.1, np.nan, 0.3])
    with pytest.raises(LinesideError, match="between 0 and 1"):
        quantile_threshold([0.1, 0.2], target_frr=5)


def test_escape_rate_and_bound():
    r = quantile_threshold(np.linspace(0, 1, 1000), 0.01)
    add_escapes(r, np.array([0.5, 0.9, 2.0, 3.0]))
    assert r.escape_rate == 0.5 and r.defect_count == 4
    assert r.escape_bound == pytest.approx(upper_bound(2, 4, 0.95))
    assert upper_bound(0, 10, 0.95) == pytest.approx(1 - 0.05 ** (1 / 10))

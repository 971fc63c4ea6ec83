"""f1 and cost thresholds on labelled scores."""

import numpy as np
import pytest

from calibration.labelled import cost_threshold, f1_threshold
from edge_infer.errors import LinesideError


def test_f1_splits_separable_data_midway():
    rng = np.random.default_rng(0)
    good, defects = rng.uniform(0, 1, 300), rng.uniform(2, 3, 40)
    r = f1_threshold(good, defects)
    assert r.threshold == pytest.approx((good.max() + defects.min()) / 2)
    assert r.details["f1"] == 1.0 and r.escape_rate == 0.0 and r.observed_frr == 0.0
    assert 0 < r.escape_bound < 0.1 and 0 < r.frr_bound < 0.02  # zero seen, but the bounds stay honest


def test_f1_on_overlapping_data_balances_misses_and_false_rejects():
    rng = np.random.default_rng(1)
    good, defects = rng.normal(0, 1, 2000), rng.normal(3, 1, 2000)
    r = f1_threshold(good, defects)
    assert r.threshold == pytest.approx(1.5, abs=0.2)  # equal classes, equal spread: the midpoint
    assert r.escape_rate == pytest.approx(r.observed_frr, abs=0.03)


def test_cost_moves_the_threshold_with_the_price_of_an_escape():
    rng = np.random.default_rng(2)
    good, defects = rng.normal(0, 1, 2000), rng.normal(3, 1, 200)
    cheap = cost_threshold(good, defects, cost_escape=1, cost_reject=1, defect_rate=0.05)
    dear = cost_threshold(good, defects, cost_escape=200, cost_reject=1, defect_rate=0.05)
    assert dear.threshold < cheap.threshold
    assert dear.escape_rate < cheap.escape_rate and dear.observed_frr > cheap.observed_frr


def test_labelled_methods_need_defects():
    with pytest.raises(LinesideError, match="--defects"):
        f1_threshold([0.1, 0.2], None)

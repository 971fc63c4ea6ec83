"""The statistics on inputs whose answers are known by hand."""

import numpy as np
import pytest

from benchmarks.stats import (
    bootstrap_ratio,
    cdf,
    format_row,
    statistic,
    summarize,
    throughput,
)


def test_summarize_one_to_hundred():
    s = summarize(np.arange(1, 101))
    assert s["count"] == 100 and s["min"] == 1 and s["max"] == 100
    assert s["mean"] == pytest.approx(50.5)
    # numpy's linear percentile: rank (n-1)·q/100 from 0 → p50 = 50.5, p90 = 90.1, p99 = 99.01
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p95"] == pytest.approx(95.05)
    assert s["p99"] == pytest.approx(99.01)
    # sample standard deviation of 1..n is sqrt(n(n+1)/12)
    assert s["std"] == pytest.approx(np.sqrt(100 * 101 / 12))


def test_summarize_small_cases():
    assert summarize([2.0, 4.0])["std"] == pytest.approx(np.sqrt(2))
    one = summarize([7.0])
    assert one["std"] == 0.0 and one["p99"] == 7.0
    with pytest.raises(ValueError):
        summarize([])


def test_format_row_still_serves_the_demo():
    row = format_row("compute", summarize([1.0, 2.0, 3.0]))
    assert "compute" in row and "p50    2.00" in row and row.endswith("ms")


def test_throughput_and_cdf():
    assert throughput(240, 2.0) == 120.0
    with pytest.raises(ValueError):
        throughput(10, 0)
    x, y = cdf([3.0, 1.0, 2.0, 2.0])
    assert x.tolist() == [1.0, 2.0, 2.0, 3.0]
    assert y.tolist() == [0.25, 0.5, 0.75, 1.0]


def test_statistic_names():
    x = np.arange(1, 101)
    assert statistic(x, "mean") == pytest.approx(50.5)
    assert statistic(x, "p99") == pytest.approx(99.01)
    with pytest.raises(ValueError):
        statistic(x, "median")


def test_bootstrap_interval_brackets_a_known_ratio():
    rng = np.random.default_rng(1)
    a = rng.lognormal(np.log(10), 0.1, 400)
    doubled = bootstrap_ratio(a, 2 * a, "p50")
    assert doubled["ratio"] == pytest.approx(2.0)
    assert 1.8 < doubled["low"] <= 2.0 <= doubled["high"] < 2.2
    same = bootstrap_ratio(a, rng.permutation(a), "p50")
    assert same["low"] < 1.0 < same["high"]
    with pytest.raises(ValueError):
        bootstrap_ratio([1.0], [1.0, 2.0])

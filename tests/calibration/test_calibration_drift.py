"""edge_infer.drift: PSI and the two-sample KS test, numpy only."""

import numpy as np
import pytest
from scipy import stats

from edge_infer.drift import drift_check, drift_from_provenance, ks_2samp, psi, reference_sample


@pytest.mark.parametrize("n,m,shift", [(200, 300, 0.0), (500, 100, 0.3), (1000, 1000, 0.1)])
def test_ks_matches_scipy(n, m, shift):
    rng = np.random.default_rng(n + m)
    a, b = rng.normal(size=n), rng.normal(shift, size=m)
    d, p = ks_2samp(a, b)
    assert d == pytest.approx(stats.ks_2samp(a, b).statistic)
    assert p == pytest.approx(stats.kstwobign.sf(np.sqrt(n * m / (n + m)) * d), rel=1e-6)


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(ref, rng.normal(size=5000)) < 0.02
    assert psi(ref, rng.normal(1.0, size=5000)) > 0.25


def test_drift_check_statuses():
    rng = np.random.default_rng(1)
    ref = reference_sample(rng.exponential(size=3000))
    assert len(ref) == 512
    assert drift_check(ref, rng.exponential(size=500), reference_count=3000)["status"] == "stable"
    drifted = drift_check(ref, rng.exponential(size=500) * 1.8, reference_count=3000)
    assert drifted["status"] == "drift" and drifted["ks_pvalue"] < 0.01 and "recalibrate" in drifted["message"]
    assert drift_check(ref, [0.1] * 5)["status"] == "too-few"
    prov = {"reference_scores": ref, "good_count": 3000}
    assert drift_from_provenance(prov, rng.exponential(size=500))["reference_count"] == 3000
    assert drift_from_provenance({}, [1.0])["status"] == "no-reference"


def test_drift_runs_on_the_device_without_scipy():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, edge_infer.drift; assert 'scipy' not in sys.modules, 'edge_infer.drift imported scipy'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_monitor_compares_the_recent_ok_scores_with_the_reference_below_the_threshold():
    from edge_infer.drift import DriftMonitor

    rng = np.random.default_rng(2)
    calibration = rng.exponential(size=2000)
    threshold = float(np.quantile(calibration, 0.99))
    monitor = DriftMonitor({"reference_scores": reference_sample(calibration), "good_count": 2000}, threshold,
                           window=300)
    assert monitor.report()["status"] == "too-few"
    for s in rng.exponential(size=1000):
        if s <= threshold:  # the line sees OK verdicts only below the threshold
            monitor.add(s)
    assert len(monitor.live) == 300 and monitor.report()["status"] in ("stable", "watch")
    for s in rng.exponential(size=400) * 0.5:  # the line got darker: scores halved
        monitor.add(s)
    assert monitor.report()["status"] == "drift"
    assert DriftMonitor({}, 1.0).report()["status"] == "no-reference"

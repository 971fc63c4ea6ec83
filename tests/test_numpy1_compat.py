"""The metrics and calibration reports on NumPy 1.x (JetPack 6), which has no ``np.trapezoid``:
pyproject.toml declares numpy>=1.24, so nothing may need a NumPy-2-only function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from calibration.report import curves
from edge_infer.numeric import trapezoid
from train_host.metrics import evaluate_scores

ROOT = Path(__file__).resolve().parents[1]

AS_ON_NUMPY_1 = """
import json, sys
import numpy as np
if hasattr(np, "trapezoid"):  # NumPy 1.x has none (and 2.4 no np.trapz): as JetPack 6 and the L4T image run
    del np.trapezoid
    np.__all__ = [name for name in np.__all__ if name != "trapezoid"]
from calibration.report import curves
from train_host.metrics import evaluate_scores
data = json.loads(sys.stdin.read())
good, bad = np.array(data["good"]), np.array(data["bad"])
masks, maps = np.array(data["masks"], np.uint8), np.array(data["maps"], np.float32)
labels = [0] * len(good) + [1] * len(bad)
metrics = evaluate_scores(labels, np.concatenate([good, bad]), masks=masks, maps=maps)
print(json.dumps({"calibration_auroc": curves(good, bad)["auroc"], **metrics}))
"""


def test_metrics_and_calibration_report_run_without_np_trapezoid():
    rng = np.random.default_rng(0)
    good, bad = rng.normal(0, 1, 40), rng.normal(1.2, 1, 25)
    masks = (rng.random((65, 16, 16)) < 0.1).astype(np.uint8)
    masks[:40] = 0
    maps = rng.random((65, 16, 16)).astype(np.float32) + masks
    data = {"good": good.tolist(), "bad": bad.tolist(), "masks": masks.tolist(), "maps": maps.tolist()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", AS_ON_NUMPY_1], input=json.dumps(data), env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    want = evaluate_scores([0] * 40 + [1] * 25, np.concatenate([good, bad]), masks=masks, maps=maps)
    assert abs(got["calibration_auroc"] - curves(good, bad)["auroc"]) < 1e-12
    for name in ("image_auroc", "pixel_auroc", "au_pro_30", "au_pro_05"):
        assert abs(got[name] - want[name]) < 1e-12, name
    assert abs(got["image_auroc"] - roc_auc_score([0] * 40 + [1] * 25, np.concatenate([good, bad]))) < 1e-12


def test_trapezoid_matches_numpy():
    rng = np.random.default_rng(1)
    x, y = np.sort(rng.random(50)), rng.random(50)
    numpy_rule = getattr(np, "trapezoid", None) or np.trapz  # NumPy 2 / NumPy 1
    assert abs(trapezoid(y, x) - numpy_rule(y, x)) < 1e-12
    assert trapezoid([1.0], [0.0]) == 0.0

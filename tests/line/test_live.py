"""The operator page's view model: NG records with heatmaps, alarms, drift warnings."""

import numpy as np

from edge_infer.line.config import DriftConfig
from edge_infer.line.live import LiveView


def event(status, score, i):
    return {"status": status, "score": score, "threshold": 0.5, "id": i, "reason": ""}


def test_drift_warnings_ng_records_and_alarm():
    live = LiveView(DriftConfig(window=20, ng_rate=0.2, score_ratio=0.8), keep_ng=2)
    image = np.full((30, 40, 3), 60, np.uint8)
    for i in range(20):
        live.update(i, event("OK", 0.1, i), image, None)
    assert live.drift() == [] and live.summary()["alarm"] is None
    for i in range(20, 26):
        amap = np.zeros((8, 8), np.float32)
        amap[2:4, 2:4] = 1
        live.update(i, event("NG", 0.9, i), image, amap)
    warnings = live.drift()
    assert len(warnings) == 1 and "NG share 30%" in warnings[0]
    assert [r["inspection"] for r in live.summary()["ng"]] == [25, 24]  # newest first, two kept
    assert live.jpeg(25)[:2] == b"\xff\xd8" and live.jpeg(20) is None
    assert live.acknowledge()["inspection"] == 25 and live.summary()["alarm"] is None
    for i in range(26, 46):  # scores creeping up to the threshold, all still OK
        live.update(i, event("OK", 0.45, i), image, None)
    assert any("mean score" in w for w in live.drift())

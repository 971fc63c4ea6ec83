"""The operator page's view model: NG records with heatmaps, the latched alarm, drift per recipe."""

import numpy as np

from edge_infer.line.config import DriftConfig
from edge_infer.line.live import LiveView


def event(status, score, i, recipe=1, threshold=0.5):
    return {"status": status, "score": score, "threshold": threshold, "id": i, "reason": "", "recipe": recipe}


def test_drift_warnings_ng_records_and_alarm():
    live = LiveView(DriftConfig(window=20, ng_rate=0.2, score_ratio=0.8), keep_ng=2)
    image = np.full((30, 40, 3), 60, np.uint8)
    for i in range(20):
        live.update(i, event("OK", 0.1, i), image, None)
    assert live.drift(1) == [] and live.summary()["alarm"] is None
    for i in range(20, 26):
        amap = np.zeros((8, 8), np.float32)
        amap[2:4, 2:4] = 1
        live.update(i, event("NG", 0.9, i), image, amap)
    warnings = live.drift(1)
    assert len(warnings) == 1 and "NG share 30%" in warnings[0]
    assert [r["inspection"] for r in live.summary()["ng"]] == [25, 24]  # newest first, two kept
    assert live.jpeg(25)[:2] == b"\xff\xd8" and live.jpeg(20) is None
    assert live.jpeg(25, "raw") != live.jpeg(25, "heatmap")  # the raw image is kept beside the heatmap
    for i in range(26, 46):  # scores creeping up to the threshold, all still OK
        live.update(i, event("OK", 0.45, i), image, None)
    assert any("mean score" in w for w in live.drift(1))
    shift = live.summary()["shift"]
    assert (shift["OK"], shift["NG"], shift["yield_pct"]) == (40, 6, round(100 * 40 / 46, 2))


def test_the_alarm_latches_once_until_acknowledged():
    live = LiveView(DriftConfig(window=20))
    assert live.update(1, event("NG", 0.9, 1), None, None)["inspection"] == 1  # latched: the caller journals it
    assert live.update(2, event("NG", 0.9, 2), None, None) is None  # not again on every NG
    assert live.update(3, event("ERROR", None, 3), None, None) is None
    alarm = live.summary()["alarm"]
    assert alarm["inspection"] == 1 and alarm["count"] == 3  # the first part, and how many since
    assert live.acknowledge()["inspection"] == 1 and live.summary()["alarm"] is None
    assert live.update(4, event("NG", 0.9, 4), None, None)["inspection"] == 4  # a new one after the ack


def test_drift_has_a_window_per_recipe_so_a_switch_raises_no_false_warning():
    """Recipe 2 scores on another scale (threshold 40): its normal parts mixed into recipe 1's
    window read as drift after a switch to recipe 1. Each recipe has its own window."""
    live = LiveView(DriftConfig(window=40, ng_rate=0.2, score_ratio=0.8))
    for i in range(30):
        live.update(i, event("OK", 20.0, i, recipe=2, threshold=40.0), None, None)
    for i in range(30, 45):  # after the switch: normal parts of recipe 1
        live.update(i, event("OK", 0.1, i, recipe=1), None, None)
    assert live.drift(1) == [] and live.drift(2) == []

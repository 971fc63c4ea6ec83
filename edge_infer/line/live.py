"""What the operator page shows, fed by the line's verdict listener: the latest part (raw image
and heatmap kept apart, so the heatmap never hides the defect), a pass/fail history strip,
per-shift counters and yield, the recent NG parts for review, the latched alarm, and drift
warnings computed per recipe (a switch starts the new recipe's own window).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

import numpy as np

from ..alerts.disk import heatmap
from ..errors import LinesideError
from ..imaging import encode

STRIP = 60  # results in the pass/fail history strip
SHIFT_STATUSES = ("OK", "NG", "ERROR", "DROPPED")


class LiveView:
    def __init__(self, drift_cfg, keep_ng: int = 8):
        self.lock = threading.Condition()
        self.latest: dict | None = None  # the last part with an image
        self.images: OrderedDict[int, tuple] = OrderedDict()  # inspection -> (raw BGR, heatmap BGR or None)
        self.seq = 0  # bumps on every change: the page's event stream waits on it
        self.ng: OrderedDict[int, dict] = OrderedDict()
        self.keep_ng = keep_ng
        self.drift_cfg = drift_cfg
        self.recent: dict[int | None, deque] = {}  # recipe -> (status, score, threshold): one window each
        self.strip: deque = deque(maxlen=STRIP)
        self.shift = self._new_shift()
        self.alarm: dict | None = None  # latched at the first non-OK part until acknowledged

    @staticmethod
    def _new_shift() -> dict:
        return {"started_at": time.time(), **dict.fromkeys(SHIFT_STATUSES, 0)}

    def update(self, inspection_id: int, event: dict, image: np.ndarray | None, anomaly_map,
               roi=None) -> dict | None:
        """Record one decided part; returns the alarm when this part latched a new one."""
        status, recipe = event["status"], event.get("recipe")
        # the map in the ROI's place, not stretched over the frame
        heat = heatmap(image, anomaly_map, roi) if image is not None and anomaly_map is not None else None
        record = {"inspection": inspection_id, "status": status, "score": event.get("score"),
                  "threshold": event.get("threshold"), "recipe": recipe, "verdict_id": event.get("id"),
                  "reason": event.get("reason") or "", "late": bool(event.get("late")), "at": time.time(),
                  "has_image": image is not None, "has_heatmap": heat is not None, "confirmed": None}
        latched = None
        with self.lock:
            if image is not None:
                self.latest = record
                self.images[inspection_id] = (image, heat)
            if status == "NG":
                self.ng[inspection_id] = record
                while len(self.ng) > self.keep_ng:
                    self.ng.popitem(last=False)
            keep = set(self.ng) | ({self.latest["inspection"]} if self.latest else set())
            for old in [i for i in self.images if i not in keep]:
                del self.images[old]
            if status in ("OK", "NG"):
                window = self.recent.setdefault(recipe, deque(maxlen=self.drift_cfg.window))
                window.append((status, event.get("score"), event.get("threshold")))
            self.strip.append({k: record[k] for k in ("inspection", "status", "score", "threshold")})
            if status in self.shift:
                self.shift[status] += 1
            if status != "OK":
                if self.alarm is None:
                    self.alarm = latched = {"inspection": inspection_id, "status": status, "reason": record["reason"],
                                            "at": record["at"], "count": 1}
                else:
                    self.alarm["count"] += 1  # latched once: later parts only count
            self.seq += 1
            self.lock.notify_all()
        return latched

    def drift(self, recipe=None) -> list[str]:
        """Warnings from the recent parts of one recipe (the active one): a switch never mixes scales."""
        with self.lock:
            recent = list(self.recent.get(recipe, ()))
        if len(recent) < max(10, self.drift_cfg.window // 4):
            return []
        warnings = []
        ng_share = sum(s == "NG" for s, _, _ in recent) / len(recent)
        if ng_share > self.drift_cfg.ng_rate:
            warnings.append(f"NG share {ng_share:.0%} over the last {len(recent)} parts exceeds "
                            f"{self.drift_cfg.ng_rate:.0%}: check the line, the lighting and the camera")
        scored = [(sc, th) for _, sc, th in recent if sc is not None and th]
        if scored:
            mean, th = float(np.mean([s for s, _ in scored])), scored[-1][1]
            if mean > self.drift_cfg.score_ratio * th:
                warnings.append(f"mean score {mean:.3f} is above {self.drift_cfg.score_ratio:g} x threshold "
                                f"({th:.3f}): the parts or the image drifted; consider recalibrating")
        return warnings

    def acknowledge(self) -> dict | None:
        with self.lock:
            alarm, self.alarm = self.alarm, None
            self.seq += 1
            self.lock.notify_all()
        return alarm

    def reset_shift(self) -> dict:
        """Start a new shift's counters; returns the shift that ended."""
        with self.lock:
            ended, self.shift = {**self.shift, "ended_at": time.time()}, self._new_shift()
            self.seq += 1
            self.lock.notify_all()
        return ended

    def reviewed(self, verdict_id: int, confirmed: bool | None) -> None:
        with self.lock:
            for record in self.ng.values():
                if record["verdict_id"] == verdict_id:
                    record["confirmed"] = confirmed
            self.seq += 1
            self.lock.notify_all()

    def wait_change(self, seq: int, timeout_s: float) -> int:
        """Block until ``seq`` is no longer current (or the timeout); returns the current seq."""
        with self.lock:
            self.lock.wait_for(lambda: self.seq != seq, timeout_s)
            return self.seq

    def jpeg(self, inspection_id: int | None = None, layer: str = "heatmap") -> bytes | None:
        """An inspection's image (the latest by default): ``raw``, or ``heatmap`` (raw if it has none)."""
        with self.lock:
            if inspection_id is None:
                inspection_id = self.latest["inspection"] if self.latest else None
            raw, heat = self.images.get(inspection_id, (None, None))
        image = heat if layer == "heatmap" and heat is not None else raw
        if image is None:
            return None
        try:
            return encode(image, "jpeg", 85)
        except LinesideError:
            return None

    def summary(self) -> dict:
        with self.lock:
            shift = dict(self.shift)
            decided = sum(shift[s] for s in SHIFT_STATUSES)
            shift["yield_pct"] = round(100.0 * shift["OK"] / decided, 2) if decided else None
            return {"latest": dict(self.latest) if self.latest else None, "seq": self.seq,
                    "ng": [dict(r) for r in reversed(self.ng.values())], "alarm": dict(self.alarm) if self.alarm
                    else None, "strip": list(self.strip), "shift": shift}

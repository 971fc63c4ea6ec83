"""What the operator page shows: the latest part's image (heatmap over NG parts), the last NG
parts, and drift warnings from the recent scores. Fed by the line's verdict listener."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

import cv2
import numpy as np

from ..alerts.disk import heatmap


class LiveView:
    def __init__(self, drift_cfg, keep_ng: int = 8):
        self.lock = threading.Lock()
        self.latest: dict | None = None  # {"inspection", "status", "image" (BGR, overlay for NG)}
        self.seq = 0
        self.ng: OrderedDict[int, dict] = OrderedDict()
        self.keep_ng = keep_ng
        self.drift_cfg = drift_cfg
        self.recent: deque = deque(maxlen=drift_cfg.window)  # (status, score, threshold)
        self.alarm: dict | None = None  # the last unacknowledged alarm

    def update(self, inspection_id: int, event: dict, image: np.ndarray | None, anomaly_map) -> None:
        status = event["status"]
        shown = image
        if image is not None and anomaly_map is not None:
            shown = heatmap(image, anomaly_map)
        record = {"inspection": inspection_id, "status": status, "score": event.get("score"),
                  "verdict_id": event.get("id"), "at": time.time(), "image": shown}
        with self.lock:
            if shown is not None:
                self.latest, self.seq = record, self.seq + 1
            if status == "NG" and shown is not None:
                self.ng[inspection_id] = record
                while len(self.ng) > self.keep_ng:
                    self.ng.popitem(last=False)
            if status in ("OK", "NG"):
                self.recent.append((status, event.get("score"), event.get("threshold")))
            if status != "OK":
                self.alarm = {"inspection": inspection_id, "status": status, "reason": event.get("reason", ""),
                              "at": time.time()}

    def drift(self) -> list[str]:
        with self.lock:
            recent = list(self.recent)
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
        return alarm

    def jpeg(self, inspection_id: int | None = None) -> bytes | None:
        with self.lock:
            record = self.latest if inspection_id is None else self.ng.get(inspection_id)
        if record is None or record["image"] is None:
            return None
        ok, buf = cv2.imencode(".jpg", record["image"], [cv2.IMWRITE_JPEG_QUALITY, 85])
        return buf.tobytes() if ok else None

    def summary(self) -> dict:
        with self.lock:
            latest = None if self.latest is None else {k: v for k, v in self.latest.items() if k != "image"}
            ng = [{k: v for k, v in r.items() if k != "image"} for r in reversed(self.ng.values())]
            return {"latest": latest, "seq": self.seq, "ng": ng, "alarm": self.alarm}

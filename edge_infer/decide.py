"""From raw model outputs to a verdict: the threshold, and the defect regions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from .bundle import Thresholds
from .imaging import connected_components

Status = Literal["OK", "NG", "ERROR", "DROPPED"]


@dataclass
class Region:
    """A connected defect region, in the model input's pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float


@dataclass
class Verdict:
    status: Status
    score: float | None = None
    threshold: float | None = None
    regions: list[Region] = field(default_factory=list)
    reason: str = ""
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def decide(score: float, anomaly_map: np.ndarray, thresholds: Thresholds) -> Verdict:
    """Apply the station's thresholds to one image's score and anomaly map (h×w or 1×h×w)."""
    if thresholds.image is None:
        return Verdict("ERROR", float(score), None, reason="no image threshold set: run `lineside calibrate`")
    if not np.isfinite(score):
        return Verdict("ERROR", None, thresholds.image, reason=f"model returned a non-finite score ({score})")
    status: Status = "NG" if score > thresholds.image else "OK"
    regions = find_regions(anomaly_map, thresholds) if status == "NG" else []
    return Verdict(status, float(score), thresholds.image, regions)


def find_regions(anomaly_map: np.ndarray, thresholds: Thresholds, limit: int = 16) -> list[Region]:
    """Connected components of the map above the pixel threshold, largest first."""
    amap = np.asarray(anomaly_map, dtype=np.float32).reshape(anomaly_map.shape[-2:])
    level = thresholds.pixel if thresholds.pixel is not None else thresholds.image
    mask = (amap > level).astype(np.uint8)
    labels, stats = connected_components(mask)
    # largest first (ties in label order), and a peak only for the regions kept, read inside
    # each one's box: a noisy map has hundreds of specks, and a whole-map pass per speck was O(n·pixels)
    order = [i for i in np.argsort(-stats[1:, 4], kind="stable") + 1 if stats[i, 4] >= thresholds.min_area]
    regions = []
    for i in order[:limit]:
        x, y, w, h, area = (int(v) for v in stats[i])
        box = (slice(y, y + h), slice(x, x + w))
        regions.append(Region(x, y, w, h, area, float(amap[box][labels[box] == i].max())))
    return regions

"""Disk sink: the NG image, its heatmap and the verdict JSON in a folder, keeping the newest N.

Files are named ``<station>_<camera>_<frame id>_<verdict id>.*``. After a restart the image
of a pending alert is no longer in memory; then only the verdict JSON is written, and noted.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..bundle import write_json_atomic
from ..station import DiskConfig
from .sink import Sink


class DiskSink(Sink):
    name = "disk"

    def __init__(self, cfg: DiskConfig, station: str):
        self.dir, self.keep, self.station = Path(cfg.dir), cfg.keep, station
        self.dir.mkdir(parents=True, exist_ok=True)

    def deliver(self, verdict: dict, images) -> str | None:
        stem = f"{self.station}_{verdict['camera'] or 'unknown'}_{verdict['frame_id']}_{verdict['id']}"
        image, anomaly_map = images.pop(verdict["id"])
        note = None
        if image is not None:
            _write_png(self.dir / f"{stem}.png", image)
            _write_png(self.dir / f"{stem}_heatmap.png", heatmap(image, anomaly_map))
        else:
            note = "image no longer in memory (server restarted): verdict JSON only"
        write_json_atomic(self.dir / f"{stem}.json", verdict)  # last: its presence means the record is whole
        self.prune()
        return note

    def prune(self) -> None:
        records = sorted(self.dir.glob(f"{self.station}_*.json"), key=_verdict_id)
        for old in records[: max(0, len(records) - self.keep)]:
            for suffix in ("_heatmap.png", ".png", ".json"):  # the JSON last, as it marks a whole record
                (self.dir / f"{old.stem}{suffix}").unlink(missing_ok=True)


def _verdict_id(path: Path) -> int:
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def heatmap(image: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """The anomaly map (0..max) in JET colours, blended over the image at its size."""
    amap = np.asarray(anomaly_map, np.float32).reshape(anomaly_map.shape[-2:])
    top = float(amap.max()) or 1.0
    colour = cv2.applyColorMap((np.clip(amap / top, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.resize(colour, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    base = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.addWeighted(base, 0.5, colour, 0.5, 0)


def _write_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.png")
    if not cv2.imwrite(str(tmp), image):
        raise OSError(f"cannot write {tmp}")
    tmp.replace(path)

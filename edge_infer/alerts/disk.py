"""Disk sink: the NG image, its heatmap and the verdict JSON in a folder, keeping the newest N.

Files are named ``<station>_<camera>_<frame id>_<verdict id>.*``. After a restart the image
of a pending alert is no longer in memory; then only the verdict JSON is written, and noted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import write_json_atomic
from ..imaging import colormap_jet, encode, gray_to_bgr, resize
from ..station import DiskConfig
from .sink import Sink


class DiskSink(Sink):
    name = "disk"

    def __init__(self, cfg: DiskConfig, station: str):
        self.dir, self.keep, self.station = Path(cfg.dir), cfg.keep, station
        self.dir.mkdir(parents=True, exist_ok=True)

    def deliver(self, verdict: dict, images) -> str | None:
        stem = f"{self.station}_{verdict['camera'] or 'unknown'}_{verdict['frame_id']}_{verdict['id']}"
        image, anomaly_map, roi = images.pop(verdict["id"])
        note = None
        if image is not None:
            _write_png(self.dir / f"{stem}.png", image)
            _write_png(self.dir / f"{stem}_heatmap.png", heatmap(image, anomaly_map, roi))
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


def heatmap(image: np.ndarray, anomaly_map: np.ndarray, roi=None) -> np.ndarray:
    """The anomaly map (0..max) in JET colours, blended over the full frame where the model looked.

    With the station's ROI (x, y, width, height) the map covers the crop it was computed on,
    in the crop's place; the rest of the frame is shown as it is. Without, the whole frame.
    """
    amap = np.asarray(anomaly_map, np.float32).reshape(anomaly_map.shape[-2:])
    top = float(amap.max()) or 1.0
    colour = colormap_jet((np.clip(amap / top, 0, 1) * 255).astype(np.uint8))
    base = image.copy() if image.ndim == 3 else gray_to_bgr(image)
    x, y, w, h = roi if roi else (0, 0, image.shape[1], image.shape[0])
    colour = resize(colour, w, h, area=False)
    region = base[y : y + h, x : x + w]
    base[y : y + h, x : x + w] = ((region.astype(np.uint16) + colour + 1) >> 1).astype(np.uint8)  # half and half
    return base


def _write_png(path: Path, image: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(encode(image, "png"))
    tmp.replace(path)

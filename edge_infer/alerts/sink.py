"""What every alert sink is, and the cache of NG images the disk sink reads."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict


class Sink(ABC):
    """One alert destination. ``deliver`` raises to ask for a retry."""

    name = "sink"

    @abstractmethod
    def deliver(self, verdict: dict, images: "ImageCache") -> str | None:
        """Deliver one NG verdict (a journal row, ``detail`` parsed); return a note or None."""

    def close(self) -> None:
        """Release what the sink holds (a GPIO line); the default holds nothing."""


class ImageCache:
    """The last NG images, anomaly maps and the ROI each map covers, by journal id, for the disk sink (bounded)."""

    def __init__(self, size: int = 64):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()
        # Held by the output step from the journal commit (which makes an alert pending) until its
        # images are put here, and by alert workers while they read pending alerts: a worker never
        # sees an NG verdict whose image has not arrived yet (the disk sink would miss its heatmap).
        self.staging = threading.Lock()

    def put(self, verdict_id: int, image, anomaly_map, roi=None) -> None:
        with self.lock:
            self.items[verdict_id] = (image, anomaly_map, roi)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def pop(self, verdict_id: int):
        with self.lock:
            return self.items.pop(verdict_id, (None, None, None))

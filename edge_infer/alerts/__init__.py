"""Alert sinks: where an NG verdict goes besides the PUB socket's ``alert.<station>`` topic.

Each durable sink (webhook, GPIO, disk) has a row in the journal's ``deliveries`` table
for every NG verdict, written with the verdict. A worker thread per sink delivers the
pending rows oldest first and marks them; a failure is retried with exponential backoff,
and rows left at shutdown or a crash are delivered after the next start: at least once.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
import time
from collections import OrderedDict

from ..station import StationConfig
from ..logs import log_event
from ..supervise import Loop
from ..telemetry import Telemetry


class Sink(ABC):
    """One alert destination. ``deliver`` raises to ask for a retry."""

    name = "sink"

    @abstractmethod
    def deliver(self, verdict: dict, images: "ImageCache") -> str | None:
        """Deliver one NG verdict (a journal row, ``detail`` parsed); return a note or None."""

    def close(self) -> None:
        """Release what the sink holds (a GPIO line); the default holds nothing."""


class ImageCache:
    """The last NG images and anomaly maps by journal id, for the disk sink (bounded)."""

    def __init__(self, size: int = 64):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def put(self, verdict_id: int, image, anomaly_map) -> None:
        with self.lock:
            self.items[verdict_id] = (image, anomaly_map)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def pop(self, verdict_id: int):
        with self.lock:
            return self.items.pop(verdict_id, (None, None))


def build_sinks(cfg: StationConfig) -> list[Sink]:
    """The station's configured durable sinks; each checks its own prerequisites here, at start."""
    sinks: list[Sink] = []
    if cfg.alerts.webhook:
        from .webhook import WebhookSink

        sinks.append(WebhookSink(cfg.alerts.webhook))
    if cfg.alerts.gpio:
        from .gpio import GpioSink

        sinks.append(GpioSink(cfg.alerts.gpio))
    if cfg.alerts.disk:
        from .disk import DiskSink

        sinks.append(DiskSink(cfg.alerts.disk, cfg.station))
    return sinks


class AlertWorker(Loop):
    """Delivers one sink's pending alerts from the journal, with retry and backoff; a crash
    (a locked journal, a bug) restarts it (edge_infer/supervise.py), and what was pending stays so."""

    def __init__(self, sink: Sink, cfg: StationConfig, images: ImageCache, telemetry: Telemetry,
                 stop: threading.Event):
        super().__init__(f"alert-{sink.name}", stopping=stop)
        self.sink, self.cfg, self.images, self.telemetry, self.stop = sink, cfg, images, telemetry, stop
        self.wake = threading.Event()

    def body(self) -> None:
        from ..journal import Journal

        journal = Journal(self.cfg.journal.path, self.cfg.journal.synchronous)
        try:
            while True:
                stopping = self.stop.is_set()
                delivered = self.deliver_pending(journal)
                if stopping:
                    break  # one last pass after the stop; the rest waits in the journal
                if not delivered:
                    self.wake.wait(0.2)
                    self.wake.clear()
        finally:
            journal.close()

    def finish(self) -> None:
        self.sink.close()

    def deliver_pending(self, journal) -> int:
        done = 0
        for row in journal.pending(self.sink.name):
            try:
                note = self.sink.deliver(row, self.images)
            except Exception as exc:  # any failure is retried later, never lost
                delay = min(self.cfg.alerts.retry_initial_s * 2 ** row["attempts"], self.cfg.alerts.retry_max_s)
                journal.mark_failed(row["id"], self.sink.name, f"{type(exc).__name__}: {exc}", time.time() + delay)
                self.telemetry.alert_failures.labels(self.cfg.station, self.sink.name).inc()
                log_event("alert_failed", sink=self.sink.name, verdict_id=row["id"], attempt=row["attempts"] + 1,
                          retry_in_s=round(delay, 3), error=str(exc))
                continue
            journal.mark_delivered(row["id"], self.sink.name, note)
            done += 1
        return done

"""Alert sinks: where an NG verdict goes besides the PUB socket's ``alert.<station>`` topic.

Each durable sink (webhook, GPIO, disk) has a row in the journal's ``deliveries`` table
for every NG verdict, written with the verdict. A worker thread per sink delivers the
pending rows oldest first and marks them; a failure is retried with exponential backoff,
and rows left at shutdown or a crash are delivered after the next start: at least once.
"""

from __future__ import annotations

import threading
import time

from ..logs import log_event
from ..station import StationConfig
from ..supervise import Loop
from ..telemetry import Telemetry
from .sink import (  # the sinks import these from .sink, so no module imports this package back
    ImageCache,
    Sink,
)


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
        with self.images.staging:  # no alert whose images the output step is still putting
            rows = journal.pending(self.sink.name)
        for row in rows:
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

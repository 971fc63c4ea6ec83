"""Verdicts out: the server's output loop, the one step every verdict passes.

    outbox → journal (one transaction per batch) → PUB verdict.<st> / alert.<st> → listeners

Verdicts are journaled before anyone hears of them; while the journal's disk refuses writes
they wait in the in-memory backlog (``edge_infer.backlog``) and go out anyway, flagged
``journaled: false``. NG images for the disk alert sink are staged in the same step, so an
alert worker never sees a pending alert before its image.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING

import zmq

from .journal import Journal
from .logs import log_event
from .pipeline import Item
from .supervise import POLL_MS
from .wire import verdict_message

if TYPE_CHECKING:
    from .server import Server

BATCH = 256  # verdicts journaled per transaction at most


class Output:
    """The output loop's state and steps; it owns the journal connection that records
    verdicts and the PUB socket that publishes them."""

    def __init__(self, server: Server, sock: zmq.Socket, journal: Journal):
        self.server, self.sock, self.journal = server, sock, journal
        self.station = server.station
        self.sinks = tuple(s.name for s in server.sinks)  # durable alert sinks: a delivery row per NG

    def run(self) -> None:
        server, done = self.server, False
        while not done:
            try:  # while verdicts wait in the backlog, wake up to retry even when no new one comes
                items = [server.outbox.get(timeout=POLL_MS / 1e3 if server.backlog.rows else None)]
            except queue.Empty:
                self._record([])
                continue
            while len(items) < BATCH:
                try:
                    items.append(server.outbox.get_nowait())
                except queue.Empty:
                    break
            done = None in items  # the last worker's end mark
            items = [it for it in items if it is not None]
            if items:
                try:
                    self._journal_and_publish(items)
                except Exception as exc:  # journaled already (or held in the backlog); keep the stream going
                    log_event("publish_failed", level=logging.ERROR, station=self.station, error=repr(exc))
        backlog = server.backlog
        if backlog.rows:  # a last try at the drain; what still fails is logged as never journaled
            backlog.retry_at = 0.0
            self._record([])
            if backlog.rows:
                log_event("journal_backlog_lost", level=logging.ERROR, station=self.station,
                          verdicts=len(backlog.rows), why="the journal could not be written until shutdown")

    def finish(self) -> None:
        self.journal.close()
        self.sock.close()
        self.server.status = "stopped"
        self.server.finished.set()

    def _record(self, items: list[Item]) -> list[int | None]:
        """Journal the verdicts; while the disk refuses, they wait in the backlog (id None) and go out anyway."""
        server = self.server
        ids = server.backlog.write(self.journal, [verdict_row(it) for it in items], self.sinks)
        if server.backlog.failing:
            server.status = "journal-failing"
        elif server.status == "journal-failing":
            server.status = "draining" if server.stopping.is_set() else "ready"
        return ids

    def _journal_and_publish(self, items: list[Item]) -> None:
        server = self.server
        t0 = time.perf_counter()
        with server.images.staging:  # alert workers read pending alerts only once their images are here
            ids = self._record(items)
            if server.cfg.alerts.disk:
                for item, verdict_id in zip(items, ids):
                    if item.verdict.status == "NG" and item.image is not None and verdict_id is not None:
                        server.images.put(verdict_id, item.image, item.anomaly_map, item.roi)
        journal_ms = (time.perf_counter() - t0) * 1e3 / len(items)
        for item, verdict_id in zip(items, ids):
            item.id = verdict_id
            event = item.event()
            event["journaled"] = verdict_id is not None
            event["latency_ms"]["journal"] = round(journal_ms, 3)
            event["latency_ms"]["total"] = round((time.perf_counter() - item.t_received) * 1e3, 3)
            self.sock.send_multipart(verdict_message(event))
            if item.verdict.status == "NG" and server.cfg.alerts.zmq:
                self.sock.send_multipart(verdict_message(event, alert=True))
            policy = server.queue.policy if item.verdict.status == "DROPPED" else None
            server.telemetry.verdict(item.verdict.status, event["latency_ms"]["total"], event["latency_ms"], policy)
            for listener in server.listeners:
                try:
                    listener(item, event)
                except Exception as exc:  # a faulty listener must not stop the verdict stream
                    log_event("listener_failed", listener=repr(listener), error=repr(exc))
            item.image = item.anomaly_map = None
        for worker in server.alert_workers:
            worker.wake.set()


def verdict_row(item: Item) -> dict:
    """A verdict as the journal stores it."""
    v = item.verdict
    return {"inflight_id": item.inflight_id, "decided_at": item.decided_at, "station": item.station, "camera": item.camera,
            "frame_id": item.frame_id, "status": v.status, "score": v.score, "threshold": v.threshold,
            "reason": v.reason,
            "detail": {"regions": [r.__dict__ for r in v.regions], "latency_ms": v.latency_ms,
                       "bundle_sha256": item.bundle_sha, "captured_at": item.captured_at, "tags": item.tags}}

"""Scoring: the server's worker loops (``workers: N`` of them, each with its own backend).

    DropQueue → Model.score (preprocess, batch, backend, decide) → the output step

A batch is formed from what is queued, up to the model's batch within ``batch.max_wait_ms``
(Triton's dynamic batcher). Every frame a worker takes leaves it with a verdict: scored, an
ERROR when scoring or the loop itself fails, or "not scored" when a stop's drain runs out.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .decide import Verdict
from .logs import log_event
from .pipeline import Item
from .supervise import POLL_MS

if TYPE_CHECKING:
    from .server import Server

SCORE_DRAIN_S = 5.0  # after a stop, frames still queued this long are not scored: ERROR "not scored"


class Workers:
    """What the worker loops share: the server, and how many of them are still running (the
    last one to end tells the output step that no verdict will follow)."""

    def __init__(self, server: Server, count: int):
        self.server = server
        self.lock, self.left = threading.Lock(), count
        self.alive_at = time.monotonic()  # the loops' heartbeat, for systemd's watchdog

    def run(self) -> None:
        server = self.server
        wait_s = server.cfg.batch.max_wait_ms / 1e3
        while True:
            with server.model_lock:
                n = min(server.cfg.batch.max_frames, server.model.max_batch)
            self.alive_at = time.monotonic()
            batch = server.queue.get_batch(n, wait_s, POLL_MS / 1e3)
            if batch and server.stopping.is_set() and time.monotonic() > server.stop_at + SCORE_DRAIN_S:
                for item in batch:  # the stop is bounded: what is still queued gets its verdict unscored
                    item.image = item.frame = None
                    item.verdict = Verdict("ERROR", reason=f"not scored: the server stopped and its queue did "
                                                           f"not drain within {SCORE_DRAIN_S:g} s")
                    server.emit(item)
            elif batch:
                try:
                    self._score(batch)
                finally:  # the loop crashed (it will be restarted): what it held still gets a verdict
                    for item in batch:
                        if item.decided_at is None:
                            item.frame, item.verdict = None, Verdict("ERROR", reason="internal error in the worker: "
                                                                     "see the server log")
                            server.emit(item)
                server.telemetry.queue_depth.labels(server.station).set(len(server.queue))
            elif server.received_all.is_set() and not len(server.queue):
                break

    def finish(self) -> None:
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:  # the output step stops at this mark: only after every worker's verdicts
            self.server.outbox.put(None)

    def _score(self, batch: list[Item]) -> None:
        server = self.server
        try:
            with server.model_lock:  # a reload swaps the model between batches, never inside one
                lease = server.model.lease()
            with lease as model:  # scored outside the lock: the other workers score alongside
                model.score(batch)
        except Exception as exc:  # a bug in scoring must not make frames vanish
            log_event("scoring_failed", station=server.station, error=repr(exc))
        for item in batch:
            if item.verdict is None:
                item.verdict = Verdict("ERROR", reason="internal error while scoring: see the server log")
            item.frame = None
            server.emit(item)

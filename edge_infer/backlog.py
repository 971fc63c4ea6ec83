"""Verdicts the journal could not take (disk full, I/O error), held in memory until it can.

The output step journals each group of verdicts before publishing it. When the write fails,
the line must go on (a reject gate waits for every verdict): the group is published flagged
``journaled: false`` and its rows wait here, bounded (``journal.backlog``; beyond it the
oldest are dropped, counted and logged: they were published, never journaled). Later groups
retry the write with backoff (RETRY_MIN_S doubling to RETRY_MAX_S), backlog first, in one
transaction, so journal ids keep the order of decision; while rows wait, health answers
``journal-failing``. ``on_failure`` is called at each failed write (the server asks its
retention job for an emergency pass there).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable

from .logs import log_event

RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0


class Backlog:
    def __init__(self, station: str, capacity: int, on_failure: Callable[[], None] = lambda: None):
        self.station, self.capacity, self.on_failure = station, capacity, on_failure
        self.rows: deque[dict] = deque()
        self.delay, self.retry_at = RETRY_MIN_S, 0.0
        self.failing_since: float | None = None
        self.unjournaled = 0  # verdicts published while the journal failed (all of them, flushed or not)
        self.dropped = 0  # of those, the ones that fell out of the backlog: never journaled
        self.last_error: str | None = None

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def write(self, journal, rows: list[dict], sinks: tuple[str, ...]) -> list[int | None]:
        """Journal ``rows`` (after the backlog); their ids, or None for each when the journal failed."""
        if self.rows and time.monotonic() < self.retry_at:
            self._hold(rows)
            return [None] * len(rows)
        waiting = list(self.rows)
        try:
            ids = journal.record(waiting + rows, sinks)
        except sqlite3.Error as exc:
            self._hold(rows)
            self._failed(exc)
            return [None] * len(rows)
        if self.failing:
            log_event("journal_recovered", station=self.station, flushed=len(waiting), dropped=self.dropped,
                      failing_s=round(time.time() - self.failing_since, 3))
            self.rows.clear()
            self.failing_since, self.delay, self.last_error = None, RETRY_MIN_S, None
        return ids[len(waiting):]

    def _hold(self, rows: list[dict]) -> None:
        self.unjournaled += len(rows)
        self.rows.extend(rows)
        while len(self.rows) > self.capacity:
            self.rows.popleft()
            self.dropped += 1

    def _failed(self, exc: sqlite3.Error) -> None:
        if self.failing_since is None:
            self.failing_since = time.time()
        self.last_error = str(exc)
        log_event("journal_failed", level=logging.ERROR, station=self.station, error=str(exc),
                  code=getattr(exc, "sqlite_errorname", None), backlog=len(self.rows), capacity=self.capacity,
                  dropped=self.dropped, retry_in_s=round(self.delay, 3),
                  effect="verdicts are published with journaled=false and kept in memory until the journal "
                         "can be written; check the journal's disk (df) — retention runs an emergency pass")
        self.retry_at = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, RETRY_MAX_S)
        self.on_failure()

    def report(self) -> dict:
        return {"failing": self.failing, "backlog": len(self.rows), "backlog_capacity": self.capacity,
                "unjournaled": self.unjournaled, "never_journaled": self.dropped, "error": self.last_error}

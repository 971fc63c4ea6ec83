"""Long-running loops that outlive their own bugs.

A ``Loop`` is a thread that runs its ``body`` and, when the body raises, logs the error,
counts a restart, lets ``recover`` repair what the crash left (a REP socket that owes an
answer, a socket to bind again), and runs the body again after a short backoff. ``finish``
runs once, however the loop ends, so the loop's sockets are always closed by the thread
that owns them and a shutdown never waits on a socket nobody will close. ``report()`` is
what `ctl health` shows for each loop.

Once the server is stopping, a loop that keeps crashing is given up after a few restarts
(``finish`` still runs): a stop must finish in bounded time.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable

from .logs import log_event

POLL_MS = 100  # how long a loop waits on its socket or queue before it looks at the stop flag again
BACKOFF_S = 0.05  # first restart delay, doubling per crash in a row
BACKOFF_MAX_S = 2.0
QUIET_S = 30.0  # a loop that ran this long without crashing starts its backoff over
RESTARTS_WHILE_STOPPING = 3


class Loop(threading.Thread):
    """One supervised loop on its own daemon thread (subclass it, or pass ``body``)."""

    def __init__(self, name: str, body: Callable[[], None] | None = None, *,
                 recover: Callable[[BaseException], None] | None = None,
                 finish: Callable[[], None] | None = None,
                 stopping: threading.Event | None = None):
        super().__init__(name=name, daemon=True)
        self._body, self._recover, self._finish = body, recover, finish
        self.stopping = stopping or threading.Event()
        self.restarts = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.given_up = False

    def body(self) -> None:
        self._body()

    def recover(self, exc: BaseException) -> None:
        if self._recover:
            self._recover(exc)

    def finish(self) -> None:
        if self._finish:
            self._finish()

    def report(self) -> dict:
        return {"alive": self.is_alive(), "restarts": self.restarts, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "given_up": self.given_up}

    def run(self) -> None:
        in_a_row, crashes_while_stopping, started = 0, 0, time.monotonic()
        try:
            while True:
                try:
                    self.body()
                    return
                except Exception as exc:  # noqa: BLE001  the loop's own handling missed it: restart
                    in_a_row = 1 if time.monotonic() - started > QUIET_S else in_a_row + 1
                    self._crashed(exc)
                    if self.stopping.is_set():
                        crashes_while_stopping += 1
                        if crashes_while_stopping > RESTARTS_WHILE_STOPPING:
                            self.given_up = True
                            log_event("loop_given_up", level=logging.ERROR, loop=self.name, restarts=self.restarts)
                            return
                    time.sleep(min(BACKOFF_S * 2 ** (in_a_row - 1), BACKOFF_MAX_S))
                    self._guarded("recover", self.recover, exc)
                    started = time.monotonic()
        finally:
            self._guarded("finish", self.finish)

    def _crashed(self, exc: BaseException) -> None:
        self.restarts += 1
        self.last_error, self.last_error_at = f"{type(exc).__name__}: {exc}", round(time.time(), 3)
        log_event("loop_crashed", level=logging.ERROR, loop=self.name, restarts=self.restarts,
                  error=self.last_error, traceback=traceback.format_exc())

    def _guarded(self, step: str, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001  a failing repair is logged; the next crash tries again
            log_event(f"loop_{step}_failed", level=logging.ERROR, loop=self.name, error=repr(exc),
                      traceback=traceback.format_exc())


def join_all(loops: list[threading.Thread], deadline: float) -> list[str]:
    """Join the loops until ``deadline`` (time.monotonic()); return the names still running."""
    for loop in loops:
        loop.join(timeout=max(0.0, deadline - time.monotonic()))
    return [loop.name for loop in loops if loop.is_alive()]

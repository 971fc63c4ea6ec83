"""The systemd notify protocol (sd_notify(3)) without a dependency: one AF_UNIX datagram per message.

`lineside serve` sends READY=1 once every station's model is loaded and its sockets bound,
WATCHDOG=1 while every station's worker loop keeps turning (a hung worker stops the pings,
so systemd's WatchdogSec restarts the service), and STOPPING=1 when it drains. Outside
systemd ($NOTIFY_SOCKET unset) every call does nothing. Hand-written because the protocol
is a single sendto() and the device install stays lean.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace: a leading NUL byte on the wire
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_s = int(usec) / 1e6 if wanted else None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) if self.address else None
        self.last_ping = 0.0

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:  # systemd gone or the socket full: the service itself must not die of it
            pass

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=draining the queues and the journal")

    def watchdog(self, alive_since: float) -> None:
        """Ping at half the watchdog interval, only while the workers turned within that half."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self.last_ping >= self.watchdog_s / 2 and now - alive_since < self.watchdog_s / 2:
            self.send("WATCHDOG=1")
            self.last_ping = now

    @property
    def tick_s(self) -> float:
        """How often the caller should call watchdog(): often enough to keep half-interval pings."""
        return min(0.5, self.watchdog_s / 4) if self.watchdog_s else 0.5

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

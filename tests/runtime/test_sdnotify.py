"""`lineside serve` under systemd's notify protocol: a real AF_UNIX datagram socket stands where
systemd's is ($NOTIFY_SOCKET), and the service must say READY=1 once it serves, WATCHDOG=1 at
half of $WATCHDOG_USEC while its worker turns, nothing while the worker hangs in a model that
does not return, and STOPPING=1 when it drains."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_infer.camera import Publisher
from edge_infer.control import request
from edge_infer.sdnotify import Notifier
from runtime_helpers import bright, cleanup, dark, short_dir, station, wait_for_rows
from tiny_bundle import make_tiny_bundle

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_S = 4.0  # pings every 2 s; generous, as the tests share a loaded 2-core machine


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: every datagram, with the time it arrived."""

    def __init__(self):
        self.dir = short_dir()
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        end = time.monotonic() + seconds
        got = []
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            got.append((time.monotonic(), data))
        self.messages += got
        return got

    def drain(self) -> list[str]:
        """What has arrived so far (sent earlier), without waiting."""
        self.sock.settimeout(0)
        got = []
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return got

    def wait_for(self, field: str, timeout_s: float) -> float:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            for at, data in self.collect(min(0.5, end - time.monotonic())):
                if field in data.split("\n"):
                    return at
        raise AssertionError(f"no {field} within {timeout_s}s; got {self.messages}")

    def close(self):
        self.sock.close()
        os.unlink(self.path)
        self.dir.rmdir()


@pytest.fixture
def systemd():
    fake = FakeSystemd()
    yield fake
    fake.close()


def serve(config_path, notify_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": notify_path,
           "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
    return subprocess.Popen([sys.executable, "-m", "lineside", "serve", str(config_path)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def watchdogs(messages):
    return [at for at, data in messages if "WATCHDOG=1" in data.split("\n")]


def test_ready_then_watchdog_pings_that_stop_when_the_worker_hangs(tmp_path, systemd):
    # a real model whose scoring does not return for minutes on a bright frame (tests/tiny_bundle.py)
    bundle = make_tiny_bundle(tmp_path / "bundle", stall_per_level=100_000)
    cfg, path = station(tmp_path, bundle)
    proc = serve(path, systemd.path)
    try:
        systemd.wait_for("READY=1", timeout_s=60)
        assert request(cfg.sockets.control, {"cmd": "health"}, timeout_s=5)["status"] == "ready"
        pings = watchdogs(systemd.collect(2 * WATCHDOG_S))
        assert len(pings) >= 2, systemd.messages  # every WATCHDOG_USEC / 2: about 4 in this window
        assert max(b - a for a, b in zip(pings, pings[1:])) < WATCHDOG_S, pings  # no gap systemd would act on

        publisher = Publisher(cfg.sockets.frames, "st1", "cam0", "raw")
        publisher.publish(dark(), block=True)
        assert [r["status"] for r in wait_for_rows(cfg.journal.path, 1)] == ["OK"]  # a dark frame scores at once
        publisher.publish(bright(), block=True)  # the worker now spins inside the model
        time.sleep(WATCHDOG_S)  # pings may go on until the heartbeat is half an interval old
        systemd.drain()
        hung = systemd.collect(2 * WATCHDOG_S)
        assert watchdogs(hung) == [], hung
        assert proc.poll() is None, proc.stderr.read()  # hung, not dead: only the watchdog can tell systemd
        publisher.close()
    finally:
        proc.kill()
        proc.wait(10)
        cleanup(cfg)


def test_stopping_is_sent_when_serve_drains(tmp_path, systemd):
    cfg, path = station(tmp_path)
    proc = serve(path, systemd.path)
    try:
        systemd.wait_for("READY=1", timeout_s=60)
        proc.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING=1", timeout_s=30)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        cleanup(cfg)


def test_notifier_reaches_an_abstract_socket_and_is_silent_outside_systemd():
    name = f"lineside-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        notifier.ready("serving st1")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving st1"
        notifier.watchdog(alive_since=time.monotonic())
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.watchdog(alive_since=time.monotonic())  # within half the interval: no second ping yet
        sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            sock.recv(4096)
        notifier.close()
    finally:
        sock.close()
    quiet = Notifier({})
    quiet.ready("x")  # no $NOTIFY_SOCKET: nothing to do, nothing raised
    assert quiet.watchdog_s is None and quiet.sock is None

"""The load of an end-to-end run: a `lineside serve` process on a benchmark copy of the
station, synthetic cameras that replay real frames at a fixed rate, and a subscriber
that records when each verdict arrives."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.imageio import decode_image
from edge_infer.imaging import gray_to_bgr, resize

from .images import ImageSet

READY_TIMEOUT_S = 120.0  # loading a model on a busy 2-core CPU can take a while


def make_frames(images: ImageSet, width: int, height: int, count: int = 8) -> list[np.ndarray]:
    """`count` real images, resized to the camera resolution, as 3-channel BGR frames."""
    frames = []
    for payload in images.take(count):
        image = resize(decode_image(payload), width, height, area=False)
        frames.append(gray_to_bgr(image) if image.ndim == 2 else image)
    return frames


def bench_station(cfg, workdir: Path, shm: bool = False):
    """A copy of the station that cannot touch the line: loopback sockets on free ports, a
    scratch journal, no webhook/GPIO/disk alerts, no metrics port, any camera name accepted.
    Curve is off: the synthetic cameras hold no keys (the report says so). ``shm``: frames
    through shared memory accepted (``--encoding shm``)."""
    host = "tcp://127.0.0.1"
    copy = cfg.model_copy(deep=True)
    copy.sockets.frames, copy.sockets.verdicts, copy.sockets.control = (f"{host}:{p}" for p in free_ports(3))
    copy.journal.path = workdir / "journal.sqlite"
    copy.alerts.webhook = copy.alerts.gpio = copy.alerts.disk = None
    copy.curve, copy.metrics_port, copy.cameras = None, None, []
    copy.shm = shm
    return copy


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServerProcess:
    """`python -m lineside serve` on a benchmark station config, watched with psutil."""

    def __init__(self, cfg, workdir: Path):
        import yaml

        try:
            import psutil
        except ImportError:
            raise LinesideError("psutil is not installed, so the server's CPU and memory cannot be measured: "
                                "pip install lineside[bench]") from None

        self.cfg, self.workdir = cfg, workdir
        path = workdir / "station.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        self.log = open(workdir / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lineside", "serve", str(path)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.psutil, self.ps = psutil, psutil.Process(self.proc.pid)
        self.samples: list[tuple[float, float, int]] = []  # (time, cpu % of one core, rss bytes)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def wait_ready(self) -> dict:
        from edge_infer.control import request

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LinesideError(f"`lineside serve` exited with status {self.proc.returncode} before it was "
                                    f"ready:\n{self.log_tail()}\nfix the station config or bundle it names")
            try:
                health = request(self.cfg.sockets.control, {"cmd": "health"}, timeout_s=2.0)
            except LinesideError:
                continue
            if health.get("status") == "ready":
                self.ps.cpu_percent(None)  # the first call only starts psutil's interval
                self._sampler.start()
                return health
            time.sleep(0.2)
        raise LinesideError(f"`lineside serve` was not ready within {READY_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.samples.append((time.time(), self.ps.cpu_percent(None), self.ps.memory_info().rss))
            except self.psutil.Error:  # the process ended: nothing more to sample
                return

    def usage(self, start: float, end: float) -> dict:
        """CPU (% of one core) and RSS of the server over [start, end]."""
        window = [s for s in self.samples if start <= s[0] <= end + 0.5] or self.samples[-1:]
        if not window:
            return {}
        cpu = [c for _, c, _ in window]
        return {"cpu_percent_mean": round(float(np.mean(cpu)), 1), "cpu_percent_max": round(max(cpu), 1),
                "rss_mib_peak": round(max(r for _, _, r in window) / 2**20, 1), "samples": len(window)}

    def stats(self) -> dict:
        from edge_infer.control import request

        return request(self.cfg.sockets.control, {"cmd": "stats"}, timeout_s=10.0)

    def stop(self) -> None:
        from edge_infer.control import request

        self._stop.set()
        if self.proc.poll() is None:
            try:
                request(self.cfg.sockets.control, {"cmd": "shutdown"}, timeout_s=5.0)
                self.proc.wait(timeout=30)
            except (LinesideError, subprocess.TimeoutExpired):
                self.proc.terminate()
                self.proc.wait(timeout=10)
        self.log.close()

    def log_tail(self, lines: int = 15) -> str:
        self.log.flush()
        text = (self.workdir / "server.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class Camera(threading.Thread):
    """A live camera: paced at `fps`, stamps `captured_at` when it sends, never waits for a
    busy server (a refused frame is counted as unsent, its id stays used, as for real ones).
    Frames are encoded once up front, as a camera's own encoder would have done. With
    ``shm_slots`` the raw ``frames`` go through a /dev/shm ring of that many slots instead
    (edge_infer/shm.py): each send copies the frame into the next slot, stamped before the copy."""

    def __init__(self, ctx, address: str, templates: list[list[bytes]], name: str, fps: float,
                 start_at: float, stop_at: float, first_id: int, offset: int = 0, shm_slots: int = 0,
                 frames: list[np.ndarray] | None = None):
        super().__init__(daemon=True, name=f"camera-{name}")
        self.ctx, self.address = ctx, address
        self.headers = [json.loads(h) for h, _ in templates]
        self.payloads = [p for _, p in templates]
        self.name, self.period, self.start_at, self.stop_at = name, 1.0 / fps, start_at, stop_at
        self.next_id, self.offset = first_id, offset
        self.shm_slots, self.frames = shm_slots, frames
        self.shm_write_ms: list[float] = []  # the copy of each frame into its slot (part of transport)
        self.sent: dict[int, float] = {}  # frame id → captured_at
        self.unsent = self.missed_slots = 0

    def run(self) -> None:
        import zmq

        sock = self.ctx.socket(zmq.PUSH)  # made in this thread: ZeroMQ sockets are not thread-safe
        sock.sndhwm, sock.linger = 16, 2000
        sock.connect(self.address)
        ring = None
        if self.shm_slots:
            from edge_infer.shm import Ring

            ring = Ring(self.headers[0]["station"], self.name, self.shm_slots)
        t, i = self.start_at, self.offset
        while t < self.stop_at:
            late = time.time() - t
            if late > self.period:
                # This thread was starved (busy CPU): skip the missed slots rather than send a
                # burst a real, hardware-timed camera never would. The report counts them.
                skipped = int(late // self.period)
                self.missed_slots += skipped
                t += skipped * self.period
            time.sleep(max(0.0, t - time.time()))
            k = i % len(self.payloads)
            header = {**self.headers[k], "camera": self.name, "frame_id": self.next_id, "captured_at": time.time()}
            payload = self.payloads[k]
            if ring is not None:  # the copy into the slot is part of the transport: stamped before it
                t_write = time.perf_counter()
                header |= {"encoding": "shm", "shm": ring.write(self.frames[k])}
                self.shm_write_ms.append((time.perf_counter() - t_write) * 1e3)
                payload = b""
            try:
                # zero-copy: the payloads live as long as the run (a real camera's driver hands over
                # its buffer the same way); pyzmq still copies parts under its copy_threshold
                sock.send_multipart([json.dumps(header, separators=(",", ":")).encode(), payload],
                                    flags=zmq.NOBLOCK, copy=False)
                self.sent[self.next_id] = header["captured_at"]
            except zmq.Again:
                self.unsent += 1
            self.next_id, i, t = self.next_id + 1, i + 1, t + self.period
        sock.close()
        if ring is not None:  # the server maps a ring at its first frame and reads the rest from its mapping
            ring.close()


class Collector(threading.Thread):
    """SUB to the station's verdicts; records each verdict with the time it arrived."""

    def __init__(self, ctx, address: str, station: str):
        super().__init__(daemon=True, name="verdicts")
        self.ctx, self.address, self.topic = ctx, address, f"verdict.{station}"
        self.verdicts: dict[tuple[str, int], tuple[float, dict]] = {}
        self.connected, self.stopping = threading.Event(), threading.Event()

    def run(self) -> None:
        import zmq

        from edge_infer.wire import parse_verdict_message

        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        sock.connect(self.address)
        self.connected.set()
        while not self.stopping.is_set():
            if not sock.poll(100):
                continue
            parts = sock.recv_multipart()
            arrived = time.time()
            topic, event = parse_verdict_message(parts)
            if topic == self.topic:  # prefix subscriptions also match verdict.<station>10
                self.verdicts[(event.get("camera"), event.get("frame_id"))] = (arrived, event)
        sock.close()


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="lineside-bench-e2e-"))

"""The soak: `lineside serve` overloaded, fuzzed, reloaded and killed, for LINESIDE_SOAK_SECONDS.

Not in the default run (marker `soak`); CI runs it for 10 minutes as its own step:

    LINESIDE_SOAK_SECONDS=600 pytest -m soak -s tests/runtime/test_soak.py

What runs, all at once, against one real server process:
- the sustainable rate is measured first (one camera flat out); then two cameras send at
  twice that rate together, raw and PNG;
- a seeded fuzzer sends malformed frames (part counts, sizes, encodings, header types,
  corrupt images) and malformed control requests (part counts, non-JSON, wrong types);
- reloads (alternating two bundles) and threshold changes every few seconds;
- halfway, a `kill -9` with frames queued inside the server, then a restart.

It asserts that every frame sent has exactly one verdict (frames the kill caught inside the
server count through their "lost in crash" ERROR rows, written at the restart), that control
answered every request while the server was up, that RSS after warm-up stays within a bound,
that the journal stays within its disk budget, and that SIGTERM ends the server in under 10 s.
The figures are printed (run with -s) for the release note.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq

from edge_infer.camera import Publisher
from edge_infer.control import request
from edge_infer.errors import LinesideError
from edge_infer.station import JournalConfig
from runtime_helpers import corrupt_png, make_tiny_bundle, short_dir

ROOT = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("LINESIDE_SOAK_SECONDS", "600"))
pytestmark = [pytest.mark.soak, pytest.mark.timeout(SECONDS + 600)]  # the run, then start, drain and teardown
SEED = int(os.environ.get("LINESIDE_SOAK_SEED", "28"))
RSS_GROWTH_MB = 64  # after warm-up; a leak of a frame (0.3 MB) per second fails it within minutes
JOURNAL_BUDGET_MB = 16
CONTROL_TIMEOUT_S = 15.0  # a reload of a busy server answers within seconds; no answer at all is the failure
FUZZ_CAMERA = "fuzz"
CAMERAS = (("cam-raw", "raw"), ("cam-png", "png"))
FRAME_SHAPE = (120, 160)


def free_tcp_addresses(n):
    with zmq.Context.instance().socket(zmq.REP) as probe:
        ports = [probe.bind_to_random_port("tcp://127.0.0.1") for _ in range(n)]
    return [f"tcp://127.0.0.1:{port}" for port in ports]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


class Station:
    """The server process: started, killed, restarted, stopped; its stderr kept in a file."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        frames, verdicts, control = free_tcp_addresses(3)
        self.bundles = [make_tiny_bundle(tmp / "a", height=96, width=96, image_threshold=0.5),
                        make_tiny_bundle(tmp / "b", height=96, width=96, image_threshold=0.55)]
        # for the kill: a model slow enough (tenths of a second a frame) that frames are surely queued
        self.slow = make_tiny_bundle(tmp / "slow", height=96, width=96, image_threshold=0.5, ballast_mb=8)
        journal = {"path": str(tmp / "journal.sqlite")}
        self.budget = "retain" in JournalConfig.model_fields  # the disk budget (journal.retain.max_mb)
        if self.budget:
            journal["retain"] = {"max_mb": JOURNAL_BUDGET_MB}
        self.cfg = {"station": "soak", "bundle": str(self.bundles[0]), "backend": "ort-cpu", "threads": 1,
                    "sockets": {"frames": frames, "verdicts": verdicts, "control": control},
                    "queue": {"capacity": 128, "policy": "drop-oldest", "socket_hwm": 256},
                    "batch": {"max_frames": 4, "max_wait_ms": 2},
                    "limits": {"max_payload_bytes": 1 << 20, "max_side": 1024}, "journal": journal}
        self.path = tmp / "soak.yaml"
        self.path.write_text(yaml.safe_dump(self.cfg))
        self.control = control
        self.journal = Path(journal["path"])
        self.proc: subprocess.Popen | None = None
        self.up = threading.Event()
        self.starts = 0
        self.downs = 0  # times the server was taken down (kill, stop): a request across one is excused

    def down(self) -> None:
        self.downs += 1
        self.up.clear()

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        err = open(self.tmp / f"serve-{self.starts}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lineside", "serve", str(self.path)], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=err)
        self.starts += 1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / f"serve-{self.starts - 1}.log").read_text()[-3000:]
            try:
                if request(self.control, {"cmd": "health"}, timeout_s=0.5)["status"] == "ready":
                    self.up.set()
                    return
            except LinesideError:
                pass
        raise AssertionError("the server did not become ready")

    def stats(self) -> dict:
        return request(self.control, {"cmd": "stats"}, timeout_s=CONTROL_TIMEOUT_S)


class Senders:
    """The cameras and the frame fuzzer; every message they hand to ZeroMQ is counted as sent."""

    def __init__(self, station: Station, rng: random.Random):
        self.station, self.rng = station, rng
        self.sent: dict[str, list[int]] = defaultdict(list)
        self.fuzz_sent = 0
        self.running = threading.Event()  # cleared: everyone pauses (before the kill, at the end)
        self.paused = threading.Barrier(len(CAMERAS) + 2)  # the senders and the one who paused them
        self.done = threading.Event()
        self.rate = 0.0  # frames per second per camera
        self.threads: list[threading.Thread] = []
        noise = np.random.default_rng(SEED)
        # the tiny model scores a frame's brightest pixel: dim noise is OK, the bright frame NG
        self.images = [noise.integers(0, 100, FRAME_SHAPE, dtype=np.uint8), np.full(FRAME_SHAPE, 250, np.uint8)]

    def total_sent(self) -> int:
        return sum(len(ids) for ids in self.sent.values()) + self.fuzz_sent

    def start(self) -> None:
        for name, encoding in CAMERAS:
            self.threads.append(threading.Thread(target=self._camera, args=(name, encoding), daemon=True))
        self.threads.append(threading.Thread(target=self._fuzz, args=(random.Random(self.rng.random()),),
                                             daemon=True))
        self.running.set()
        for t in self.threads:
            t.start()

    def pause(self) -> None:
        self.running.clear()
        self.paused.wait(timeout=60)

    def resume(self) -> None:
        self.running.set()

    def _wait_if_paused(self) -> bool:
        """Wait out a pause (saying so), so the one who paused knows nothing more is being sent."""
        if self.running.is_set():
            return False
        self.paused.wait(timeout=60)
        while not self.running.is_set() and not self.done.is_set():
            time.sleep(0.01)
        return True

    def _camera(self, name: str, encoding: str) -> None:
        # a small send buffer: when the server cannot take more, the camera waits (back-pressure)
        # instead of piling up thousands of frames inside ZeroMQ
        publisher = Publisher(self.station.cfg["sockets"]["frames"], "soak", name, encoding, hwm=64,
                              linger_ms=60_000)
        try:
            next_at = time.monotonic()
            while not self.done.is_set():
                if self._wait_if_paused():
                    next_at = time.monotonic()  # no catching up on the pause
                if self.done.is_set():
                    break
                frame_id = publisher.next_id
                if publisher.publish(self.images[frame_id % 2], block=True):
                    self.sent[name].append(frame_id)
                next_at += 1.0 / self.rate if self.rate else 0.0
                time.sleep(max(0.0, next_at - time.monotonic()))
                if not self.rate:
                    next_at = time.monotonic()
        finally:
            publisher.close()

    def _fuzz(self, rng: random.Random) -> None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.PUSH)
        sock.linger = 10_000
        sock.connect(self.station.cfg["sockets"]["frames"])
        try:
            while not self.done.is_set():
                self._wait_if_paused()
                if self.done.is_set():
                    break
                sock.send_multipart(fuzz_frame(rng, self.fuzz_sent))
                self.fuzz_sent += 1
                time.sleep(rng.uniform(0.005, 0.05))
        finally:
            sock.close()


def fuzz_frame(rng: random.Random, n: int) -> list[bytes]:
    """One malformed (now and then valid) frame message, from a seeded generator."""
    h, w = FRAME_SHAPE
    header = {"v": 1, "station": "soak", "camera": FUZZ_CAMERA, "frame_id": n, "captured_at": time.time(),
              "encoding": "raw", "dtype": "uint8", "shape": [h, w]}
    payload = bytes(h * w)
    kind = rng.randrange(14)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 64))]  # one part
    if kind == 1:
        return [json.dumps(header).encode(), payload, rng.randbytes(8)] * rng.randrange(1, 4)  # 3, 6, 9 parts
    if kind == 2:
        return [rng.randbytes(rng.randrange(1, 4096)), rng.randbytes(rng.randrange(0, 4096))]  # garbage header
    if kind == 3:
        return [json.dumps(header).encode(), rng.randbytes(rng.randrange(0, 2 * h * w))]  # wrong payload size
    if kind == 4:
        return [json.dumps(header).encode(), bytes(rng.randrange(1 << 20, 3 << 20))]  # over the station's limit
    if kind == 5:  # a field of the wrong type
        key = rng.choice(["v", "frame_id", "captured_at", "shape", "tags", "encoding", "station"])
        header[key] = rng.choice([True, "123", 1.5, None, [], {}, -1, "x" * 100, [1, 2, 3, 4]])
        return [json.dumps(header).encode(), payload]
    if kind == 6:
        return [json.dumps({**header, "encoding": "png"}).encode(), corrupt_png(np.full((h, w), 7, np.uint8))]
    if kind == 7:
        return [json.dumps({**header, "encoding": "jpeg"}).encode(), b"\xff\xd8" + rng.randbytes(600)]
    if kind == 8:
        return [json.dumps({**header, "extra": 1}).encode(), payload]  # unknown key
    if kind == 9:
        return [json.dumps({**header, "shape": [h, w, 5]}).encode(), bytes(h * w * 5)]
    if kind == 10:
        return [b"x" * 3000, payload]  # header over 2048 bytes
    if kind == 11:
        return [json.dumps(header).encode()[: rng.randrange(1, 40)], payload]  # cut header
    if kind == 12:
        return [json.dumps({**header, "camera": "bad name!"}).encode(), payload]
    return [json.dumps(header).encode(), payload]  # a valid frame now and then


CONTROL_FUZZ = [
    lambda rng: [b'{"cmd": "health"}', b"second part"],
    lambda rng: [b'{"cmd": "stats"}'] * rng.randrange(2, 6),
    lambda rng: [rng.randbytes(rng.randrange(0, 256))],
    lambda rng: [b"x" * rng.randrange(16_000, 200_000)],
    lambda rng: [json.dumps(rng.choice([[], "health", 3, None, {"cmd": 7}, {"cmd": None}])).encode()],
    lambda rng: [json.dumps({"cmd": rng.choice(["fly", "", "HEALTH", "reload", "threshold"])}).encode()],
    lambda rng: [json.dumps({"cmd": "threshold", rng.choice(["image", "pixel", "min_area"]):
                             rng.choice(["0.5", [0.5], True, {"x": 1}, "nan", float("inf")])}).encode()],
    lambda rng: [json.dumps({"cmd": "reload", "bundle": rng.choice([12, [], "/nonexistent", ""])}).encode()],
    lambda rng: [b'{"cmd": "health", "who": ' + json.dumps("\u0000" * 10).encode() + b"}"],
]


class Control:
    """Health every second, fuzzed requests, reloads and threshold changes; every request must be answered."""

    def __init__(self, station: Station, rng: random.Random):
        self.station, self.rng = station, rng
        self.answers = Counter()
        self.unanswered: list[str] = []
        self.refused: list[dict] = []  # reloads or health that answered "ok": false
        self.rss: dict[int, list[float]] = defaultdict(list)  # per server start
        self.done = threading.Event()
        self.changing = threading.Lock()  # held by a reload or threshold change, and around the kill
        self.threads = [threading.Thread(target=target, daemon=True)
                        for target in (self._monitor, self._fuzz, self._changes)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def ask(self, kind: str, parts: list[bytes]) -> dict | None:
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.REQ)
        sock.linger = 0
        downs = self.station.downs
        try:
            sock.connect(self.station.control)
            sock.send_multipart(parts)
            if sock.poll(int(CONTROL_TIMEOUT_S * 1000)):
                self.answers[kind] += 1
                return json.loads(sock.recv())
            if self.station.up.is_set() and self.station.downs == downs:  # not across the kill
                self.unanswered.append(f"{kind}: {parts[0][:60]!r} ({len(parts)} parts)")
            return None
        finally:
            sock.close()

    def _while_up(self, period_s: float, step) -> None:
        while not self.done.wait(period_s):
            if self.station.up.is_set():
                step()

    def _monitor(self) -> None:
        def step():
            answer = self.ask("health", [b'{"cmd": "health"}'])
            if answer is not None and not answer["ok"]:
                self.refused.append(answer)
            elif answer is not None:
                self.rss[self.station.starts].append(rss_mb(answer["pid"]))
        self._while_up(1.0, step)

    def _fuzz(self) -> None:
        rng = random.Random(self.rng.random())
        self._while_up(0.25, lambda: self.ask("fuzz", rng.choice(CONTROL_FUZZ)(rng)))

    def _changes(self) -> None:
        rng = random.Random(self.rng.random())
        state = {"n": 0}

        def step():
            with self.changing:
                change()

        def change():
            state["n"] += 1
            if state["n"] % 2:
                bundle = self.station.bundles[state["n"] // 2 % 2]
                answer = self.ask("reload", [json.dumps({"cmd": "reload", "bundle": str(bundle),
                                                         "who": "soak"}).encode()])
                if answer is not None and not answer["ok"]:
                    self.refused.append(answer)
            else:
                value = round(rng.uniform(0.45, 0.6), 3)
                self.ask("threshold", [json.dumps({"cmd": "threshold", "image": value, "who": "soak"}).encode()])
        self._while_up(2.0, step)


class Verdicts:
    """Follows the journal as it grows. Like any consumer of the journal (MQTT, a sync) it keeps
    a delivery cursor in ``line_cursors``, so retention deletes only rows it has read (unless
    the disk budget forces it, which the soak would then report as missing verdicts)."""

    def __init__(self, journal: Path):
        self.journal, self.last_id = journal, 0
        self.rows: dict[int, tuple] = {}

    def read(self) -> None:
        if not self.journal.exists():
            return
        db = sqlite3.connect(self.journal, timeout=30, isolation_level=None)
        try:
            db.execute("INSERT INTO line_cursors (name, verdict_id) VALUES ('soak', ?) ON CONFLICT (name) "
                       "DO UPDATE SET verdict_id = excluded.verdict_id", (self.last_id,))
            for row in db.execute("SELECT id, camera, frame_id, status, reason FROM verdicts WHERE id > ? "
                                  "ORDER BY id", (self.last_id,)).fetchall():
                self.rows[row[0]] = row[1:]
                self.last_id = row[0]
            db.execute("UPDATE line_cursors SET verdict_id = ? WHERE name = 'soak'", (self.last_id,))
        except sqlite3.OperationalError:  # the server is creating the schema: next time
            pass
        finally:
            db.close()

    def follow(self, done: threading.Event) -> None:
        while not done.wait(1.0):
            self.read()


def reused_ids(journal: Path, verdicts: Verdicts) -> list:
    """Verdict ids the journal now holds for another frame than the one the follower read under
    that id: an id handed out twice, which a follower past it can never see."""
    with sqlite3.connect(journal) as db:
        rows = db.execute("SELECT id, camera, frame_id FROM verdicts").fetchall()
    return [(vid, verdicts.rows[vid][:2], (camera, frame_id)) for vid, camera, frame_id in rows
            if vid in verdicts.rows and verdicts.rows[vid][:2] != (camera, frame_id)][:10]


def sustainable_rate(station: Station, senders: Senders, step_s: float = 3.0) -> float:
    """The highest rate (frames/s) the server keeps up with, shedding nothing: one camera, paced,
    from 50/s up by a quarter each step until frames are DROPPED (or the camera cannot go faster)."""
    probe = Publisher(station.cfg["sockets"]["frames"], "soak", "probe", "raw", hwm=64, linger_ms=60_000)
    rate, best = 50.0, 0.0
    try:
        while rate < 20_000:
            before, t0, sent = station.stats()["verdicts"]["DROPPED"], time.monotonic(), 0
            while (elapsed := time.monotonic() - t0) < step_s:
                probe_id = probe.next_id
                if probe.publish(senders.images[probe_id % 2], block=True):
                    senders.sent["probe"].append(probe_id)
                    sent += 1
                time.sleep(max(0.0, sent / rate - (time.monotonic() - t0)))
            wait_received(station, senders, 0)
            if station.stats()["verdicts"]["DROPPED"] > before or sent / elapsed < 0.9 * rate:
                break  # shed frames, or the camera itself could not keep this pace
            best, rate = rate, rate * 1.25
    finally:
        probe.close()
    return best


def wait_received(station: Station, senders: Senders, since_start: int, timeout_s: float = 120) -> None:
    """Until the server has read every message sent to it (so none is inside ZeroMQ)."""
    deadline = time.monotonic() + timeout_s
    while (received := station.stats()["received"]) < (sent := senders.total_sent() - since_start):
        assert time.monotonic() < deadline, f"the server read {received} of the {sent} messages sent to it"
        time.sleep(0.001)


def test_soak():
    station = Station(short_dir())
    try:
        figures = run_soak(station)  # asserts the accounting, control, RSS and journal as it ends
        assert figures["exit_code"] == 0, "SIGTERM did not end the server cleanly"
    finally:
        if station.proc is not None and station.proc.poll() is None:
            station.proc.kill()


def run_soak(station: Station) -> dict:
    rng = random.Random(SEED)
    tmp = station.tmp
    verdicts = Verdicts(station.journal)
    follower_done = threading.Event()
    follower = threading.Thread(target=verdicts.follow, args=(follower_done,), daemon=True)
    station.start()
    follower.start()
    senders, control = Senders(station, rng), Control(station, rng)

    # 1. the sustainable rate, measured first (the machine decides it, not the test)
    sustainable = sustainable_rate(station, senders)
    senders.rate = sustainable  # per camera: two cameras together send twice the sustainable rate

    # 2. everything at once, with a kill -9 halfway
    received_before_start = 0  # messages sent before the current server started
    senders.start()
    control.start()
    t_start = time.monotonic()
    time.sleep(SECONDS / 2)
    senders.pause()
    wait_received(station, senders, received_before_start)
    # the slow model, a burst, and the kill as soon as the server has read the burst: frames are
    # queued inside the server (journaled as received, not decided) when it dies
    control.changing.acquire()
    assert control.ask("reload", [json.dumps({"cmd": "reload", "bundle": str(station.slow)}).encode()])["ok"]
    burst = Publisher(station.cfg["sockets"]["frames"], "soak", "burst", "raw", hwm=1000, linger_ms=60_000)
    for _ in range(32):
        frame_id = burst.next_id
        if burst.publish(senders.images[frame_id % 2], block=True):
            senders.sent["burst"].append(frame_id)
    wait_received(station, senders, received_before_start)
    in_server = station.stats()
    station.down()
    station.proc.send_signal(signal.SIGKILL)
    station.proc.wait(30)
    burst.close()
    queued_at_kill = in_server["queue"]["depth"]
    received_before_start = senders.total_sent()
    station.start()
    control.changing.release()
    senders.resume()
    time.sleep(max(0.0, SECONDS - (time.monotonic() - t_start)))

    # 3. stop: everything sent reaches the server, then SIGTERM
    senders.pause()
    wait_received(station, senders, received_before_start)
    senders.done.set()
    senders.resume()
    control.done.set()
    station.down()
    for t in control.threads:
        t.join(CONTROL_TIMEOUT_S + 5)
    t_stop = time.monotonic()
    station.proc.send_signal(signal.SIGTERM)
    code = station.proc.wait(10)  # the server's own bound is SHUTDOWN_S (8 s)
    shutdown_s = time.monotonic() - t_stop
    for t in senders.threads:
        t.join(10)
    follower_done.set()
    follower.join(30)
    verdicts.read()

    # the accounting: every frame sent, exactly one verdict
    by_frame = defaultdict(list)
    fuzz_rows = 0
    for vid, (camera, frame_id, status, reason) in verdicts.rows.items():
        if camera in senders.sent:
            by_frame[(camera, frame_id)].append(status)
        else:
            fuzz_rows += 1
    statuses = Counter(status for _, _, status, _ in verdicts.rows.values())
    lost_in_crash = sum(1 for _, _, s, r in verdicts.rows.values() if s == "ERROR" and "crash" in (r or ""))
    sent_frames = sum(len(ids) for ids in senders.sent.values())
    rss = {start: (round(values[min(len(values) - 1, 10)], 1), round(max(values[10:] or values), 1))
           for start, values in control.rss.items() if values}  # RSS after 10 s warm-up, and its max later
    journal_mb = sum(p.stat().st_size for p in tmp.glob("journal.sqlite*")) / 2**20
    figures = {"seconds": SECONDS, "seed": SEED, "sustainable_fps": round(sustainable, 1),
               "sent_frames": sent_frames, "fuzz_frames": senders.fuzz_sent, "verdicts": len(verdicts.rows),
               "statuses": dict(statuses), "lost_in_crash": lost_in_crash, "queued_at_kill": queued_at_kill,
               "control_answers": dict(control.answers), "control_unanswered": len(control.unanswered),
               "rss_mb_after_warmup_and_max": rss, "journal_mb": round(journal_mb, 1),
               "journal_budget_mb": JOURNAL_BUDGET_MB if station.budget else None,
               "shutdown_s": round(shutdown_s, 2), "exit_code": code}
    print("\nSOAK " + json.dumps(figures))

    missing = [(cam, i) for cam, ids in senders.sent.items() for i in ids if (cam, i) not in by_frame]
    twice = {key: s for key, s in by_frame.items() if len(s) > 1}
    assert not missing, (f"{len(missing)} frames without a verdict, e.g. {missing[:10]}; verdict ids the journal "
                         f"holds for another frame than the follower read: {reused_ids(station.journal, verdicts)}")
    assert not twice, f"{len(twice)} frames with several verdicts, e.g. {list(twice.items())[:10]}"
    assert fuzz_rows == senders.fuzz_sent, (fuzz_rows, senders.fuzz_sent)
    assert lost_in_crash >= 1 or queued_at_kill == 0  # the kill caught frames inside the server
    assert not control.unanswered, control.unanswered[:10]
    assert not control.refused, control.refused[:5]
    assert control.answers["reload"] >= 2 and control.answers["fuzz"] >= 10
    for start, (warm, peak) in rss.items():
        assert peak - warm < RSS_GROWTH_MB, f"server start {start}: RSS {warm} MB after warm-up, then {peak} MB"
    if station.budget:
        assert journal_mb <= JOURNAL_BUDGET_MB, f"journal {journal_mb:.1f} MB over its {JOURNAL_BUDGET_MB} MB budget"
    return figures

"""The journal under a real `lineside serve`: it stays under its disk budget while frames stream
(health warns before the budget is reached), and a disk that refuses writes (RLIMIT_FSIZE on
the server process: its writes fail with EFBIG, as on a full disk) does not stop the verdict
stream: verdicts go out flagged ``journaled: false``, wait in memory, and are journaled once the
disk takes writes again."""

import json
import os
import resource
import sqlite3
import subprocess
import sys
import time

import zmq
from runtime_helpers import bright, cleanup, dark, station
from test_process import ROOT

from edge_infer.camera import Publisher
from edge_infer.control import request
from edge_infer.errors import LinesideError
from edge_infer.journal import read_verdicts
from edge_infer.wire import parse_verdict_message

MIB = 1 << 20


def journal_bytes(path) -> int:
    """The journal file and its WAL, as `ls` sees them."""
    return sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))


def start(path, cfg, **popen):
    """`lineside serve`, its log (stderr) to a file: a busy server must never block on a full pipe."""
    with open(path.parent / "serve.log", "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lineside", "serve", str(path)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log, **popen)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if request(cfg.sockets.control, {"cmd": "health"}, timeout_s=0.5)["status"] == "ready":
                return proc
        except LinesideError:
            assert proc.poll() is None, (path.parent / "serve.log").read_text()
    proc.kill()
    raise AssertionError("server did not become ready")


def subscriber(cfg):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"verdict.")
    sub.connect(cfg.sockets.verdicts)
    time.sleep(0.2)  # the subscription reaches the server before the first verdict
    return sub


def drain(sub, events: dict, wait_ms: int = 0) -> None:
    while sub.poll(wait_ms):
        event = parse_verdict_message(sub.recv_multipart())[1]
        events[event["frame_id"]] = event
        wait_ms = 0


def test_serve_keeps_the_journal_under_its_budget_keeps_ng_and_warns_first(tmp_path):
    cfg, path = station(tmp_path, batch={"max_frames": 4, "max_wait_ms": 1},
                        journal={"path": str(tmp_path / "journal.sqlite"),
                                 "retain": {"max_mb": 4, "warn_percent": 30, "interval_s": 1}})
    proc = start(path, cfg)
    publisher = Publisher(cfg.sockets.frames, "st1", "cam0", "raw", hwm=1000)
    sizes, warned = [], []
    try:
        before = request(cfg.sockets.control, {"cmd": "health"})
        assert before["journal"]["budget_mb"] == 4 and before["warnings"] == []
        t0 = time.monotonic()
        for i in range(14_000):  # ~6 MiB of verdicts, at 400 a second (what the line here sustains: 150
            publisher.publish(bright() if i % 50 == 0 else dark(), block=True)  # scored, the rest DROPPED)
            time.sleep(max(0.0, t0 + i / 400 - time.monotonic()))
            if i % 200 == 0:
                sizes.append(journal_bytes(cfg.journal.path))
            if i % 100 == 0:
                health = request(cfg.sockets.control, {"cmd": "health"})
                if health["warnings"]:
                    warned.append(health)
        deadline = time.monotonic() + 60
        while request(cfg.sockets.control, {"cmd": "stats"})["queue"]["depth"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
        health = request(cfg.sockets.control, {"cmd": "health"})
        stats = request(cfg.sockets.control, {"cmd": "stats"})
        assert request(cfg.sockets.control, {"cmd": "shutdown"})["ok"] and proc.wait(30) == 0
    finally:
        proc.kill()
        publisher.close()
        cleanup(cfg)
    assert max(sizes) <= 4 * MIB and journal_bytes(cfg.journal.path) <= 4 * MIB
    journal = health["journal"]
    assert journal["deleted"]["budget"] > 1000 and journal["deleted"]["forced"] == 0
    assert warned and all(h["journal"]["percent"] >= 30 for h in warned)  # warned at 30%, under the budget
    assert "4 MiB budget" in warned[0]["warnings"][0] and warned[0]["status"] == "ready"
    assert stats["journal"]["budget_mb"] == 4
    rows = read_verdicts(cfg.journal.path)
    ng_kept = {r["frame_id"] for r in rows if r["status"] == "NG"}
    ng_published = stats["verdicts"]["NG"]
    assert len(ng_kept) == ng_published  # the budget took OK verdicts only: every NG is still there
    assert min(r["frame_id"] for r in rows if r["status"] == "OK") > min(ng_kept)


def limit_file_size(limit: int):
    def preexec():  # runs in the child before exec; Python ignores SIGXFSZ, so writes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return preexec


def test_serve_goes_on_when_the_journal_disk_refuses_writes_and_catches_up_after(tmp_path):
    cfg, path = station(tmp_path, batch={"max_frames": 4, "max_wait_ms": 1})  # the default journal settings
    proc = start(path, cfg, preexec_fn=limit_file_size(256 << 10))
    sub = subscriber(cfg)
    publisher = Publisher(cfg.sockets.frames, "st1", "cam0", "raw", hwm=1000)
    events: dict[int, dict] = {}
    try:
        failing = None
        for _ in range(6000):  # far more than 256 KiB of journal
            publisher.publish(dark(), block=True)
            drain(sub, events)
            if publisher.next_id % 100 == 0:
                health = request(cfg.sockets.control, {"cmd": "health"})
                if health["status"] == "journal-failing":
                    failing = health
                    break
        assert failing is not None, "the journal never hit the file-size limit"
        assert failing["journal"]["failing"] and "cannot be written" in failing["warnings"][0]
        for _ in range(200):  # the line goes on meanwhile
            publisher.publish(dark(), block=True)
        time.sleep(1)
        drain(sub, events, 500)
        assert proc.poll() is None
        unjournaled = {f for f, e in events.items() if not e["journaled"]}
        assert unjournaled and all(events[f]["id"] is None for f in unjournaled)
        # the operator frees disk space: lift the limit on the running server
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            publisher.publish(dark(), block=True)  # the next write flushes the backlog
            health = request(cfg.sockets.control, {"cmd": "health"})
            if health["status"] == "ready":
                break
            time.sleep(0.2)
        assert health["status"] == "ready" and health["journal"]["backlog"] == 0
        assert not any("cannot be written" in w for w in health["warnings"])
        deadline = time.monotonic() + 20
        while len(events) < publisher.next_id and time.monotonic() < deadline:
            drain(sub, events, 200)
        deleted = sum(request(cfg.sockets.control, {"cmd": "stats"})["journal"]["deleted"].values())
        assert request(cfg.sockets.control, {"cmd": "shutdown"})["ok"] and proc.wait(30) == 0
        log = (tmp_path / "serve.log").read_text()
    finally:
        proc.kill()
        publisher.close()
        sub.close()
        cleanup(cfg)
    assert len(events) == publisher.next_id  # every frame got its verdict, published once
    rows = read_verdicts(cfg.journal.path)
    journaled = [r["frame_id"] for r in rows]
    assert len(journaled) == len(set(journaled))  # journaled once at most ...
    assert len(journaled) + deleted == publisher.next_id  # ... and once, but what emergency passes deleted
    assert unjournaled <= set(journaled)  # the backlog was written: the oldest rows went, not those
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    failed = [e for e in lines if e["event"] == "journal_failed" and "stage" not in e]
    assert failed and failed[0]["effect"].startswith("verdicts are published with journaled=false")
    assert len(failed) < 50  # backoff: a full disk does not flood the log
    assert any(e["event"] == "journal_recovered" and e["flushed"] > 0 for e in lines)
    with sqlite3.connect(cfg.journal.path) as db:
        assert db.execute("SELECT COUNT(*) FROM inflight").fetchone()[0] == 0

"""Every frame that reached the server gets exactly one verdict, across `kill -9` too: frames
queued when the process dies get an ERROR verdict ("lost in crash") at the next start."""

import signal
import sqlite3
import time

from edge_infer.camera import Publisher
from edge_infer.control import request
from edge_infer.journal import LOST_IN_CRASH, read_verdicts
from runtime_helpers import cleanup, dark, make_tiny_bundle, station, wait_for_rows
from test_process import start_server

N = 40


def test_frames_queued_at_kill_9_get_lost_in_crash_verdicts_after_restart(tmp_path):
    # A batch waits up to 1 s to fill 64 frames: the N frames sent sit in the queue, unscored,
    # when the server is killed (the way a slow backend keeps them queued on a real line).
    bundle = make_tiny_bundle(tmp_path / "bundle", max_batch=64)
    cfg, path = station(tmp_path, bundle, batch={"max_frames": 64, "max_wait_ms": 1000}, queue={"capacity": 256})
    proc = start_server(path, cfg)
    publisher = Publisher(cfg.sockets.frames, "st1", "cam0", "raw", hwm=1000)
    try:
        for _ in range(N):
            publisher.publish(dark(), block=True)
        deadline = time.monotonic() + 20
        while request(cfg.sockets.control, {"cmd": "stats"})["received"] < N and time.monotonic() < deadline:
            time.sleep(0.005)
        assert request(cfg.sockets.control, {"cmd": "stats"})["received"] == N  # all reached the server
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        publisher.close()
    decided = {r["frame_id"] for r in read_verdicts(cfg.journal.path)}
    in_flight = sorted(set(range(N)) - decided)  # received, not decided
    assert in_flight, "the setup must leave frames queued at the kill"

    proc = start_server(path, cfg)
    try:
        rows = wait_for_rows(cfg.journal.path, N)
        deadline = time.monotonic() + 10  # a verdict is journaled, then published and counted
        while (stats := request(cfg.sockets.control, {"cmd": "stats"}))["verdicts"]["ERROR"] < len(in_flight) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert request(cfg.sockets.control, {"cmd": "shutdown"})["ok"] and proc.wait(20) == 0
    finally:
        proc.kill()
        cleanup(cfg)
    rows = read_verdicts(cfg.journal.path)
    assert sorted(r["frame_id"] for r in rows) == list(range(N))  # every frame once, none twice
    lost = [r for r in rows if r["reason"] == LOST_IN_CRASH]
    assert sorted(r["frame_id"] for r in lost) == in_flight
    assert all(r["status"] == "ERROR" and r["camera"] == "cam0" and r["station"] == "st1" for r in lost)
    assert stats["verdicts"]["ERROR"] == len(lost)  # published like any verdict, by the new process
    with sqlite3.connect(cfg.journal.path) as db:
        assert db.execute("SELECT COUNT(*) FROM inflight").fetchone()[0] == 0

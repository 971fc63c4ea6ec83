"""The server as the line runs it: `lineside serve` in its own process, killed with -9 or
stopped with SIGTERM, and the client commands (`ctl`, `watch`, `camera`, `keys`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
import zmq

from edge_infer.camera import Publisher
from edge_infer.control import request
from edge_infer.errors import LinesideError
from edge_infer.journal import read_verdicts
from edge_infer.wire import parse_verdict_message
from runtime_helpers import bright, cleanup, dark, station

ROOT = Path(__file__).resolve().parents[2]


def lineside(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "lineside", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run(*args, timeout=60):
    proc = lineside(*args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def start_server(config_path, cfg, timeout_s=30):
    proc = lineside("serve", str(config_path))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if request(cfg.sockets.control, {"cmd": "health"}, timeout_s=0.5)["status"] == "ready":
                return proc
        except LinesideError:
            assert proc.poll() is None, proc.communicate()[1]
    proc.kill()
    raise AssertionError("server did not become ready")


@pytest.fixture
def config(tmp_path):
    cfg, path = station(tmp_path, batch={"max_frames": 4, "max_wait_ms": 1})
    yield cfg, path
    cleanup(cfg)


def test_kill_9_loses_no_journaled_verdict(config):
    cfg, path = config
    proc = start_server(path, cfg)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"verdict.")
    sub.connect(cfg.sockets.verdicts)
    publisher = Publisher(cfg.sockets.frames, "st1", "cam0", "raw", hwm=1000)
    published = {}
    try:
        while len(published) < 150:
            publisher.publish(bright() if publisher.next_id % 2 else dark(), block=True)
            while sub.poll(0):
                event = parse_verdict_message(sub.recv_multipart())[1]
                published[event["id"]] = event
            time.sleep(0.001)
        for _ in range(100):  # keep frames in flight while the server dies
            publisher.publish(dark(), block=False)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        while sub.poll(200):
            event = parse_verdict_message(sub.recv_multipart())[1]
            published[event["id"]] = event
    finally:
        proc.kill()
        sub.close()
        publisher.close()
    rows = {r["id"]: r for r in read_verdicts(cfg.journal.path)}
    assert len(published) >= 150
    for vid, event in published.items():  # everything anyone saw was journaled first
        assert vid in rows and rows[vid]["frame_id"] == event["frame_id"] and rows[vid]["status"] == event["status"]
    frame_ids = [r["frame_id"] for r in rows.values()]
    assert len(frame_ids) == len(set(frame_ids))  # and never twice


def test_sigterm_drains_queued_frames(tmp_path):
    # a batch that waits up to 1 s to fill: the frames are (usually) still queued at SIGTERM
    cfg, path = station(tmp_path, batch={"max_frames": 8, "max_wait_ms": 1000})
    proc = start_server(path, cfg)
    try:
        publisher = Publisher(cfg.sockets.frames, "st1", "cam0", "raw")
        for _ in range(3):
            publisher.publish(bright(), block=True)
        deadline = time.monotonic() + 10
        while request(cfg.sockets.control, {"cmd": "stats"})["received"] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        cleanup(cfg)
    rows = read_verdicts(cfg.journal.path)
    assert [(r["frame_id"], r["status"]) for r in rows] == [(0, "NG"), (1, "NG"), (2, "NG")]


def test_cli_camera_watch_ctl_and_config_errors(config, tmp_path):
    cfg, path = config
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i}.png"), bright() if i == 2 else dark())
    proc = start_server(path, cfg)
    try:
        watcher = lineside("watch", cfg.sockets.verdicts, "--count", "6", "--timeout", "20")
        assert watcher.stderr.readline().startswith("watching")  # it has connected and subscribed
        time.sleep(0.3)  # for the subscription to travel to the PUB socket
        code, _, err = run("camera", str(folder), "--connect", cfg.sockets.frames, "--station", "st1",
                           "--name", "top", "--fps", "50")
        assert code == 0, err
        out, err = watcher.communicate(timeout=30)
        lines = out.strip().splitlines()
        assert len(lines) == 6 and lines[2].startswith("NG") and "st1/top#2" in lines[2], out
        assert "NG=1" in lines[-1] and "OK=5" in lines[-1]
        code, out, _ = run("ctl", cfg.sockets.control, "stats", "--json")
        stats = json.loads(out)
        assert code == 0 and stats["verdicts"]["OK"] == 5 and stats["latency_ms"]["n"] == 6
        code, out, err = run("ctl", cfg.sockets.control, "threshold", "--image", "nan")
        assert code == 1 and "finite number" in err
        code, out, _ = run("ctl", cfg.sockets.control, "shutdown")
        assert code == 0 and proc.wait(20) == 0
    finally:
        proc.kill()
    code, _, err = run("ctl", cfg.sockets.control, "health", "--timeout", "0.3")
    assert code == 2 and "no answer" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("station: st1\nbundle: nowhere\nqueue: {capacity: 0, polcy: drop-oldest}\n")
    code, _, err = run("serve", str(bad))
    assert code == 2 and "queue.capacity" in err and "queue.polcy" in err and "Traceback" not in err

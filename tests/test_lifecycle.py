"""A station's whole life with the real CLI on a `local:` device (issue 20): train → export (fp32 + fp16)
→ calibrate with the station's ROI → bundle, sign → flash (engine build) → serve with trusted keys →
stream frames → operator review → recalibrate from the journal → reload → kill -9 mid-stream → restart →
a second flash → roll back.

At each step it checks what a line engineer would: the thresholds and where they come from, the backend
and precision the service runs, the signature, and that every frame sent has exactly one verdict.

TensorRT cannot run here: flash's engine build is the test stand-in builder (LINESIDE_ENGINE_STANDIN=1,
edge_infer/backends/standin.py), which writes where TensorRT's build writes and which the service, started
with the same variable, runs on ONNX Runtime under the name `tensorrt-standin`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import pytest
import yaml
from mvtec_fixture import make_mvtec
from net_helpers import free_port

from edge_infer.camera import Publisher
from edge_infer.control import request
from edge_infer.errors import LinesideError
from edge_infer.journal import LOST_IN_CRASH, read_events, read_verdicts
from edge_infer.signing import load_trusted_keys, verify_bundle
from lineside.cli import main as cli
from tests.deploy.deploy_helpers import SERVICE, stop_service

STATION = "press-1"
ROI = [4, 4, 64, 64]  # the fixture's parts are 72x72: the model sees the middle 64x64
STANDIN = "LINESIDE_ENGINE_STANDIN"


def ctl(capsys, address, *args) -> dict:
    capsys.readouterr()
    code = cli(["ctl", address, *args, "--timeout", "30"])
    answer = json.loads(capsys.readouterr().out)
    assert code == (0 if answer["ok"] else 1)
    return answer


def wait(predicate, timeout_s=60.0, what="a condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def healthy(address) -> dict:
    def ready():
        try:
            answer = request(address, {"cmd": "health"}, timeout_s=1)
        except LinesideError:
            return None
        return answer if answer.get("status") == "ready" else None
    return wait(ready, what=f"a healthy service on {address}")


def verdicts_by_frame(journal: Path) -> Counter:
    return Counter((r["camera"], r["frame_id"]) for r in read_verdicts(journal, station=STATION))


def stream(frames_address, camera, images, start_id=0) -> list[tuple[str, int]]:
    with Publisher(frames_address, STATION, camera, "png", start_id=start_id, hwm=1000) as publisher:
        for image in images:
            assert publisher.publish(image, block=True)
    return [(camera, start_id + i) for i in range(len(images))]


def test_a_station_lifecycle(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(STANDIN, "1")  # this process's engine selection too (calibrate on the device)
    data = make_mvtec(tmp_path / "data", n_train=20, n_good=6, n_defect=6)  # 2+ validation images: a score scale
    goods = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((data / "test/good").glob("*.png"))]
    defects = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((data / "test/scratch").glob("*.png"))]

    # ---- host: train, export fp32 + fp16 ---------------------------------------------------------------
    run, bundle = tmp_path / "run", tmp_path / "host" / "bundle"
    assert cli(["train", "rx", "--data", str(data), "--out", str(run), "--size", "64", "--feature-dim", "16",
                "--sigma", "1", "--threads", "2"]) == 0
    assert cli(["export", str(run), "--out", str(bundle), "--precision", "fp32,fp16", "--parity-images", "2"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "fp16"}

    # ---- host: the station config (ROI, trusted keys, line section) and calibration with its ROI --------
    ports = {name: free_port() for name in ("frames", "verdicts", "control")}
    control = f"tcp://127.0.0.1:{ports['control']}"
    frames_address = f"tcp://127.0.0.1:{ports['frames']}"
    config = tmp_path / "host" / "station.yaml"
    station = {
        "station": STATION, "bundle": "./bundle", "roi": ROI,
        "sockets": {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()},
        "journal": {"path": "journal.sqlite"},
        # a batch waits up to 1 s to fill: frames sit queued, as behind a slow backend, when kill -9 comes
        "batch": {"max_frames": 8, "max_wait_ms": 1000}, "queue": {"capacity": 64},
        "line": {"gpio_backend": "sim", "trusted_keys": "trusted-keys",  # ROOT/trusted-keys on the device
                 "camera": {"source": str(data / "test" / "good")},
                 "recipes": [{"id": 1, "name": "part", "bundle": "."}]},
    }
    config.write_text(yaml.safe_dump(station, sort_keys=False))
    assert cli(["calibrate", str(bundle), "--station", STATION, "--good", str(data / "train" / "good"),
                "--station-config", str(config), "--allow-few", "--out", str(tmp_path / "cal-host")]) == 0
    host_thresholds = json.loads((bundle / "thresholds.json").read_text())
    assert host_thresholds["provenance"]["roi"] == ROI and host_thresholds["provenance"]["precision"] == "fp32"

    # ---- host: sign and pack; device: provision, flash (engine build), serve with trusted keys ------------
    keys, root = tmp_path / "keys", tmp_path / "device"
    assert cli(["keys", "release", "--type", "signing", "--out", str(keys)]) == 0
    tar1 = tmp_path / "press-1-v1.tar"
    assert cli(["bundle", str(bundle), "--station", str(config), "--key", str(keys / "release.sign.key"),
                "--out", str(tar1)]) == 0
    assert cli(["provision", f"local:{root}", "--station", STATION, "--trust", str(keys / "release.sign.pub")]) == 0
    restart = f"env {STANDIN}=1 {{python}} {SERVICE} restart --root {{root}} --real"
    device = ["--set", f"restart={restart}", "--set", "trt_check=true", "--set", "health_timeout=120",
              "--set", f"build=env {STANDIN}=1 {{python}} -m lineside build-engine {{bundle}}"]
    try:
        capsys.readouterr()
        assert cli(["flash", f"local:{root}", str(tar1), *device]) == 0, capsys.readouterr()
        assert "backend tensorrt-standin, precision fp16" in capsys.readouterr().out  # flash checked what runs
        current = root / "current"
        v1 = os.readlink(current)
        trusted = load_trusted_keys([keys / "release.sign.pub"])
        health = healthy(control)["bundle"]
        assert (health["backend"], health["precision"], health["signed"]) == ("tensorrt-standin", "fp16", True)
        assert (current / "engines" / "model.fp16.engine").is_file()  # built where TensorRT's build writes
        assert verify_bundle(current, trusted, STATION)  # the built engine did not break the signature
        stats = ctl(capsys, control, "stats")
        assert stats["thresholds"]["image"] == pytest.approx(host_thresholds["image"])
        assert stats["threshold_layers"]["source"]["image"] == "bundle (thresholds.json)"

        # ---- stream: every frame gets one verdict --------------------------------------------------------
        journal = root / "journal.sqlite"
        sent = stream(frames_address, "cam-a", goods + defects)
        wait(lambda: len(verdicts_by_frame(journal)) >= len(sent), what="the first stream's verdicts")
        assert verdicts_by_frame(journal) == Counter(sent)

        # ---- operator review, recalibration from the journal on the device, reload -------------------------
        rows = {r["frame_id"]: r for r in read_verdicts(journal, station=STATION)}
        good_ids = [rows[i]["id"] for i in range(len(goods))]
        defect_ids = [rows[len(goods) + i]["id"] for i in range(len(defects))]
        good_ng = [rows[i]["id"] for i in range(len(goods)) if rows[i]["status"] == "NG"]
        good_ok = [i for i in good_ids if i not in good_ng]
        for action, ids in (("confirm", good_ok + defect_ids), ("overturn", good_ng)):
            if ids:
                assert cli(["review", str(journal), action, *map(str, ids), "--who", "op-anna"]) == 0
        assert len(read_events(journal, kind="review")) == len(goods) + len(defects)
        assert cli(["calibrate", str(current), "--station", STATION, "--from-journal", str(journal),
                    "--confirmed-only", "--allow-few", "--since", "1h", "--out", str(tmp_path / "cal-device")]) == 0
        local = json.loads((current / "local" / "thresholds.json").read_text())
        assert local["provenance"]["source"] == "journal" and local["provenance"]["precision"] == "fp16"
        assert local["provenance"]["who"] and local["provenance"]["produced_by"].startswith("lineside calibrate")
        assert cli(["verify", str(current), "--trust", str(keys / "release.sign.pub"), "--station", STATION]) == 0
        assert ctl(capsys, control, "stats")["thresholds"]["image"] == pytest.approx(host_thresholds["image"])
        reload = ctl(capsys, control, "reload", "--who", "eng-ben")
        assert reload["thresholds"]["image"] == pytest.approx(local["image"])
        assert reload["source"]["image"] == "bundle (local/thresholds.json)" and reload["signature_checked"]
        assert (reload["bundle"]["backend"], reload["bundle"]["precision"]) == ("tensorrt-standin", "fp16")
        assert read_events(journal, kind="reload")[-1]["who"] == "eng-ben"
        altered = tmp_path / "altered"
        shutil.copytree(current, altered)
        (altered / "thresholds.json").write_text('{"image": 0.0}')
        refused = ctl(capsys, control, "reload", "--bundle", str(altered))
        assert not refused["ok"] and "does not match the sha256" in refused["error"]  # trusted keys: checked
        assert ctl(capsys, control, "threshold", "--image", "-1")["ok"] is False  # implausible: refused

        # ---- kill -9 with frames queued, restart: still one verdict per frame ------------------------------
        pid = int((root / "service.pid").read_text())
        burst = stream(frames_address, "cam-b", goods[:5])  # fewer than a batch: they wait up to 1 s
        wait(lambda: request(control, {"cmd": "stats"})["received"] >= len(sent) + len(burst), 20,
             "the burst to reach the server")
        os.kill(pid, signal.SIGKILL)
        wait(lambda: subprocess.run(["kill", "-0", str(pid)], check=False, capture_output=True).returncode != 0
             or Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z", 10, "the kill")
        with sqlite3.connect(journal) as db:
            in_flight = db.execute("SELECT COUNT(*) FROM inflight").fetchone()[0]
        assert in_flight > 0, "the setup must leave frames in flight at the kill"
        subprocess.run(restart.format(python=sys.executable, root=root), shell=True, check=True)
        after = healthy(control)["bundle"]
        assert (after["backend"], after["precision"]) == ("tensorrt-standin", "fp16")
        later = stream(frames_address, "cam-c", defects[:3])
        everything = sent + burst + later
        wait(lambda: len(verdicts_by_frame(journal)) >= len(everything), what="every verdict after the restart")
        assert verdicts_by_frame(journal) == Counter(everything)  # exactly one each: none lost, none twice
        lost = [r for r in read_verdicts(journal, station=STATION) if r["reason"] == LOST_IN_CRASH]
        assert len(lost) == in_flight and all(r["status"] == "ERROR" and r["camera"] == "cam-b" for r in lost)
        restarted = ctl(capsys, control, "stats")
        assert restarted["thresholds"]["image"] == pytest.approx(local["image"])  # recalibration survives

        # ---- a second flash, then roll back to the recalibrated first ---------------------------------------
        station["queue"] = {"capacity": 32}
        config.write_text(yaml.safe_dump(station, sort_keys=False))
        tar2 = tmp_path / "press-1-v2.tar"
        assert cli(["bundle", str(bundle), "--station", str(config), "--key", str(keys / "release.sign.key"),
                    "--out", str(tar2)]) == 0
        assert cli(["flash", f"local:{root}", str(tar2), *device]) == 0
        assert os.readlink(current) != v1
        assert ctl(capsys, control, "stats")["thresholds"]["image"] == pytest.approx(host_thresholds["image"])
        assert cli(["rollback", f"local:{root}", "--set", f"restart={restart}", "--set", "health_timeout=120"]) == 0
        assert os.readlink(current) == v1
        back = healthy(control)["bundle"]
        assert (back["backend"], back["precision"], back["signed"]) == ("tensorrt-standin", "fp16", True)
        layers = ctl(capsys, control, "stats")["threshold_layers"]
        assert layers["effective"]["image"] == pytest.approx(local["image"])
        assert layers["source"]["image"] == "bundle (local/thresholds.json)"
        assert verify_bundle(current, trusted, STATION)
    finally:
        stop_service(root)

"""Issue 20 joint 5: calibration scores the crop the line scores (the station's ROI), and the NG
heatmap covers that crop in its place in the frame, not stretched over the whole frame."""

import json
import time

import cv2
import numpy as np
import yaml
from tiny_bundle import make_tiny_bundle

from edge_infer.alerts.disk import heatmap
from edge_infer.bundle import Bundle
from edge_infer.camera import Publisher
from edge_infer.server import Server
from edge_infer.station import load_station
from lineside.cli import main
from tests.runtime.runtime_helpers import cleanup, short_dir, wait_for_rows

ROI = [0, 0, 24, 40]  # x, y, width, height: the left part of a 48x40 frame


def frame(inside: int, outside: int = 250) -> np.ndarray:
    """A frame whose ROI holds `inside` and whose rest holds `outside` (the tiny model scores the brightest)."""
    image = np.full((40, 48), outside, np.uint8)
    image[:, :24] = inside
    return image


def station_config(tmp_path, bundle, **extra):
    sock = short_dir()
    data = {"station": "st1", "bundle": str(bundle), "roi": ROI,
            "sockets": {k: f"ipc://{sock}/{k}" for k in ("frames", "verdicts", "control")},
            "journal": {"path": str(tmp_path / "journal.sqlite")}, **extra}
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_calibrate_scores_the_crop_serve_scores(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle", image_threshold=None)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(60):
        cv2.imwrite(str(good / f"{i:03d}.png"), frame(40 + i))
    config = station_config(tmp_path, bundle)
    assert main(["calibrate", str(bundle), "--station", "st1", "--good", str(good), "--allow-few",
                 "--station-config", str(config), "--out", str(tmp_path / "cal")]) == 0
    thresholds = Bundle.load(bundle).thresholds
    assert thresholds.provenance["good_quantiles"]["max"] == np.float32(99 / 255)  # the crop, not the 250 outside
    assert thresholds.provenance["roi"] == ROI
    assert 99 / 255 <= thresholds.image < 250 / 255

    cfg = load_station(config)
    server = Server(cfg).start()
    try:
        with Publisher(cfg.sockets.frames, "st1", "cam0", "raw") as camera:
            camera.publish(frame(99), block=True)
        (row,) = wait_for_rows(cfg.journal.path, 1)
    finally:
        server.close()
        cleanup(cfg)
    scores = [line.split(",") for line in (tmp_path / "cal" / "scores.csv").read_text().splitlines()[1:]]
    assert row["status"] == "OK" and row["score"] == max(float(s) for _, _, s in scores)


def test_the_heatmap_covers_the_crop_in_its_place(tmp_path):
    image = frame(100, outside=30)
    shown = heatmap(image, np.ones((1, 8, 8), np.float32), ROI)
    grey = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    assert (shown[:, 24:] == grey[:, 24:]).all()  # outside the ROI: the frame as it is
    assert (shown[:, :24] != grey[:, :24]).any(axis=2).all()  # inside: every pixel coloured
    whole = heatmap(image, np.ones((1, 8, 8), np.float32))
    assert (whole != grey).any(axis=2).all()


def test_the_disk_sink_places_the_map_in_the_roi(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle", image_threshold=0.2)
    cfg = load_station(station_config(tmp_path, bundle, alerts={"disk": {"dir": str(tmp_path / "ng")}}))
    server = Server(cfg).start()
    try:
        with Publisher(cfg.sockets.frames, "st1", "cam0", "raw") as camera:
            camera.publish(frame(200, outside=30), block=True)
        wait_for_rows(cfg.journal.path, 1, status="NG")
        for _ in range(200):
            if list((tmp_path / "ng").glob("*.json")):
                break
            time.sleep(0.05)
    finally:
        server.close()
        cleanup(cfg)
    (record,) = (tmp_path / "ng").glob("*.json")
    assert json.loads(record.read_text())["status"] == "NG"
    shown = cv2.imread(str(record.with_name(record.stem + "_heatmap.png")))
    assert shown.shape[:2] == (40, 48)
    assert (shown[:, 24:] == 30).all()  # right of the ROI: untouched by the map
    assert (shown[:, :24] != 200).any(axis=2).all()

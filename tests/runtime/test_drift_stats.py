"""The server's stats carry the drift check of live OK scores against the calibration reference."""

import cv2
import numpy as np

from edge_infer.bundle import Bundle, Thresholds
from edge_infer.camera import FolderSource, Publisher, run_camera
from edge_infer.control import request
from edge_infer.server import Server
from runtime_helpers import cleanup, gray, make_tiny_bundle, station, wait_for_rows


def run_station(tmp_path, grey_levels, reference):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    Bundle.load(bundle).write_thresholds(
        Thresholds(image=0.5, provenance={"reference_scores": reference, "good_count": len(reference)}), "test")
    cfg, _ = station(tmp_path, bundle=bundle, queue={"capacity": 64})
    folder = tmp_path / "images"
    folder.mkdir()
    for i, level in enumerate(grey_levels):
        cv2.imwrite(str(folder / f"{i:03d}.png"), gray(int(level)))
    server = Server(cfg).start()
    try:
        with Publisher(cfg.sockets.frames, "st1", "cam0", "raw") as publisher:
            run_camera(FolderSource(folder), publisher)
        wait_for_rows(cfg.journal.path, len(grey_levels))
        return request(cfg.sockets.control, {"cmd": "stats"})["drift"]
    finally:
        server.close()
        cleanup(cfg)


def test_live_scores_like_the_reference_are_stable(tmp_path):
    rng = np.random.default_rng(0)
    reference = (rng.integers(20, 41, 300) / 255).tolist()
    drift = run_station(tmp_path, rng.integers(20, 41, 40), reference)
    assert drift["live_count"] == 40 and drift["status"] in ("stable", "watch")


def test_live_scores_shifted_from_the_reference_are_drift(tmp_path):
    rng = np.random.default_rng(1)
    reference = (rng.integers(20, 41, 300) / 255).tolist()
    drift = run_station(tmp_path, rng.integers(80, 101, 40), reference)  # still OK (< 0.5), but brighter
    assert drift["live_count"] == 40 and drift["status"] == "drift"

"""Threshold layers and `ctl reload` (issue 20 joint 4, issue 28 items 2 and 3).

One rule: runtime (ctl threshold) over station pin over bundle; reload applies what
calibrate wrote and re-reads the station config; runtime values survive a reload, and the
answer says what they hide; implausible values are refused unless forced; every change is
journaled with who.
"""

import yaml
from runtime_helpers import make_tiny_bundle

from edge_infer.bundle import Bundle, Thresholds
from edge_infer.control import request
from edge_infer.journal import read_events
from edge_infer.station import load_station


def calibrated(bundle_dir, image, good_max=None):
    """What `lineside calibrate` leaves in a bundle: new thresholds (and the manifest) with provenance."""
    provenance = {"good_quantiles": {"p50": image / 2, "max": good_max or image}} if good_max else {}
    Bundle.load(bundle_dir).write_thresholds(Thresholds(image=image, provenance=provenance), "lineside calibrate")


def test_reload_applies_what_calibrate_wrote(serve, tmp_path):
    server = serve()
    address = server.cfg.sockets.control
    calibrated(server.cfg.bundle, 0.7)
    answer = request(address, {"cmd": "reload", "who": "anna"}, timeout_s=20)
    assert answer["ok"], answer
    assert answer["thresholds"]["image"] == 0.7 and answer["source"]["image"] == "bundle (thresholds.json)"
    stats = request(address, {"cmd": "stats"})
    assert stats["thresholds"]["image"] == 0.7
    events = read_events(server.cfg.journal.path, kind="reload")
    assert events[-1]["who"] == "anna" and events[-1]["thresholds"]["image"] == 0.7


def test_one_precedence_runtime_over_station_over_bundle(serve, tmp_path):
    server = serve(thresholds={"image": 0.3})
    path = server.cfg.source
    address = server.cfg.sockets.control
    layers = request(address, {"cmd": "stats"})["threshold_layers"]
    assert layers["effective"]["image"] == 0.3 and layers["source"]["image"] == "station"
    assert layers["layers"]["bundle"]["image"] == 0.5 and "runtime" in layers["rule"]

    answer = request(address, {"cmd": "threshold", "image": 0.45, "who": "op1"})
    assert answer["thresholds"]["image"] == 0.45 and answer["source"]["image"] == "runtime"

    calibrated(server.cfg.bundle, 0.7)
    reload = request(address, {"cmd": "reload", "who": "eng"}, timeout_s=20)
    # the operator's value is not silently undone: it stays, and the answer names what it hides
    assert reload["thresholds"]["image"] == 0.45 and reload["source"]["image"] == "runtime"
    assert reload["runtime_kept"] == {"image": {"runtime": 0.45, "below": 0.3}}

    cleared = request(address, {"cmd": "threshold", "clear": ["image"], "who": "op1"})
    assert cleared["thresholds"]["image"] == 0.3 and cleared["source"]["image"] == "station"

    data = yaml.safe_load(path.read_text())  # the engineer removes the pin; reload re-reads the config
    del data["thresholds"]
    path.write_text(yaml.safe_dump(data))
    reload = request(address, {"cmd": "reload", "who": "eng"}, timeout_s=20)
    assert reload["thresholds"]["image"] == 0.7 and reload["source"]["image"] == "bundle (thresholds.json)"
    assert reload["restart_needed"] == []

    kinds = [(e["kind"], e["who"]) for e in read_events(server.cfg.journal.path)]
    assert kinds == [("threshold", "op1"), ("reload", "eng"), ("threshold", "op1"), ("reload", "eng")]


def test_implausible_thresholds_are_refused_unless_forced(serve, tmp_path):
    server = serve()
    address = server.cfg.sockets.control
    answer = request(address, {"cmd": "threshold", "image": -1, "who": "op1"})
    assert not answer["ok"] and "outside the plausible" in answer["error"] and "--force" in answer["error"]
    assert request(address, {"cmd": "stats"})["thresholds"]["image"] == 0.5  # nothing changed
    assert not read_events(server.cfg.journal.path, kind="threshold")

    calibrated(server.cfg.bundle, 0.6, good_max=0.55)  # with calibration scores: median .. 4x the largest
    request(address, {"cmd": "reload"}, timeout_s=20)
    assert not request(address, {"cmd": "threshold", "image": 0.2})["ok"]  # below the median good score
    assert not request(address, {"cmd": "threshold", "image": 3.0})["ok"]
    assert request(address, {"cmd": "threshold", "image": 0.9})["ok"]
    forced = request(address, {"cmd": "threshold", "image": -1, "force": True, "who": "op2"})
    assert forced["ok"] and forced["thresholds"]["image"] == -1
    event = read_events(server.cfg.journal.path, kind="threshold")[-1]
    assert event["who"] == "op2" and event["forced"] is True and event["after"]["image"] == -1
    # a reload's own threshold values are held to the same rule, against the bundle it loads
    assert "outside the plausible" in request(address, {"cmd": "reload", "image": 50.0}, timeout_s=20)["error"]


def test_reload_names_what_needs_a_restart(serve, tmp_path):
    server = serve()
    path = server.cfg.source
    data = yaml.safe_load(path.read_text())
    data["queue"] = {"capacity": 99}
    data["bundle"] = str(make_tiny_bundle(tmp_path / "other", image_threshold=0.2))
    path.write_text(yaml.safe_dump(data))
    answer = request(server.cfg.sockets.control, {"cmd": "reload"}, timeout_s=20)
    assert answer["ok"] and answer["restart_needed"] == ["queue"]
    assert answer["bundle"]["path"] == str(tmp_path / "other") and answer["thresholds"]["image"] == 0.2
    assert server.queue.capacity != 99 and load_station(path).queue.capacity == 99

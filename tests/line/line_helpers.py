"""Helpers for the line tests: a real server on loopback tcp ports with a line service whose
camera is a function and whose GPIO is simulated."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from net_helpers import free_port
from tiny_bundle import gray, make_tiny_bundle

from edge_infer.line.service import LineService
from edge_infer.server import Server
from edge_infer.station import load_station

__all__ = ["free_port", "gray", "line_station", "make_tiny_bundle", "normalized_bundle", "start_line", "wait_until"]


def line_station(tmp_path: Path, line: dict, recipes: list[dict] | None = None, **settings):
    """A station config on loopback tcp with a line section; recipes default to one tiny bundle."""
    if recipes is None:
        recipes = [{"id": 1, "name": "part-a", "bundle": str(make_tiny_bundle(tmp_path / "bundle-a"))}]
    data = {
        "station": "line1",
        "bundle": recipes[0]["bundle"],
        "sockets": {k: f"tcp://127.0.0.1:{free_port()}" for k in ("frames", "verdicts", "control")},
        "journal": {"path": str(tmp_path / "journal.sqlite")},
        "line": {"gpio_backend": "sim", "recipes": recipes, **line},
        **settings,
    }
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_station(path)


def start_line(cfg, grabber, clock=None, gpio=None):
    server = Server(cfg)
    service = LineService(server, grabber=grabber, clock=clock, gpio=gpio)
    server.start()
    return server, service


def wait_until(predicate, timeout_s: float = 15.0, interval_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return predicate()


def normalized_bundle(root: Path, q50: float, q99: float, **kwargs) -> Path:
    """A tiny bundle whose manifest says to publish scores on the good-quantiles scale."""
    import json

    path = make_tiny_bundle(root, **kwargs)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["score_normalization"] = {"method": "good_quantiles", "q50": q50, "q99": q99, "n": 50}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return path

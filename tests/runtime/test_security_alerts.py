"""CurveZMQ on all three sockets, the alert sinks (at least once, with retry), Prometheus."""

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
import zmq

from edge_infer.alerts import ImageCache
from edge_infer.alerts.disk import DiskSink
from edge_infer.camera import Publisher
from edge_infer.control import request
from edge_infer.errors import LinesideError
from edge_infer.journal import Journal, read_verdicts
from edge_infer.keys_cmd import main as keys_main
from edge_infer.server import Server
from edge_infer.station import DiskConfig
from edge_infer.watch import watch
from runtime_helpers import bright, cleanup, dark, station, wait_for_rows


@pytest.fixture
def keys(tmp_path):
    out = tmp_path / "keys"
    keys_main(SimpleNamespace(type="curve", out=str(out), names=["server", "cam", "intruder"], force=False))
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "cam.key").write_bytes((out / "cam.key").read_bytes())
    return out, authorized


def test_curve_admits_the_right_key_and_refuses_others(tmp_path, keys):
    out, authorized = keys
    assert oct((out / "cam.key_secret").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(LinesideError, match="exists"):
        keys_main(SimpleNamespace(type="curve", out=str(out), names=["cam"], force=False))
    with pytest.raises(LinesideError, match="unknown key type"):
        keys_main(SimpleNamespace(type="rsa", out=str(out), names=["x"], force=False))
    cfg, _ = station(tmp_path, curve={"server_secret_key": str(out / "server.key_secret"),
                                      "authorized_clients": str(authorized)})
    server = Server(cfg).start()
    right = {"server_key": out / "server.key", "client_key": out / "cam.key_secret"}
    wrong = {"server_key": out / "server.key", "client_key": out / "intruder.key_secret"}
    try:
        assert request(cfg.sockets.control, {"cmd": "health"}, **right)["status"] == "ready"
        for keys_used in (wrong, {}):  # a wrong key, and no key at all
            with pytest.raises(LinesideError, match="no answer"):
                request(cfg.sockets.control, {"cmd": "shutdown"}, timeout_s=0.5, **keys_used)
            intruder = Publisher(cfg.sockets.frames, "st1", "evil", "raw", **keys_used)
            for _ in range(5):
                intruder.publish(dark(), block=False)
            intruder.close()
        got = {}
        spy = threading.Thread(target=lambda: got.update(watch(cfg.sockets.verdicts, timeout_s=1.5,
                                                               out=open("/dev/null", "w"), **wrong)))
        spy.start()
        time.sleep(0.3)
        camera = Publisher(cfg.sockets.frames, "st1", "cam", "raw", **right)
        for _ in range(3):
            camera.publish(bright(), block=True)
        rows = wait_for_rows(cfg.journal.path, 3)
        spy.join(5)
        assert [r["camera"] for r in rows] == ["cam"] * 3  # nothing from the intruders
        assert got == {}  # the wrong key heard nothing
        assert request(cfg.sockets.control, {"cmd": "health"}, **right)["status"] == "ready"  # still running
        camera.close()
    finally:
        server.close()
        cleanup(cfg)


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver that fails its first two calls."""

    calls: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.calls.append(body)
        self.send_response(503 if len(Hook.calls) <= 2 else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


def undelivered(path) -> int:
    journal = Journal(path)
    try:
        return journal.db.execute("SELECT COUNT(*) FROM deliveries WHERE delivered_at IS NULL").fetchone()[0]
    finally:
        journal.close()


def test_webhook_and_disk_alerts_are_retried_and_survive_a_restart(tmp_path):
    http = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    Hook.calls = []
    alerts = {"webhook": {"url": f"http://127.0.0.1:{http.server_port}/ng"},
              "disk": {"dir": str(tmp_path / "ng"), "keep": 2}, "retry_initial_s": 0.05}
    cfg, _ = station(tmp_path, alerts=alerts)
    server = Server(cfg).start()
    try:
        camera = Publisher(cfg.sockets.frames, "st1", "cam0", "raw")
        for i in range(4):
            camera.publish(bright() if i != 1 else dark(), block=True)
        wait_for_rows(cfg.journal.path, 4)
        # until every alert is marked delivered, not only seen once: a refused one may still be waiting to retry
        deadline = time.monotonic() + 10
        while ((len({c["id"] for c in Hook.calls if c["status"] == "NG"}) < 3 or undelivered(cfg.journal.path))
               and time.monotonic() < deadline):
            time.sleep(0.05)
    finally:
        server.close()
        camera.close()
    ng_ids = [r["id"] for r in read_verdicts(cfg.journal.path, status="NG")]
    assert len(ng_ids) == 3 and len(Hook.calls) >= 5  # two refusals, then each alert delivered
    assert {c["id"] for c in Hook.calls} == set(ng_ids) and all(c["event"] == "alert" for c in Hook.calls)
    kept = sorted(p.name for p in (tmp_path / "ng").iterdir())
    assert len([k for k in kept if k.endswith(".json")]) == 2 and any(k.endswith("_heatmap.png") for k in kept)

    # an alert left pending by a crash is delivered after the restart
    journal = Journal(cfg.journal.path)
    journal.db.execute("UPDATE deliveries SET delivered_at = NULL, next_try = 0 WHERE verdict_id = ? AND "
                       "sink = 'webhook'", (ng_ids[0],))
    journal.close()
    before = len(Hook.calls)
    cfg2, _ = station(tmp_path, alerts=alerts)
    server = Server(cfg2).start()
    try:
        deadline = time.monotonic() + 10
        while len(Hook.calls) == before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.close()
        cleanup(cfg)
        cleanup(cfg2)
        http.shutdown()
    assert Hook.calls[-1]["id"] == ng_ids[0]


def test_disk_sink_writes_image_heatmap_and_keeps_the_newest(tmp_path):
    sink = DiskSink(DiskConfig(dir=tmp_path / "ng", keep=3), "st1")
    cache = ImageCache()
    for i in range(5):
        cache.put(i, bright((10, 12)), bright((8, 8)).astype("float32") / 255)
        sink.deliver({"id": i, "camera": "c", "frame_id": i * 10, "decided_at": 0.0}, cache)
    assert sorted(p.name for p in (tmp_path / "ng").glob("*.json")) == [f"st1_c_{i * 10}_{i}.json" for i in (2, 3, 4)]
    assert (tmp_path / "ng" / "st1_c_40_4_heatmap.png").is_file()
    note = sink.deliver({"id": 9, "camera": "c", "frame_id": 90, "decided_at": 0.0}, cache)
    assert "no longer in memory" in note


def test_gpio_sink_says_what_it_needs_without_jetson_gpio(tmp_path):
    try:
        import Jetson.GPIO  # noqa: F401
        pytest.skip("Jetson.GPIO is installed here: the message for its absence cannot be checked")
    except ImportError:
        pass
    cfg, _ = station(tmp_path, alerts={"gpio": {"pin": 12}})
    with pytest.raises(LinesideError, match="Jetson.GPIO"):
        Server(cfg)
    cleanup(cfg)


def test_prometheus_metrics_are_served(tmp_path):
    with zmq.Context.instance().socket(zmq.REP) as probe:  # find a free TCP port
        port = probe.bind_to_random_port("tcp://127.0.0.1")
        probe.unbind(f"tcp://127.0.0.1:{port}")
    cfg, _ = station(tmp_path, metrics_port=port)
    server = Server(cfg).start()
    try:
        camera = Publisher(cfg.sockets.frames, "st1", "cam0", "raw")
        for _ in range(3):
            camera.publish(bright(), block=True)
        wait_for_rows(cfg.journal.path, 3)
        deadline = time.monotonic() + 5
        while server.telemetry.counts["NG"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        camera.close()
    finally:
        server.close()
        cleanup(cfg)
    assert 'lineside_verdicts_total{station="st1",status="NG"} 3.0' in text
    assert 'lineside_verdict_latency_seconds_count{station="st1"} 3.0' in text
    assert 'lineside_stage_latency_seconds_bucket{le="0.001",stage="compute",station="st1"}' in text


class RecordingGPIO:
    """Stands in for Jetson.GPIO to check what the sink asks of it (the wiring itself needs a Jetson)."""

    BOARD, BCM, OUT, HIGH, LOW = "BOARD", "BCM", "OUT", 1, 0

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args, **kw: self.calls.append((name, args, kw))


def test_gpio_sink_pulses_active_low_and_skips_stale_verdicts(monkeypatch):
    import sys
    import types

    from edge_infer.alerts.gpio import GpioSink
    from edge_infer.station import GpioConfig

    gpio = RecordingGPIO()
    package = types.ModuleType("Jetson")
    package.GPIO = gpio
    monkeypatch.setitem(sys.modules, "Jetson", package)
    monkeypatch.setitem(sys.modules, "Jetson.GPIO", gpio)
    sink = GpioSink(GpioConfig(pin=12, numbering="BCM", pulse_ms=5, active_high=False, max_age_ms=500))
    assert gpio.calls == [("setmode", ("BCM",), {}), ("setup", (12, "OUT"), {"initial": 1})]
    note = sink.deliver({"decided_at": time.time()}, None)
    assert gpio.calls[-2:] == [("output", (12, 0), {}), ("output", (12, 1), {})] and "pulsed" in note
    before = len(gpio.calls)
    assert "skipped" in sink.deliver({"decided_at": time.time() - 2}, None) and len(gpio.calls) == before
    sink.close()
    assert gpio.calls[-1] == ("cleanup", (12,), {})

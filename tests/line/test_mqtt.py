"""MQTT against a real mosquitto on a loopback port: one message per verdict with its
inspection id, and no verdict lost while the broker is stopped and restarted."""

import json
import shutil
import subprocess
import threading
import time

import pytest

pytest.importorskip("paho.mqtt")
import paho.mqtt.client as mqtt
from line_helpers import free_port, gray, line_station, start_line, wait_until

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if shutil.os.path.exists("/usr/sbin/mosquitto")
                                          else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")


class Broker:
    """mosquitto on 127.0.0.1:port with persistence (so a durable subscription survives a restart)."""

    def __init__(self, folder, port):
        self.port, self.folder = port, folder
        folder.mkdir(exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {folder}/\nautosave_interval 1\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import socket

        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        if not wait_until(up, 10):
            self.stop()
            pytest.skip("mosquitto did not start on a loopback port")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Listener:
    """A durable QoS 1 subscriber (clean_session False): it misses nothing across a restart."""

    def __init__(self, port, prefix):
        self.messages, self.lock = [], threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-listener", clean_session=False)
        c.reconnect_delay_set(1, 2)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{prefix}/#", qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload.decode(), msg.retain))

    def topic(self, suffix):
        with self.lock:
            return [m for m in self.messages if m[0].endswith(suffix)]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker", free_port())
    b.start()
    yield b
    b.stop()


def test_each_verdict_once_with_its_inspection_id_and_none_lost_across_a_broker_restart(tmp_path, broker):
    prefix = "lineside/line1"
    listener = Listener(broker.port, prefix)
    assert listener.subscribed.wait(10)
    frames = iter([gray(250), gray(20)] * 50)
    cfg = line_station(tmp_path, {"mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.5,
                                           "reconnect_max_s": 2}})
    server, service = start_line(cfg, lambda: next(frames))
    try:
        assert wait_until(lambda: any(p == "online" for _, p, _ in listener.topic("availability")))
        ids = [service.trigger("network", "test") for _ in range(4)]  # max_in_flight is 4
        assert wait_until(lambda: len(listener.topic("/verdict")) >= 4)
        time.sleep(0.3)  # a duplicate, if any, would have arrived by now
        got = [json.loads(p) for _, p, _ in listener.topic("/verdict")]
        assert sorted(v["inspection"] for v in got) == ids  # exactly one message per part
        assert {v["inspection"]: v["status"] for v in got} == {1: "NG", 2: "OK", 3: "NG", 4: "OK"}
        alerts = [json.loads(p)["inspection"] for _, p, _ in listener.topic("/alert")]
        assert sorted(alerts) == [1, 3]

        broker.stop()
        assert wait_until(lambda: not service.channels[0].connected.is_set())
        more = []
        for _ in range(6):  # decided while the broker is away
            more.append(service.trigger("network", "test"))
            assert wait_until(lambda: service.signals.in_flight == 0)
        assert wait_until(lambda: service.signals.counters["triggers"] == 10 and
                          service.signals.counters["OK"] + service.signals.counters["NG"] == 10)
        backlog = server.telemetry.registry.get_sample_value("lineside_mqtt_backlog", {"station": "line1"})
        assert wait_until(lambda: server.telemetry.registry.get_sample_value(
            "lineside_mqtt_backlog", {"station": "line1"}) == 6), backlog
        broker.start()
        channel = service.channels[0]
        assert wait_until(lambda: {json.loads(p)["inspection"] for _, p, _ in listener.topic("/verdict")}
                          >= set(ids + more), 60), (channel.connected.is_set(), channel.cursor,
                                                    channel.thread.is_alive(), listener.topic("/verdict"))
        got = {json.loads(p)["inspection"] for _, p, _ in listener.topic("/verdict")}
        assert got == set(ids + more)  # none lost; the backlog came from the journal
        assert wait_until(lambda: server.telemetry.registry.get_sample_value(
            "lineside_mqtt_backlog", {"station": "line1"}) == 0)
    finally:
        server.close()
        listener.close()
    # after a clean stop the retained availability says offline
    seen = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-after")
    c.on_message = lambda cl, u, m: seen.append(m.payload.decode())
    c.connect("127.0.0.1", broker.port)
    c.subscribe(f"{prefix}/availability", qos=1)
    c.loop_start()
    assert wait_until(lambda: seen, 5) == ["offline"]
    c.loop_stop()

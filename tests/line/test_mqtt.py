"""MQTT against a real mosquitto on a loopback port: one message per verdict with its
inspection id, and no verdict lost while the line's link to the broker is down.

The outage is a cut TCP link between the line and the broker, not a broker restart: the
listener stays connected to the broker throughout, so what is checked is the line's own
guarantee (the backlog comes from the journal once the broker is reachable again), not the
broker's restore of a durable session across a restart, which mosquitto 2.0 does not do
reliably (messages that arrive before a restored client reconnects can be dropped)."""

import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

pytest.importorskip("paho.mqtt")
import paho.mqtt.client as mqtt
from line_helpers import free_port, gray, line_station, start_line, wait_until
from net_helpers import TcpProxy

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if shutil.os.path.exists("/usr/sbin/mosquitto")
                                          else None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")


class Broker:
    """mosquitto on 127.0.0.1:port."""

    def __init__(self, folder, port):
        self.port = port
        folder.mkdir(exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        if not wait_until(up, 10):
            self.stop()
            pytest.skip("mosquitto did not start on a loopback port")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Listener:
    """A QoS 1 subscriber connected straight to the broker."""

    def __init__(self, port, prefix):
        self.messages, self.lock = [], threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-listener")
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
    yield b
    b.stop()


def test_each_verdict_once_with_its_inspection_id_and_none_lost_while_the_broker_is_away(tmp_path, broker):
    prefix = "lineside/line1"
    listener = Listener(broker.port, prefix)
    assert listener.subscribed.wait(10)
    frames = iter([gray(250), gray(20)] * 50)
    link = TcpProxy(broker.port)  # the line's way to the broker, cut and restored below
    cfg = line_station(tmp_path, {"mqtt": {"host": "127.0.0.1", "port": link.port, "reconnect_min_s": 0.5,
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

        link.cut()
        assert wait_until(lambda: not service.channels[0].connected.is_set())
        # the broker lost the line without a goodbye: its last will says offline
        assert wait_until(lambda: listener.topic("availability")[-1][1] == "offline")
        more = []
        for _ in range(6):  # decided while the broker is away
            more.append(service.trigger("network", "test"))
            assert wait_until(lambda: service.signals.in_flight == 0)
        assert wait_until(lambda: service.signals.counters["triggers"] == 10 and
                          service.signals.counters["OK"] + service.signals.counters["NG"] == 10)
        backlog = server.telemetry.registry.get_sample_value("lineside_mqtt_backlog", {"station": "line1"})
        assert wait_until(lambda: server.telemetry.registry.get_sample_value(
            "lineside_mqtt_backlog", {"station": "line1"}) == 6), backlog
        link.restore()
        channel = service.channels[0]
        assert wait_until(lambda: {json.loads(p)["inspection"] for _, p, _ in listener.topic("/verdict")}
                          >= set(ids + more), 30), (channel.connected.is_set(), channel.cursor,
                                                    channel.thread.is_alive(), listener.topic("/verdict"))
        got = {json.loads(p)["inspection"] for _, p, _ in listener.topic("/verdict")}
        assert got == set(ids + more)  # none lost; the backlog came from the journal
        assert wait_until(lambda: server.telemetry.registry.get_sample_value(
            "lineside_mqtt_backlog", {"station": "line1"}) == 0)
    finally:
        server.close()
        listener.close()
        link.cut()
    # after a clean stop the retained availability says offline
    seen = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-after")
    c.on_message = lambda cl, u, m: seen.append(m.payload.decode())
    c.connect("127.0.0.1", broker.port)
    c.subscribe(f"{prefix}/availability", qos=1)
    c.loop_start()
    assert wait_until(lambda: seen, 5) == ["offline"]
    c.loop_stop()


class DelayLink:
    """A TCP pass-through that holds every chunk for ``one_way_s`` in each direction (a remote
    broker: 2 x one_way_s of added round trip), and parses the MQTT packets going by to count
    the line's QoS 1 PUBLISHes still waiting for their PUBACK (the most at once)."""

    def __init__(self, target_port, one_way_s):
        import asyncio

        self.target, self.delay, self.port = target_port, one_way_s, free_port()
        self.outstanding = self.max_outstanding = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def serve():
            self.server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            started.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        assert started.wait(5)

    async def _connection(self, near_reader, near_writer):
        import asyncio

        far_reader, far_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._pump(near_reader, far_writer, upstream=True),
                             self._pump(far_reader, near_writer, upstream=False), return_exceptions=True)

    async def _pump(self, reader, writer, upstream):
        import asyncio

        queue, parser = asyncio.Queue(), MqttPackets()

        async def deliver():
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(deliver())
        while data := await reader.read(65536):
            for kind in parser.feed(data):  # 3 PUBLISH (line → broker), 4 PUBACK (broker → line)
                with self.lock:
                    if upstream and kind == 3:
                        self.outstanding += 1
                        self.max_outstanding = max(self.max_outstanding, self.outstanding)
                    elif not upstream and kind == 4:
                        self.outstanding -= 1
            queue.put_nowait((asyncio.get_running_loop().time() + self.delay, data))
        queue.put_nowait(None)
        await sender

    def close(self):
        import asyncio

        async def stop():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


class MqttPackets:
    """Split an MQTT byte stream into packets; yields each packet's type (the fixed header's high nibble)."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        self.buffer += data
        while len(self.buffer) >= 2:
            length, multiplier, i = 0, 1, 1
            while True:
                if i >= len(self.buffer):
                    return
                byte = self.buffer[i]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(self.buffer) < i + length:
                return
            kind = self.buffer[0] >> 4
            self.buffer = self.buffer[i + length:]
            yield kind


def test_a_remote_broker_at_50_ms_round_trip_keeps_up_with_the_line(tmp_path, broker):
    """Verdicts go out through paho's in-flight window, not one PUBACK at a time: with 50 ms of
    added round trip the line sustains far more than 1/RTT = 20 verdicts/s, and loses none."""
    from edge_infer.journal import Journal

    prefix = "lineside/line1"
    listener = Listener(broker.port, prefix)
    assert listener.subscribed.wait(10)
    link = DelayLink(broker.port, one_way_s=0.025)
    cfg = line_station(tmp_path, {"mqtt": {"host": "127.0.0.1", "port": link.port}})
    server, service = start_line(cfg, lambda: gray(20))
    count = 600
    try:
        channel = service.channels[0]
        assert wait_until(lambda: channel.connected.is_set())
        journal = Journal(cfg.journal.path)  # a burst of verdicts as a 30 fps line writes them, 20 s worth
        t0 = time.monotonic()
        for start in range(0, count, 30):
            journal.record([{"decided_at": time.time(), "station": "line1", "camera": "line0", "frame_id": start + i,
                             "status": "OK", "score": 0.1, "threshold": 0.5,
                             "detail": {"tags": {"inspection": str(start + i + 1), "recipe": "1"}}}
                            for i in range(30)])
        journal.close()
        last = count
        assert wait_until(lambda: channel.cursor >= last, 60), channel.cursor
        elapsed = time.monotonic() - t0
        assert wait_until(lambda: len(listener.topic("/verdict")) >= count, 10)
        got = [json.loads(p)["id"] for _, p, _ in listener.topic("/verdict")]
        assert sorted(set(got)) == list(range(1, count + 1))  # none lost
        assert link.max_outstanding >= 16  # a window on the wire, not one PUBACK at a time (main: 2)
        print(f"\nMQTT through a 50 ms round trip: {count} verdicts in {elapsed:.2f} s = {count / elapsed:.0f} "
              f"verdicts/s, up to {link.max_outstanding} in flight")
    finally:
        server.close()
        listener.close()
        link.close()

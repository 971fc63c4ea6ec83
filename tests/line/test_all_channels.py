"""One triggered part yields exactly one result on every channel at once — Modbus, OPC UA,
MQTT, the journal and `lineside ctl` — all with the same inspection id."""

import asyncio
import json
import threading

import pytest

pytest.importorskip("pymodbus")
pytest.importorskip("asyncua")
pytest.importorskip("paho.mqtt")
import paho.mqtt.client as mqtt
from asyncua import Client, ua
from line_helpers import free_port, gray, line_station, start_line, wait_until
from pymodbus.client import ModbusTcpClient
from test_mqtt import MOSQUITTO, Broker

from edge_infer.control import request
from edge_infer.journal import read_verdicts
from edge_infer.line import modbus as m
from edge_infer.line.opcua import NAMESPACE


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")
def test_one_trigger_one_result_per_channel_with_matching_ids(tmp_path):
    broker = Broker(tmp_path / "broker", free_port())
    mb_port, ua_port = free_port(), free_port()
    cfg = line_station(tmp_path, {"modbus": {"host": "127.0.0.1", "port": mb_port},
                                  "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{ua_port}/lineside"},
                                  "mqtt": {"host": "127.0.0.1", "port": broker.port}})
    server, _service = start_line(cfg, lambda: gray(250))
    got, subscribed = [], threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="all-channels")
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, msg: got.append(json.loads(msg.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("lineside/line1/verdict", qos=1)
    sub.loop_start()
    plc = ModbusTcpClient("127.0.0.1", port=mb_port, timeout=3)
    try:
        assert subscribed.wait(10) and plc.connect()
        assert wait_until(lambda: plc.read_holding_registers(m.STATUS).registers[0] & 1)  # Ready
        plc.write_register(m.CONTROL, 1)  # Trigger over Modbus
        plc.write_register(m.CONTROL, 0)
        assert wait_until(lambda: plc.read_holding_registers(m.STATUS).registers[0] & 4)
        hi, lo = plc.read_holding_registers(m.INSPECTION_ID, count=2).registers
        modbus_id = (hi << 16) | lo

        async def opcua_id():
            async with Client(f"opc.tcp://127.0.0.1:{ua_port}/lineside", timeout=5) as client:
                ns = await client.get_namespace_index(NAMESPACE)
                node = client.get_node(ua.NodeId("VisionSystem.ResultManagement.InspectionId", ns))
                for _ in range(200):
                    if await node.read_value():
                        break
                    await asyncio.sleep(0.02)
                return await node.read_value()

        assert asyncio.run(opcua_id()) == modbus_id == 1
        assert wait_until(lambda: got)
        rows = read_verdicts(cfg.journal.path)
        assert [r["detail"]["tags"]["inspection"] for r in rows] == ["1"]
        assert [(g["inspection"], g["id"], g["status"]) for g in got] == [(1, rows[0]["id"], "NG")]
        line = request(cfg.sockets.control, {"cmd": "line"})
        assert line["ok"], line
        assert line["signals"]["inspection_id"] == 1 and line["signals"]["counters"]["triggers"] == 1
        switched = request(cfg.sockets.control, {"cmd": "recipe", "id": 3, "who": "me"})
        assert not switched["ok"] and "UNKNOWN_RECIPE" in switched["error"]
        assert request(cfg.sockets.control, {"cmd": "recipe", "id": 1})["changed"] is False
    finally:
        plc.close()
        sub.loop_stop()
        server.close()
        broker.stop()

"""The PLC handshake over Modbus TCP with a real pymodbus client against a real server."""

import struct

import pytest

pytest.importorskip("pymodbus")
from line_helpers import free_port, gray, line_station, start_line, wait_until
from pymodbus.client import ModbusTcpClient

from edge_infer.journal import read_verdicts
from edge_infer.line import modbus as m
from edge_infer.line.plc_signals import ErrorCode


@pytest.fixture
def plc(tmp_path):
    port = free_port()
    frames = iter([gray(250), gray(20), gray(250), gray(20)] * 20)  # tiny bundle: 250 → NG, 20 → OK
    cfg = line_station(tmp_path, {"modbus": {"host": "127.0.0.1", "port": port}, "max_in_flight": 1})
    server, service = start_line(cfg, lambda: next(frames))
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    assert client.connect()
    yield server, service, client
    client.close()
    server.close()


def read(client, address, count=1):
    answer = client.read_holding_registers(address, count=count)
    assert not answer.isError(), answer
    return answer.registers


def u32(regs):
    return (regs[0] << 16) | regs[1]


def pulse(client, bit):
    assert not client.write_register(m.CONTROL, 1 << bit).isError()
    assert not client.write_register(m.CONTROL, 0).isError()


def test_a_triggered_part_yields_exactly_one_result_with_its_inspection_id(plc):
    server, _service, client = plc
    assert read(client, m.STATUS)[0] & 1  # Ready
    pulse(client, 0)  # Trigger
    status = wait_until(lambda: read(client, m.STATUS)[0] & 4 and read(client, m.STATUS)[0])  # ResultValid
    assert status & 4 and status & 16  # NG bit: the first frame is bright
    inspection = u32(read(client, m.INSPECTION_ID, 2))
    assert inspection == 1 and read(client, m.RESULT_STATUS)[0] == 2
    score = struct.unpack(">f", struct.pack(">HH", *read(client, m.SCORE, 2)))[0]
    assert score == pytest.approx(250 / 255, abs=1e-3)
    pulse(client, 1)  # ResultAck
    assert wait_until(lambda: not read(client, m.STATUS)[0] & 4)
    pulse(client, 0)
    assert wait_until(lambda: read(client, m.STATUS)[0] & 4)
    assert u32(read(client, m.INSPECTION_ID, 2)) == 2 and read(client, m.RESULT_STATUS)[0] == 1
    assert u32(read(client, m.COUNTERS_AT, 2)) == 2  # triggers
    rows = read_verdicts(server.cfg.journal.path)
    assert [r["detail"]["tags"]["inspection"] for r in rows] == ["1", "2"]  # exactly one row per trigger
    assert [r["status"] for r in rows] == ["NG", "OK"]
    history = read(client, m.HISTORY_AT, 8)  # newest first
    assert u32(history[:2]) == 2 and u32(history[4:6]) == 1


def test_malformed_writes_set_an_error_code_and_the_service_keeps_running(plc):
    server, _service, client = plc
    assert client.write_register(m.RECIPE_SELECT, 77).isError() is False  # well-formed, unknown recipe
    assert read(client, m.ERROR_CODE)[0] == ErrorCode.UNKNOWN_RECIPE
    assert read(client, m.ACTIVE_RECIPE)[0] == 1
    pulse(client, 2)  # ErrorReset
    assert read(client, m.ERROR_CODE)[0] == 0

    assert client.write_register(m.SIZE + 5, 1).isError()  # out of range
    assert read(client, m.ERROR_CODE)[0] == ErrorCode.BAD_REGISTER
    assert client.write_register(m.STATUS, 1).isError()  # a read-only register
    assert client.read_holding_registers(m.SIZE - 1, count=5).isError()
    assert client.write_register(m.CONTROL, 0xFF).isError()  # bits that do not exist
    assert read(client, m.ERROR_CODE)[0] == ErrorCode.BAD_VALUE
    pulse(client, 2)

    # trigger while busy: hold the one part in flight by pausing the server's worker
    with server.model_lock:
        pulse(client, 0)
        assert wait_until(lambda: read(client, m.STATUS)[0] & 2)  # Busy
        pulse(client, 0)
        assert read(client, m.ERROR_CODE)[0] == ErrorCode.TRIGGER_WHILE_BUSY
    assert wait_until(lambda: read(client, m.STATUS)[0] & 4)
    assert u32(read(client, m.COUNTERS_AT, 2)) == 1  # the refused trigger inspected nothing
    assert u32(read(client, m.COUNTERS_AT + 12, 2)) >= 4  # plc_errors counted
    pulse(client, 2)
    pulse(client, 1)
    pulse(client, 0)  # and the service still inspects
    assert wait_until(lambda: u32(read(client, m.INSPECTION_ID, 2)) == 2)
    assert server.health()["status"] == "ready"

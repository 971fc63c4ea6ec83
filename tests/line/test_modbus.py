"""The PLC handshake over Modbus TCP with a real pymodbus client against a real server."""

import struct

import pytest

pytest.importorskip("pymodbus")
from line_helpers import (
    free_port,
    gray,
    line_station,
    make_tiny_bundle,
    normalized_bundle,
    start_line,
    wait_until,
)
from pymodbus.client import ModbusTcpClient

from edge_infer.journal import read_events, read_verdicts
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


def f32(regs):
    return struct.unpack(">f", struct.pack(">HH", *regs))[0]


def plc_trigger(client) -> int:
    """Raise Trigger and read the id it got in one request (FC23: write, then read)."""
    answer = client.readwrite_registers(read_address=m.LAST_TRIGGER_ID, read_count=2, write_address=m.CONTROL,
                                        values=[1])
    assert not answer.isError(), answer
    assert not client.write_register(m.CONTROL, 0).isError()
    return u32(answer.registers)


def query(client, inspection) -> dict:
    """The result of any inspection by its id (FC23: write QUERY_ID, read the query block)."""
    answer = client.readwrite_registers(read_address=m.QUERY_STATUS, read_count=6, write_address=m.QUERY_ID,
                                        values=[inspection >> 16, inspection & 0xFFFF])
    assert not answer.isError(), answer
    r = answer.registers
    return {"status": r[0] & 0xFF, "late": bool(r[0] & m.LATE_BIT), "score": f32(r[1:3]), "threshold": f32(r[3:5]),
            "recipe": r[5]}


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
    history = read(client, m.HISTORY_AT, 2 * m.HISTORY_STRIDE)  # newest first: id, status, score (float32)
    assert u32(history[:2]) == 2 and u32(history[5:7]) == 1 and history[7] == 2
    assert f32(history[8:10]) == pytest.approx(250 / 255, abs=1e-6)
    assert f32(read(client, m.THRESHOLD, 2)) == pytest.approx(0.5)  # the threshold beside the score
    assert read(client, m.SCORE_SCALE)[0] == 0  # raw: this bundle's manifest has no normalization


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
    assert u32(read(client, m.COUNTERS_AT + 12, 2)) >= 4  # plc_errors counted
    pulse(client, 2)
    assert wait_until(lambda: read(client, m.BUFFERED)[0] == 2)  # the part and the refused one (DROPPED)
    pulse(client, 1)
    pulse(client, 1)
    pulse(client, 0)  # and the service still inspects
    assert wait_until(lambda: u32(read(client, m.INSPECTION_ID, 2)) == 3)
    assert server.health()["status"] == "ready"


def test_a_trigger_from_elsewhere_never_shifts_the_plc_handshake(plc):
    """ctl, the page and GPIO triggers are parts too, but the PLC did not trigger them: its
    handshake must show, for each of its triggers, exactly that part's result."""
    _server, service, client = plc
    frames_status = {}
    for n in range(6):
        if n in (1, 3):
            other = service.trigger("network", "ctl:alice")  # e.g. `lineside ctl trigger`
            wait_until(lambda: service.signals.in_flight == 0)
            if n == 3:
                assert service.trigger("page", "page:10.0.0.9") is not None
                wait_until(lambda: service.signals.in_flight == 0)
            assert other is not None and u32(read(client, m.LAST_TRIGGER_ID, 2)) != other
        inspection = plc_trigger(client)
        assert inspection and inspection not in frames_status
        assert wait_until(lambda: read(client, m.STATUS)[0] & 4)
        assert u32(read(client, m.INSPECTION_ID, 2)) == inspection  # the PLC's own part, every time
        frames_status[inspection] = read(client, m.RESULT_STATUS)[0]
        assert query(client, inspection)["status"] == frames_status[inspection]
        pulse(client, 1)
        assert wait_until(lambda: read(client, m.BUFFERED)[0] == 0)
    assert read(client, m.ERROR_CODE)[0] == 0  # no overrun from parts the PLC never saw
    ids = sorted(frames_status)
    assert len(ids) == 6 and u32(read(client, m.COUNTERS_AT, 2)) == 9  # 6 PLC + 3 other triggers, one counter


def test_a_refused_trigger_is_rejected_fail_safe_and_ready_drops_at_capacity(plc):
    server, _service, client = plc
    with server.model_lock:  # the one part the station takes at a time stays in flight
        first = plc_trigger(client)
        assert wait_until(lambda: read(client, m.STATUS)[0] & 2)  # Busy
        assert not read(client, m.STATUS)[0] & 1  # at capacity: not Ready
        refused = plc_trigger(client)  # the PLC triggers anyway: the part is on the conveyor
        assert refused == first + 1  # it got an id all the same
        assert read(client, m.ERROR_CODE)[0] == ErrorCode.TRIGGER_WHILE_BUSY
        assert wait_until(lambda: read(client, m.STATUS)[0] & 4)
        assert u32(read(client, m.INSPECTION_ID, 2)) == refused
        assert read(client, m.RESULT_STATUS)[0] == 4 and read(client, m.STATUS)[0] & 16  # DROPPED: reject
    pulse(client, 1)
    assert wait_until(lambda: u32(read(client, m.INSPECTION_ID, 2)) == first)
    assert read(client, m.STATUS)[0] & 1  # Ready again
    events = read_events(server.cfg.journal.path, kind="trigger_refused")
    assert [(e["who"], e["inspection"], e["error"]) for e in events] == [("modbus", refused, "TRIGGER_WHILE_BUSY")]


def test_results_by_id_and_a_score_scale_that_is_not_clipped(tmp_path):
    """Every part (a GPIO/ctl one too) can be read by id; scores beyond 6.5535 survive the history."""
    port = free_port()
    bundle = normalized_bundle(tmp_path / "bundle-n", q50=0.1, q99=0.11)  # so 250/255 → 88.0
    cfg = line_station(tmp_path, {"modbus": {"host": "127.0.0.1", "port": port}},
                       recipes=[{"id": 1, "name": "n", "bundle": str(bundle)}])
    server, service = start_line(cfg, lambda: gray(250))
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    try:
        assert client.connect()
        other = service.trigger("network", "ctl:bob")
        assert wait_until(lambda: service.signals.result(other))
        answer = query(client, other)
        assert answer["status"] == 2 and answer["recipe"] == 1 and not answer["late"]
        assert answer["score"] == pytest.approx((250 / 255 - 0.1) / 0.01, rel=1e-4)
        assert answer["threshold"] == pytest.approx((0.5 - 0.1) / 0.01, rel=1e-4)
        assert read(client, m.STATUS)[0] & 4 == 0  # not the PLC's part: not in its handshake
        mine = plc_trigger(client)
        assert wait_until(lambda: read(client, m.STATUS)[0] & 4)
        assert f32(read(client, m.SCORE, 2)) == pytest.approx(88.0, rel=1e-3)
        assert f32(read(client, m.THRESHOLD, 2)) == pytest.approx(40.0, rel=1e-3)
        assert read(client, m.SCORE_SCALE)[0] == 1
        history = read(client, m.HISTORY_AT, 2 * m.HISTORY_STRIDE)
        assert u32(history[:2]) == mine and f32(history[3:5]) == pytest.approx(88.0, rel=1e-3)  # not 6.5535
        assert query(client, 999)["status"] == 0  # unknown: status 0
    finally:
        client.close()
        server.close()


def test_a_recipe_switch_refused_in_the_background_is_journaled_with_who_and_target(tmp_path):
    port = free_port()
    good = make_tiny_bundle(tmp_path / "good")
    bad = make_tiny_bundle(tmp_path / "bad")
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes() + b"tampered")  # fails its sha256
    cfg = line_station(tmp_path, {"modbus": {"host": "127.0.0.1", "port": port}},
                       recipes=[{"id": 1, "name": "good", "bundle": str(good)},
                                {"id": 2, "name": "bad", "bundle": str(bad)}])
    server, _service = start_line(cfg, lambda: gray(20))
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    try:
        assert client.connect()
        assert not client.write_register(m.RECIPE_SELECT, 2).isError()  # well-formed: refused later
        assert wait_until(lambda: read(client, m.ERROR_CODE)[0] == ErrorCode.RECIPE_REJECTED)
        assert read(client, m.ACTIVE_RECIPE)[0] == 1  # the line keeps its recipe
        events = read_events(server.cfg.journal.path, kind="recipe_refused")
        assert [(e["who"], e["to"], e["error"]) for e in events] == [("modbus", 2, "RECIPE_REJECTED")]
    finally:
        client.close()
        server.close()

"""The Modbus allow-list with real pymodbus clients from two loopback addresses."""

import pytest

pytest.importorskip("pymodbus")
from line_helpers import free_port, line_station, wait_until
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException
from security_helpers import audit

from edge_infer.errors import LinesideError
from edge_infer.line import modbus as m


def test_a_client_from_an_address_outside_the_allow_list_is_refused(tmp_path, serve_line):
    port = free_port()
    service = serve_line({"modbus": {"host": "127.0.0.1", "port": port, "allow": ["127.0.0.1/32"]}})
    stranger = ModbusTcpClient("127.0.0.1", port=port, timeout=2, source_address=("127.0.0.2", 0), retries=0)
    try:
        stranger.connect()
        with pytest.raises((ModbusException, ConnectionError)):  # closed before pymodbus reads it
            answer = stranger.write_register(m.CONTROL, 1)  # a Trigger, if it got through
            if answer.isError():
                raise ModbusException(str(answer))
    finally:
        stranger.close()
    plc = ModbusTcpClient("127.0.0.1", port=port, timeout=3, source_address=("127.0.0.1", 0))
    try:
        assert plc.connect()
        assert not plc.read_holding_registers(m.STATUS, count=1).isError()  # the allowed PLC works
    finally:
        plc.close()
    channel = next(c for c in service.channels if isinstance(c, m.ModbusChannel))
    assert channel.server.refused >= 1
    assert service.signals.counters["triggers"] == 0
    refusals = audit(tmp_path / "station.yaml", "--kind", "modbus_refused")
    assert [e["who"] for e in refusals] == ["127.0.0.2@modbus"]  # once a minute per address at most


def test_an_empty_allow_list_admits_any_client_and_a_bad_entry_is_refused_at_load(tmp_path, serve_line):
    port = free_port()
    service = serve_line({"modbus": {"host": "127.0.0.1", "port": port}})
    other = ModbusTcpClient("127.0.0.1", port=port, timeout=3, source_address=("127.0.0.2", 0))
    assert other.connect()
    assert not other.write_register(m.CONTROL, 1).isError()
    assert wait_until(lambda: service.signals.counters["triggers"] == 1)
    other.close()
    with pytest.raises(LinesideError, match="no IP address or network"):
        line_station(tmp_path / "bad", {"modbus": {"allow": ["plc.local"]}})

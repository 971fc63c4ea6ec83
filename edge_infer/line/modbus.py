"""The PLC handshake over Modbus TCP (pymodbus server): holding registers, map in
docs/line-integration.md. Reads come straight from the signal model; writes to the control
word act on rising edges (Trigger, ResultAck, ErrorReset). A bad write answers with a Modbus
exception AND sets the error code; nothing a client sends can stop the service.
"""

from __future__ import annotations

import struct

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.server import ModbusTcpServer

from ..errors import LinesideError
from .channels import LoopThread
from .plc_signals import COUNTERS, ErrorCode, PlcError

# Read-only block
STATUS, ERROR_CODE, INSPECTION_ID, RESULT_STATUS, SCORE = 0, 1, 2, 4, 5
RESULT_RECIPE, ACTIVE_RECIPE, BUFFERED, LAST_TRIGGER_ID, COUNTERS_AT = 7, 8, 9, 10, 12
HISTORY_AT, HISTORY_N = 26, 4
# Writable block
CONTROL, RECIPE_SELECT, ENCODER = 50, 51, 52
SIZE = 54
STATUS_BITS = ("ready", "busy", "result_valid", "ok", "ng", "error", "overrun", "late", "switching")
CONTROL_BITS = ("trigger", "result_ack", "error_reset")


def _u32(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def _f32(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def registers(snapshot: dict, control: int, recipe_select: int, encoder: int) -> list[int]:
    """The whole register image for one snapshot of the signals."""
    regs = [0] * SIZE
    regs[STATUS] = sum(1 << i for i, name in enumerate(STATUS_BITS) if snapshot[name])
    regs[ERROR_CODE] = snapshot["error_code"]
    regs[INSPECTION_ID:INSPECTION_ID + 2] = _u32(snapshot["inspection_id"])
    regs[RESULT_STATUS] = snapshot["status_code"]
    regs[SCORE:SCORE + 2] = _f32(snapshot["score"])
    regs[RESULT_RECIPE] = snapshot["result_recipe_id"]
    regs[ACTIVE_RECIPE] = snapshot["recipe_id"]
    regs[BUFFERED] = snapshot["buffered"]
    regs[LAST_TRIGGER_ID:LAST_TRIGGER_ID + 2] = _u32(snapshot["last_trigger_id"])
    for i, name in enumerate(COUNTERS):
        regs[COUNTERS_AT + 2 * i:COUNTERS_AT + 2 * i + 2] = _u32(snapshot["counters"][name])
    for i, r in enumerate(reversed(snapshot["history"][-HISTORY_N:])):  # newest first
        at = HISTORY_AT + 4 * i
        score = 0 if r.score is None else max(0, min(65535, round(r.score * 10000)))
        regs[at:at + 4] = [*_u32(r.inspection_id), r.status_code, score]
    regs[CONTROL], regs[RECIPE_SELECT] = control, recipe_select
    regs[ENCODER:ENCODER + 2] = _u32(encoder)
    return regs


class LinesideModbusContext(ModbusServerContext):
    """A datastore that is the signal model (every device id sees the same one)."""

    def __init__(self, service):  # pylint: disable=super-init-not-called
        self.service, self.signals = service, service.signals
        self.old_simulator, self.simdevices, self._devices = True, [], {0: None}
        self.control = self.recipe_select = 0
        self.encoder_words = [0, 0]

    def device_ids(self):
        return [0]

    async def async_getValues(self, device_id, func_code, address, count=1):
        if func_code not in (3, 4, 6, 16, 23):  # a write is echoed by reading back
            return self._bad(ExcCodes.ILLEGAL_FUNCTION, f"function {func_code}: use holding registers (3/6/16)")
        if address < 0 or address + count > SIZE:
            return self._bad(ExcCodes.ILLEGAL_ADDRESS, f"read of {count} at {address}: registers are 0..{SIZE - 1}")
        regs = registers(self.signals.snapshot(), self.control, self.recipe_select, self.signals.encoder)
        return regs[address:address + count]

    async def async_setValues(self, device_id, func_code, address, values):
        if func_code not in (6, 16, 23):
            return self._bad(ExcCodes.ILLEGAL_FUNCTION, f"function {func_code}: write holding registers (6/16)")
        if address < CONTROL or address + len(values) > SIZE:
            return self._bad(ExcCodes.ILLEGAL_ADDRESS, f"write of {len(values)} at {address}: only registers "
                             f"{CONTROL}..{SIZE - 1} are writable")
        for offset, value in enumerate(values):
            error = self._write(address + offset, int(value))
            if error is not None:
                return error
        return None

    def _write(self, address: int, value: int):
        if address == CONTROL:
            if value >> len(CONTROL_BITS):
                return self._bad(ExcCodes.ILLEGAL_VALUE, f"control word {value:#x}: only bits 0..2 exist")
            rising = value & ~self.control
            self.control = value
            if rising & 1:
                self.service.trigger("network", "modbus")
            if rising & 2:
                self.signals.acknowledge()
            if rising & 4:
                self.service.acknowledge_alarm("modbus")
        elif address == RECIPE_SELECT:
            self.recipe_select = value
            if value:
                try:
                    self.service.select_recipe(value, "modbus")
                except PlcError:
                    pass  # the error code is set; the write itself was well-formed
        else:  # the encoder words: high, then low
            self.encoder_words[address - ENCODER] = value
            self.signals.encoder = (self.encoder_words[0] << 16) | self.encoder_words[1]
        return None

    def _bad(self, exc: ExcCodes, detail: str) -> ExcCodes:
        code = ErrorCode.BAD_VALUE if exc == ExcCodes.ILLEGAL_VALUE else ErrorCode.BAD_REGISTER
        self.signals.set_error(code, f"modbus: {detail}")
        return exc


class ModbusChannel:
    def __init__(self, service, cfg):
        self.loop = LoopThread("line-modbus")
        self.context = LinesideModbusContext(service)

        async def start():
            server = ModbusTcpServer(self.context, address=(cfg.host, cfg.port))
            await server.serve_forever(background=True)
            return server

        try:
            self.server = self.loop.run(start())
        except Exception as exc:  # noqa: BLE001 (any start failure is reported as the address's)
            self.loop.stop()
            raise LinesideError(f"cannot serve Modbus TCP on {cfg.host}:{cfg.port}: {exc}; pick a free port "
                                "in line.modbus (502 needs root or CAP_NET_BIND_SERVICE)") from None

    def close(self) -> None:
        try:
            self.loop.run(self.server.shutdown(), timeout_s=5)
        finally:
            self.loop.stop()

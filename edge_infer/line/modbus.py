"""The PLC handshake over Modbus TCP (pymodbus server): holding registers, map in
docs/line-integration.md. Reads come straight from the signal model; writes to the control
word act on rising edges (Trigger, ResultAck, ErrorReset). A bad write answers with a Modbus
exception AND sets the error code; nothing a client sends can stop the service.
"""

from __future__ import annotations

import struct

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from ..errors import LinesideError
from .channels import LoopThread
from .modbus_access import AllowListTcpServer
from .plc_signals import COUNTERS, ErrorCode, PlcError

# Read-only block
STATUS, ERROR_CODE, INSPECTION_ID, RESULT_STATUS, SCORE = 0, 1, 2, 4, 5
RESULT_RECIPE, ACTIVE_RECIPE, BUFFERED, LAST_TRIGGER_ID, COUNTERS_AT = 7, 8, 9, 10, 12
HISTORY_AT, HISTORY_N, HISTORY_STRIDE = 26, 4, 5  # id u32, status, score f32
THRESHOLD, SCORE_SCALE = 46, 48
# Writable block
CONTROL, RECIPE_SELECT, ENCODER, QUERY_ID = 50, 51, 52, 54
WRITABLE_END = 56
# Read-only: the result of the inspection id written to QUERY_ID (any trigger source)
QUERY_STATUS, QUERY_SCORE, QUERY_THRESHOLD, QUERY_RECIPE = 56, 57, 59, 61
SIZE = 62
LATE_BIT = 0x100  # in QUERY_STATUS: the verdict came after the reject deadline (rejected fail-safe)
STATUS_BITS = ("ready", "busy", "result_valid", "ok", "ng", "error", "overrun", "late", "switching")
CONTROL_BITS = ("trigger", "result_ack", "error_reset")
FUNCTIONS = (3, 4, 6, 16, 23)  # holding registers (4: the same registers read as input registers)


def _u32(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def _f32(value: float | None) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", 0.0 if value is None else value))
    return [hi, lo]


def registers(snapshot: dict, control: int, recipe_select: int, encoder: int, query_id: int = 0,
              queried=None) -> list[int]:
    """The whole register image for one snapshot of the signals (and the queried result, if any)."""
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
        at = HISTORY_AT + HISTORY_STRIDE * i
        regs[at:at + HISTORY_STRIDE] = [*_u32(r.inspection_id), r.status_code, *_f32(r.score)]
    regs[THRESHOLD:THRESHOLD + 2] = _f32(snapshot["threshold"])
    regs[SCORE_SCALE] = snapshot["score_scale"]
    regs[CONTROL], regs[RECIPE_SELECT] = control, recipe_select
    regs[ENCODER:ENCODER + 2] = _u32(encoder)
    regs[QUERY_ID:QUERY_ID + 2] = _u32(query_id)
    if queried is not None:
        regs[QUERY_STATUS] = queried.status_code | (LATE_BIT if queried.late else 0)
        regs[QUERY_SCORE:QUERY_SCORE + 2] = _f32(queried.score)
        regs[QUERY_THRESHOLD:QUERY_THRESHOLD + 2] = _f32(queried.threshold)
        regs[QUERY_RECIPE] = queried.recipe_id
    return regs


class LinesideRegisters:
    """The register map as a pymodbus SimDevice: the whole address space is one block of
    holding registers, and the device's ``action`` hook (pymodbus' documented way to serve
    computed registers) fills it from the signal model on every read and turns writes into
    handshake actions. Every address is defined so that a bad one reaches the hook, which
    answers the Modbus exception itself AND sets the error code."""

    def __init__(self, service):
        self.service, self.signals = service, service.signals
        self.control = self.recipe_select = self.query_id = 0
        self.encoder_words = [0, 0]
        self.query_words = [0, 0]
        self.device = SimDevice(id=0, simdata=[SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)],
                                action=self.action)

    async def action(self, func_code, start_address, address, count, current_registers, set_values):
        if func_code not in FUNCTIONS:
            return self._bad(ExcCodes.ILLEGAL_FUNCTION, f"function {func_code}: use holding registers (3/6/16/23)")
        if set_values is None:  # a read: compute the image
            if address < 0 or address + count > SIZE:
                return self._bad(ExcCodes.ILLEGAL_ADDRESS, f"read of {count} at {address}: registers are "
                                 f"0..{SIZE - 1}")
            current_registers[start_address:start_address + SIZE] = self.image()
            return None
        if address < CONTROL or address + len(set_values) > WRITABLE_END:
            return self._bad(ExcCodes.ILLEGAL_ADDRESS, f"write of {len(set_values)} at {address}: only "
                             f"registers {CONTROL}..{WRITABLE_END - 1} are writable")
        for offset, value in enumerate(set_values):
            error = self._write(address + offset, int(value))
            if error is not None:
                return error
        return None

    def image(self) -> list[int]:
        queried = self.signals.result(self.query_id) if self.query_id else None
        return registers(self.signals.snapshot(), self.control, self.recipe_select, self.signals.encoder,
                         self.query_id, queried)

    def _write(self, address: int, value: int):
        if address == CONTROL:
            if value >> len(CONTROL_BITS):
                return self._bad(ExcCodes.ILLEGAL_VALUE, f"control word {value:#x}: only bits 0..2 exist")
            rising = value & ~self.control
            self.control = value
            if rising & 1:
                self.service.trigger("network", "modbus", plc=True)
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
                    pass  # the error code is set and journaled; the write itself was well-formed
        elif address in (ENCODER, ENCODER + 1):  # high word, then low
            self.encoder_words[address - ENCODER] = value
            self.signals.encoder = (self.encoder_words[0] << 16) | self.encoder_words[1]
            if self.signals.on_encoder is not None:
                self.signals.on_encoder()
        else:  # QUERY_ID, high word then low
            self.query_words[address - QUERY_ID] = value
            self.query_id = (self.query_words[0] << 16) | self.query_words[1]
        return None

    def _bad(self, exc: ExcCodes, detail: str) -> ExcCodes:
        code = ErrorCode.BAD_VALUE if exc == ExcCodes.ILLEGAL_VALUE else ErrorCode.BAD_REGISTER
        self.signals.set_error(code, f"modbus: {detail}")
        return exc


class ModbusChannel:
    def __init__(self, service, cfg):
        self.loop = LoopThread("line-modbus")
        self.registers = LinesideRegisters(service)

        async def start():
            server = AllowListTcpServer(self.registers.device, cfg.allow, journal=service.journal,
                                        address=(cfg.host, cfg.port))
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

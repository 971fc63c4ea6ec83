"""The signal model a PLC sees, the same over Modbus TCP and OPC UA.

Handshake (one part):

    PLC: Trigger ↑  →  vision: Busy while the part is in flight, a new inspection id
    vision: result fields set, ResultValid = 1        (the oldest unacknowledged result)
    PLC: reads, ResultAck ↑  →  vision: the next buffered result, or ResultValid = 0

Only parts the PLC itself triggered (Modbus, OPC UA) enter the handshake: their results wait
in a small FIFO (``result_buffer``) until acknowledged; when it is full the oldest is
discarded and Overrun is set (sticky until ErrorReset). Parts triggered elsewhere (GPIO, the
operator page, ``lineside ctl``, free-run) never enter it, so they cannot shift the PLC's
handshake by a part; every result, whatever triggered it, is in the history and can be looked
up by its inspection id. A bad request sets ``error_code`` (sticky until ErrorReset) and never
stops the service.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from enum import IntEnum


class ErrorCode(IntEnum):
    NONE = 0
    UNKNOWN_RECIPE = 1
    TRIGGER_WHILE_BUSY = 2
    BAD_REGISTER = 3  # out of range, or a read-only register written
    BAD_VALUE = 4
    RECIPE_REJECTED = 5  # the bundle fails verification or does not load
    RESULT_OVERRUN = 6
    TRIGGER_DISABLED = 7  # the active recipe's trigger mode does not take this trigger
    NOT_READY = 8  # stopping, or switching recipes
    CAMERA_FAILED = 9


class PlcError(Exception):
    def __init__(self, code: ErrorCode, detail: str):
        super().__init__(f"{code.name}: {detail}")
        self.code, self.detail = code, detail


STATUS_CODES = {"OK": 1, "NG": 2, "ERROR": 3, "DROPPED": 4}


@dataclass(frozen=True)
class Result:
    inspection_id: int
    status: str  # OK | NG | ERROR | DROPPED
    score: float | None
    recipe_id: int
    late: bool = False
    verdict_id: int | None = None  # journal row id
    threshold: float | None = None  # on the same scale as ``score`` (the published scale)
    reason: str = ""

    @property
    def status_code(self) -> int:
        return STATUS_CODES[self.status]


COUNTERS = ("triggers", "OK", "NG", "ERROR", "DROPPED", "LATE", "plc_errors")


class PlcSignals:
    """Thread-safe state shared by the Modbus and OPC UA servers and the line service."""

    def __init__(self, buffer_size: int = 8, history: int = 4, capacity: int = 1 << 30, lookup: int = 256):
        self.lock = threading.Lock()
        self.capacity = capacity  # parts in flight at most: Ready drops when they are all taken
        self.by_id: OrderedDict[int, Result] = OrderedDict()  # the last ``lookup`` results, any source
        self.lookup_size = lookup
        self.buffer: deque[Result] = deque()
        self.buffer_size = buffer_size
        self.history: deque[Result] = deque(maxlen=history)  # the last results, acknowledged or not
        self.overrun = False
        self.error_code = ErrorCode.NONE
        self.error_detail = ""
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.ready = False
        self.in_flight = 0
        self.switching = False
        self.recipe_id = 0
        self.last_trigger_id = 0  # the PLC's own latest trigger (Modbus/OPC UA), never another source's
        self.score_scale = 0  # 0 raw, 1 good_quantiles (edge_infer.score_scale), of the active recipe
        self.encoder = 0  # written by the PLC when the encoder source is "plc"
        self.on_encoder = None  # callable(): the PLC wrote a new encoder count
        self.on_error = None  # callable(code, detail): metrics and the journal

    # ---- what the vision side sets ----------------------------------------------------
    def push_result(self, result: Result, handshake: bool = True) -> None:
        """A decided part; ``handshake``: the PLC triggered it and waits for it (ResultValid/Ack)."""
        with self.lock:
            if handshake:
                if len(self.buffer) >= self.buffer_size:
                    self.buffer.popleft()
                    self.overrun = True
                self.buffer.append(result)
            self.history.append(result)
            self.by_id[result.inspection_id] = result
            while len(self.by_id) > self.lookup_size:
                self.by_id.popitem(last=False)
            self.counters[result.status] += 1
        if handshake and self.overrun and self.error_code == ErrorCode.NONE:
            self.set_error(ErrorCode.RESULT_OVERRUN, "the PLC did not acknowledge results fast enough")

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def set_error(self, code: ErrorCode, detail: str) -> None:
        with self.lock:
            self.error_code, self.error_detail = code, detail
            self.counters["plc_errors"] += 1
        if self.on_error:
            self.on_error(code, detail)

    # ---- what the PLC does --------------------------------------------------------------
    def acknowledge(self) -> None:
        with self.lock:
            if self.buffer:
                self.buffer.popleft()

    def reset_error(self) -> None:
        with self.lock:
            self.error_code, self.error_detail, self.overrun = ErrorCode.NONE, "", False

    # ---- reading ------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.switching

    def result(self, inspection_id: int) -> Result | None:
        """The result of one inspection (any trigger source), while it is among the last ``lookup``."""
        with self.lock:
            return self.by_id.get(inspection_id)

    def current(self) -> Result | None:
        with self.lock:
            return self.buffer[0] if self.buffer else None

    def snapshot(self) -> dict:
        with self.lock:
            head = self.buffer[0] if self.buffer else None
            ready = self.ready and not self.switching and self.in_flight < self.capacity
            return {"ready": ready, "busy": self.busy, "result_valid": head is not None,
                    "ok": bool(head and head.status == "OK"), "ng": bool(head and head.status != "OK"),
                    "late": bool(head and head.late), "error": self.error_code != ErrorCode.NONE,
                    "error_code": int(self.error_code), "error_detail": self.error_detail, "overrun": self.overrun,
                    "switching": self.switching, "inspection_id": head.inspection_id if head else 0,
                    "status_code": head.status_code if head else 0, "score": head.score if head and
                    head.score is not None else 0.0, "threshold": head.threshold if head and
                    head.threshold is not None else 0.0, "score_scale": self.score_scale, "result_recipe_id": head.recipe_id if head else 0,
                    "recipe_id": self.recipe_id, "buffered": len(self.buffer), "last_trigger_id": self.last_trigger_id,
                    "counters": dict(self.counters), "history": list(self.history)}

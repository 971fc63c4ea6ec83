"""Structured logs: one JSON object per line, so a log shipper can parse every event.

``log_event`` writes this package's events. ``json_logging`` (what `lineside serve` uses)
makes the whole process keep that promise: records of other libraries' loggers (asyncio,
pymodbus, paho, ...) are wrapped as ``{"event": "log", ...}``, and whatever is written
straight to file descriptor 2 — libpng's ``libpng error: ...`` from inside OpenCV, ONNX
Runtime's and TensorRT's native messages, a print to stderr, a thread's traceback — is read
back through a pipe and logged line by line as ``{"event": "stderr", "line": ...}``. Native
code has no logging hook to give (libpng prints from its default error handler), so fd 2
itself is what must be captured.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("lineside.runtime")

MAX_LINE = 16 * 1024  # longer native lines are cut here, with a note


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    log.log(level, json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str))


class JsonLines(logging.Formatter):
    """This package's events as they are; any other record wrapped as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == log.name and not record.exc_info:
            return record.getMessage()
        entry = {"ts": round(record.created, 3), "event": "log", "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def json_logging(level: int = logging.INFO) -> Callable[[], None]:
    """Make every line this process writes to stderr one JSON object; return the undo.

    The log handler writes to a duplicate of the original stderr; fd 2 becomes a pipe that a
    thread reads and turns into ``stderr`` events. The undo puts fd 2 back and logs what was
    still in the pipe.
    """
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    out = os.fdopen(original, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.raiseExceptions = False  # a failing handler must not print to stderr: that would loop
    pump = threading.Thread(target=_pump, args=(read_end,), name="stderr-to-log", daemon=True)
    pump.start()

    def undo() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # drops the pipe's last write end: the pump reads to EOF and ends
        pump.join(timeout=2)

    return undo


def _pump(read_end: int) -> None:
    pending = b""
    try:
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _stderr_line(line)
            if len(pending) > MAX_LINE:  # a writer that never ends its line still gets logged
                _stderr_line(pending[:MAX_LINE], cut=True)
                pending = pending[MAX_LINE:]
        if pending:
            _stderr_line(pending)
    finally:
        os.close(read_end)


def _stderr_line(raw: bytes, cut: bool = False) -> None:
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    if text.strip():
        log_event("stderr", level=logging.WARNING, line=text, **({"cut": True} if cut else {}))

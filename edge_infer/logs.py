"""Structured logs: one JSON object per line, so a log shipper can parse every event."""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("lineside.runtime")


def log_event(event: str, level: int = logging.INFO, **fields) -> None:
    log.log(level, json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str))

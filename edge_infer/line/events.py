"""The line's own journal rows and metrics, beside the server's.

Table ``line_events`` (the journal's audit log, in the same SQLite file as the verdicts): one
row per change an operator or PLC makes — recipe switches (who, when, from → to), triggers
from the page, alarm acknowledgements, PLC errors. Table ``line_cursors`` remembers how far
an outbound channel (MQTT) has delivered the journal.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from prometheus_client import Counter, Gauge

from ..journal import SCHEMA as JOURNAL_SCHEMA
from ..journal import Journal, connect

# line_events (the audit log) and line_cursors belong to the journal's schema.
SCHEMA = JOURNAL_SCHEMA


class LineJournal:
    def __init__(self, path: str | Path, station: str):
        self.station, self.lock = station, threading.Lock()
        self.db = connect(path)
        self.audit = Journal(path)  # the audit log is written through the journal's own Journal.event

    def event(self, kind: str, who: str, **detail) -> None:
        with self.lock:
            self.audit.event(self.station, kind, who, **detail)

    def events(self, kind: str | None = None) -> list[dict]:
        sql, args = "SELECT at, kind, who, detail FROM line_events WHERE station = ?", [self.station]
        if kind:
            sql, args = sql + " AND kind = ?", args + [kind]
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [{"at": at, "kind": k, "who": who, **json.loads(d)} for at, k, who, d in rows]

    def cursor(self, name: str) -> int | None:
        with self.lock:
            row = self.db.execute("SELECT verdict_id FROM line_cursors WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_cursor(self, name: str, verdict_id: int) -> None:
        with self.lock:
            self.db.execute("INSERT INTO line_cursors (name, verdict_id) VALUES (?, ?) ON CONFLICT(name) "
                            "DO UPDATE SET verdict_id = excluded.verdict_id", (name, verdict_id))

    def verdicts_after(self, verdict_id: int, limit: int = 64) -> list[dict]:
        from ..journal import COLUMNS, _row

        with self.lock:
            rows = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM verdicts WHERE station = ? AND id > ? "
                                   "ORDER BY id LIMIT ?", (self.station, verdict_id, limit)).fetchall()
        return [_row(r) for r in rows]

    def last_verdict_id(self) -> int:
        with self.lock:
            row = self.db.execute("SELECT MAX(id) FROM verdicts WHERE station = ?", (self.station,)).fetchone()
        return row[0] or 0

    def close(self) -> None:
        self.audit.close()
        self.db.close()


class LineMetrics:
    """Prometheus series added to the server's registry (served on its metrics_port)."""

    def __init__(self, registry, station: str):
        s = ["station"]
        self.station = station
        self.triggers = Counter("lineside_triggers", "inspections triggered", s + ["source"], registry=registry)
        self.late = Counter("lineside_late_rejects", "parts rejected fail-safe because the verdict was late",
                            s, registry=registry)
        self.plc_errors = Counter("lineside_plc_errors", "bad PLC/operator requests, by error code",
                                  s + ["code"], registry=registry)
        self.mqtt_backlog = Gauge("lineside_mqtt_backlog", "journaled verdicts not yet acknowledged by the broker",
                                  s, registry=registry)
        self.rejects = Counter("lineside_rejects", "reject pulses fired", s, registry=registry)

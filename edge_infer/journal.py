"""The local journal: every verdict, written (SQLite, WAL) before it is published.

Table ``verdicts`` is a contract other packages read (calibration reads it through
``read_verdicts``); table ``deliveries`` is the alert outbox: one row per NG verdict and
durable alert sink, written in the same transaction as the verdict and marked when the
sink took it, so an alert survives a crash and is delivered at least once. Table
``line_events`` is the audit log: one row per change a person or a machine makes (reload,
threshold, recipe, review, acknowledge, trigger, refusals), with who made it; every package
writes it through ``Journal.event`` and reads it with ``read_events``. Table
``line_cursors`` holds how far each outbound consumer (MQTT, a verdict-store sync) has
delivered ``verdicts``, by id: ``verdicts`` is append-only apart from ``confirmed``, so an id
cursor never misses a row. Table ``inflight`` holds the frames the server has received and not
yet decided: a row goes in when a frame arrives (``Journal.receive``) and leaves in the
transaction that records the frame's verdict, so after a crash the rows left are exactly the
frames that reached the server and got no verdict (``Journal.inflight``); the server gives
each of them an ERROR verdict ("lost in crash") at its next start.

Every connection opens through ``connect``: a new journal is created with
``auto_vacuum=INCREMENTAL`` (SQLite allows it only before the first table), so the retention
job (``edge_infer.retention``) can give deleted rows' pages back to the disk while the line
runs; the WAL is checkpointed every ``WAL_LIMIT_BYTES`` and kept at that size, so it stays a
small, fixed part of the journal's disk budget.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import LinesideError

SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY,
    decided_at REAL NOT NULL,
    station TEXT NOT NULL,
    camera TEXT,
    frame_id INTEGER,
    status TEXT NOT NULL,
    score REAL,
    threshold REAL,
    reason TEXT,
    detail TEXT,
    confirmed INTEGER NULL
);
CREATE INDEX IF NOT EXISTS verdicts_station_time ON verdicts (station, decided_at);
CREATE TABLE IF NOT EXISTS deliveries (
    verdict_id INTEGER NOT NULL REFERENCES verdicts (id),
    sink TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    delivered_at REAL,
    last_error TEXT,
    PRIMARY KEY (verdict_id, sink)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (sink, delivered_at, next_try);
CREATE TABLE IF NOT EXISTS line_events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    station TEXT NOT NULL,
    kind TEXT NOT NULL,
    who TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS line_cursors (name TEXT PRIMARY KEY, verdict_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inflight (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    station TEXT NOT NULL,
    camera TEXT,
    frame_id INTEGER,
    captured_at REAL,
    tags TEXT
);
"""
LOST_IN_CRASH = "lost in crash"
WAL_LIMIT_BYTES = 512 << 10  # checkpoint at about this much WAL, and truncate the WAL back to it
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
COLUMNS = ("id", "decided_at", "station", "camera", "frame_id", "status", "score", "threshold", "reason",
           "detail", "confirmed")


class Journal:
    """One connection to the journal; use one per thread."""

    def __init__(self, path: str | Path, synchronous: str = "normal"):
        self.path = Path(path)
        self.db = connect(self.path, synchronous)

    def receive(self, frames: list[dict]) -> list[int]:
        """Note frames as received, not yet decided (keys received_at, station, camera, frame_id,
        captured_at, tags), in one transaction; return their ``inflight`` ids for ``record``."""
        ids = []
        with self._transaction():
            for f in frames:
                cur = self.db.execute(
                    "INSERT INTO inflight (received_at, station, camera, frame_id, captured_at, tags) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (f["received_at"], f["station"], f.get("camera"), f.get("frame_id"), f.get("captured_at"),
                     json.dumps(f.get("tags") or {}, separators=(",", ":"))))
                ids.append(cur.lastrowid)
        return ids

    def inflight(self, station: str) -> list[dict]:
        """A station's frames received and never decided, oldest first (after a crash: the lost ones)."""
        cur = self.db.execute("SELECT id, received_at, station, camera, frame_id, captured_at, tags FROM inflight "
                              "WHERE station = ? ORDER BY id", (station,))
        keys = ("inflight_id", "received_at", "station", "camera", "frame_id", "captured_at", "tags")
        return [{**dict(zip(keys, r)), "tags": json.loads(r[-1] or "{}")} for r in cur.fetchall()]

    def record(self, rows: list[dict], alert_sinks: tuple[str, ...] = ()) -> list[int]:
        """Insert verdict rows (keys as COLUMNS, detail a dict) in one transaction; return their ids.

        NG rows also get one pending delivery per durable alert sink, in the same transaction; a
        row's ``inflight_id`` (from ``receive``) is deleted in it too, so a frame is either in
        flight or decided, never both nor neither.
        """
        ids = []
        with self._transaction():
            for row in rows:
                if row.get("inflight_id") is not None:
                    self.db.execute("DELETE FROM inflight WHERE id = ?", (row["inflight_id"],))
                cur = self.db.execute(
                    "INSERT INTO verdicts (decided_at, station, camera, frame_id, status, score, threshold, reason,"
                    " detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (row["decided_at"], row["station"], row.get("camera"), row.get("frame_id"), row["status"],
                     row.get("score"), row.get("threshold"), row.get("reason", ""),
                     json.dumps(row.get("detail", {}), separators=(",", ":"))),
                )
                ids.append(cur.lastrowid)
                if row["status"] == "NG":
                    self.db.executemany("INSERT INTO deliveries (verdict_id, sink) VALUES (?, ?)",
                                        [(cur.lastrowid, sink) for sink in alert_sinks])
        return ids

    def pending(self, sink: str, limit: int = 16, now: float | None = None) -> list[dict]:
        """Undelivered alerts for a sink whose retry time has come, oldest first, with their verdicts."""
        now = time.time() if now is None else now
        cur = self.db.execute(
            "SELECT d.attempts, v.* FROM deliveries d JOIN verdicts v ON v.id = d.verdict_id "
            "WHERE d.sink = ? AND d.delivered_at IS NULL AND d.next_try <= ? ORDER BY v.id LIMIT ?",
            (sink, now, limit),
        )
        return [{"attempts": r[0], **_row(r[1:])} for r in cur.fetchall()]

    def mark_delivered(self, verdict_id: int, sink: str, note: str | None = None) -> None:
        with self._transaction():
            self.db.execute("UPDATE deliveries SET delivered_at = ?, attempts = attempts + 1, last_error = ? "
                            "WHERE verdict_id = ? AND sink = ?", (time.time(), note, verdict_id, sink))

    def mark_failed(self, verdict_id: int, sink: str, error: str, retry_at: float) -> None:
        with self._transaction():
            self.db.execute("UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_try = ? "
                            "WHERE verdict_id = ? AND sink = ?", (error[:500], retry_at, verdict_id, sink))

    def event(self, station: str, kind: str, who: str, **detail) -> None:
        """Journal one change (the audit log): what kind, who made it, and its details."""
        with self._transaction():
            self.db.execute("INSERT INTO line_events (at, station, kind, who, detail) VALUES (?, ?, ?, ?, ?)",
                            (time.time(), station, kind, who, json.dumps(detail, default=str)))

    def close(self) -> None:
        self.db.close()

    def _transaction(self):
        return _Tx(self.db)


def connect(path: str | Path, synchronous: str = "normal", timeout: float = 10) -> sqlite3.Connection:
    """A connection to the journal (created with its schema if new), for use by one thread at a time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        if db.execute("PRAGMA page_count").fetchone()[0] == 0:  # a new file: before WAL and the tables, or never
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # (setting it on an existing one takes a write lock)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        db.execute(f"PRAGMA wal_autocheckpoint={max(16, WAL_LIMIT_BYTES // page_size)}")
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        db.executescript(SCHEMA)
    except sqlite3.Error as exc:
        raise LinesideError(f"cannot open the journal {path}: {exc}; check the path and its disk") from None
    return db


class _Tx:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _row(values) -> dict:
    row = dict(zip(COLUMNS, values))
    row["detail"] = json.loads(row["detail"]) if row["detail"] else {}
    return row


def read_verdicts(path: str | Path, station: str | None = None, since: float | None = None,
                  status: str | None = None) -> list[dict]:
    """Journaled verdicts, oldest first, as dicts of the table's columns (``detail`` parsed).

    Reads only (safe while a server writes). ``since`` is unix seconds (decided_at >= since).
    For small reads; ``iter_verdicts`` streams any number of rows in bounded memory.
    """
    return list(iter_verdicts(path, station=station, since=since, status=status))


def iter_verdicts(path: str | Path, station: str | None = None, since: float | None = None,
                  status: str | None = None, reviewed: bool | None = None, newest_first: bool = False,
                  limit: int | None = None, batch: int = 1000) -> Iterator[dict]:
    """Journaled verdicts one by one, fetched ``batch`` rows at a time over one read-only
    connection, so memory stays bounded however long the journal is.

    ``reviewed``: True only verdicts an operator reviewed (``confirmed`` set), False only the
    others. Oldest first unless ``newest_first``; at most ``limit`` rows.
    """
    path = Path(path)
    if not path.is_file():
        raise LinesideError(f"journal {path} does not exist: give the journal.path of the station's config")
    where, args = [], []
    for column, value, op in (("station", station, "="), ("decided_at", since, ">="), ("status", status, "=")):
        if value is not None:
            where.append(f"{column} {op} ?")
            args.append(value)
    if reviewed is not None:
        where.append(f"confirmed IS {'NOT ' if reviewed else ''}NULL")
    sql = f"SELECT {', '.join(COLUMNS)} FROM verdicts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id {'DESC' if newest_first else 'ASC'}"
    if limit is not None:
        sql, args = sql + " LIMIT ?", args + [int(limit)]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        cur = db.execute(sql, args)
        while True:
            rows = cur.fetchmany(batch)
            if not rows:
                return
            yield from (_row(r) for r in rows)
    except sqlite3.Error as exc:
        raise LinesideError(f"cannot read the journal {path}: {exc}") from None
    finally:
        db.close()


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' → seconds (the ``--since`` of the commands that read the journal)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match:
        raise LinesideError(f"cannot read the duration {text!r}: write a number and a unit, e.g. 7d, 12h, 30m")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def read_events(path: str | Path, station: str | None = None, since: float | None = None,
                kind: str | None = None) -> list[dict]:
    """Journaled changes (the audit log), oldest first: at, station, kind, who and the details."""
    path = Path(path)
    if not path.is_file():
        raise LinesideError(f"journal {path} does not exist: give the journal.path of the station's config")
    where, args = [], []
    for column, value, op in (("station", station, "="), ("at", since, ">="), ("kind", kind, "=")):
        if value is not None:
            where.append(f"{column} {op} ?")
            args.append(value)
    sql = "SELECT at, station, kind, who, detail FROM line_events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(sql + " ORDER BY id", args).fetchall()
    except sqlite3.Error as exc:
        raise LinesideError(f"cannot read the journal {path}: {exc}") from None
    finally:
        db.close()
    return [{"at": at, "station": st, "kind": k, "who": who, **json.loads(d or "{}")} for at, st, k, who, d in rows]


def set_confirmed(path: str | Path, verdict_id: int, confirmed: bool | None) -> None:
    """Record the operator's judgement of a verdict: True confirmed, False rejected, None unknown."""
    db = sqlite3.connect(path, timeout=10)
    try:
        with db:
            cur = db.execute("UPDATE verdicts SET confirmed = ? WHERE id = ?",
                             (None if confirmed is None else int(confirmed), verdict_id))
        if cur.rowcount != 1:
            raise LinesideError(f"journal {path} has no verdict {verdict_id}")
    finally:
        db.close()


def review(path: str | Path, verdict_id: int, confirmed: bool | None, who: str, note: str = "") -> dict:
    """An operator's review of one verdict: set ``confirmed`` and journal who did it, in one transaction.

    ``confirmed`` True: the verdict was right; False: overturned; None: back to unreviewed.
    Returns the reviewed verdict row.
    """
    journal = Journal(path)
    try:
        with journal._transaction():
            row = journal.db.execute(f"SELECT {', '.join(COLUMNS)} FROM verdicts WHERE id = ?",
                                     (verdict_id,)).fetchone()
            if row is None:
                raise LinesideError(f"journal {path} has no verdict {verdict_id}: give an id that "
                                    "`lineside watch` or the operator page showed")
            journal.db.execute("UPDATE verdicts SET confirmed = ? WHERE id = ?",
                               (None if confirmed is None else int(confirmed), verdict_id))
            verdict = _row(row)
            journal.db.execute(
                "INSERT INTO line_events (at, station, kind, who, detail) VALUES (?, ?, ?, ?, ?)",
                (time.time(), verdict["station"], "review", who,
                 json.dumps({"verdict_id": verdict_id, "status": verdict["status"], "confirmed": confirmed,
                             "note": note})))
        verdict["confirmed"] = None if confirmed is None else int(confirmed)
        return verdict
    finally:
        journal.close()

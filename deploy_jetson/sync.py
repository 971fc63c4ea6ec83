"""`lineside sync --to postgresql://…`: ship a device's journal rows to the plant's verdict store.

Verdicts and line events (reviews, recipe switches, the whole audit log) go in batches: a
batch is read from the journal by id (``id > cursor ORDER BY id LIMIT batch``, so memory is
bounded by the batch), COPYed into a temporary table and inserted with ``ON CONFLICT DO
NOTHING`` in one PostgreSQL transaction. Only after that commit does the journal's cursor
move to the batch's last id. A connection cut mid-batch rolls the batch back and leaves
the cursor where it was; a cut between the commit and the cursor write sends the batch
again, and the conflict clause drops it. So a resumed sync loses nothing and duplicates
nothing. Reviews newly stored also set ``verdicts.confirmed`` in the store, in order.

Cursors: the verdicts cursor lives in the journal's ``line_cursors`` table under
``sync:HOST:PORT/DB`` (the journal's retention keeps rows a cursor has not passed); the
line events cursor in ``sync_event_cursors``, as line_cursors counts verdict ids.
"""

from __future__ import annotations

import json
import math
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge_infer.errors import LinesideError
from edge_infer.journal import COLUMNS

from .verdict_store import connect, describe, is_store_url, migrate

VERDICT_COLUMNS = ("device",) + COLUMNS
EVENT_COLUMNS = ("device", "id", "at", "station", "kind", "who", "detail")


@dataclass
class SyncReport:
    verdicts: int = 0
    events: int = 0
    reviews: int = 0
    batches: int = 0
    seconds: float = 0.0


def cursor_name(url: str) -> str:
    return f"sync:{describe(url)}"


class JournalSide:
    """The device journal: read batches after a cursor, move the cursor (short write transactions)."""

    def __init__(self, path: Path, name: str):
        if not path.is_file():
            raise LinesideError(f"journal {path} does not exist: give the journal.path of the station's config, "
                                "or the station config itself")
        self.path, self.name = path, name
        self.db = sqlite3.connect(path, timeout=10, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS line_cursors (name TEXT PRIMARY KEY, verdict_id INTEGER NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS sync_event_cursors (name TEXT PRIMARY KEY, event_id INTEGER NOT NULL)")

    def cursors(self) -> tuple[int, int]:
        v = self.db.execute("SELECT verdict_id FROM line_cursors WHERE name = ?", (self.name,)).fetchone()
        e = self.db.execute("SELECT event_id FROM sync_event_cursors WHERE name = ?", (self.name,)).fetchone()
        return (v[0] if v else 0), (e[0] if e else 0)

    def verdicts_after(self, after: int, limit: int) -> list[tuple]:
        return self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM verdicts WHERE id > ? ORDER BY id LIMIT ?",
                               (after, limit)).fetchall()

    def events_after(self, after: int, limit: int) -> list[tuple]:
        return self.db.execute("SELECT id, at, station, kind, who, detail FROM line_events WHERE id > ? "
                               "ORDER BY id LIMIT ?", (after, limit)).fetchall()

    def advance(self, table: str, value: int) -> None:
        column = "verdict_id" if table == "line_cursors" else "event_id"
        self.db.execute(f"INSERT INTO {table} (name, {column}) VALUES (?, ?) "
                        f"ON CONFLICT (name) DO UPDATE SET {column} = excluded.{column}", (self.name, value))

    def close(self) -> None:
        self.db.close()


def _json(text: str | None) -> str | None:
    """A journal detail as PostgreSQL jsonb accepts it: NaN and Infinity (which json.dumps writes) become null."""
    if text is None or not any(bad in text for bad in ("NaN", "Infinity")):
        return text

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    try:
        return json.dumps(clean(json.loads(text)))
    except ValueError:
        return json.dumps({"unparsed": text})


class StoreSide:
    """The verdict store: one transaction per batch, COPY into a temporary table, insert what is new."""

    def __init__(self, conn, device: str):
        self.conn, self.device = conn, device
        with conn.transaction():
            for table in ("verdicts", "line_events"):
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS incoming_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")

    def put_verdicts(self, rows: list[tuple]) -> int:
        cols = ", ".join(VERDICT_COLUMNS)
        detail = COLUMNS.index("detail")
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(f"COPY incoming_verdicts ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row((self.device, *row[:detail], _json(row[detail]), *row[detail + 1:]))
            cur.execute(f"INSERT INTO verdicts ({cols}) SELECT {cols} FROM incoming_verdicts "
                        "ON CONFLICT (device, station, id) DO NOTHING")
            return cur.rowcount

    def put_events(self, rows: list[tuple]) -> tuple[int, int]:
        """Store new events; apply the new reviews to verdicts.confirmed in id order. (stored, reviews)"""
        cols = ", ".join(EVENT_COLUMNS)
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(f"COPY incoming_line_events ({cols}) FROM STDIN") as copy:
                for ident, at, station, kind, who, detail in rows:
                    copy.write_row((self.device, ident, at, station, kind, who, _json(detail)))
            cur.execute(f"WITH stored AS (INSERT INTO line_events ({cols}) SELECT {cols} FROM incoming_line_events "
                        "ON CONFLICT (device, station, id) DO NOTHING RETURNING id, station, kind, detail) "
                        "SELECT id, kind, station, detail->>'verdict_id', detail->'confirmed' FROM stored")
            stored = sorted(cur.fetchall())
            reviews = [(_confirmed(confirmed), self.device, station, int(verdict))
                       for _, kind, station, verdict, confirmed in stored if kind == "review" and verdict]
            if reviews:
                cur.executemany("UPDATE verdicts SET confirmed = %s WHERE device = %s AND station = %s AND id = %s",
                                reviews)
            return len(stored), len(reviews)


def _confirmed(value) -> int | None:
    return None if value is None else int(bool(value))


def sync(journal: str | Path, url: str, device: str | None = None, batch: int = 5000, progress=None) -> SyncReport:
    """Ship every journal row past the cursors to the store; return what was sent.

    Raises LinesideError if the store goes away midway; what was committed stays committed and
    the next sync resumes after it.
    """
    import psycopg

    if not is_store_url(url):
        raise LinesideError(f"--to {url!r} is not a PostgreSQL URL: write postgresql://USER@HOST[:PORT]/DB")
    if batch < 1:
        raise LinesideError("--batch must be at least 1")
    device = device or socket.gethostname()
    side = JournalSide(Path(journal), cursor_name(url))
    report, start = SyncReport(), time.monotonic()
    conn = connect(url)
    try:
        migrate(conn)
        store = StoreSide(conn, device)
        verdicts_at, events_at = side.cursors()
        while rows := side.verdicts_after(verdicts_at, batch):
            report.verdicts += store.put_verdicts(rows)  # committed
            verdicts_at = rows[-1][0]
            side.advance("line_cursors", verdicts_at)
            report.batches += 1
            if progress:
                progress(f"verdicts up to id {verdicts_at}")
        while rows := side.events_after(events_at, batch):
            stored, reviews = store.put_events(rows)
            report.events += stored
            report.reviews += reviews
            events_at = rows[-1][0]
            side.advance("sync_event_cursors", events_at)
            report.batches += 1
            if progress:
                progress(f"line events up to id {events_at}")
    except psycopg.OperationalError as exc:
        at = side.cursors()
        raise LinesideError(f"lost the verdict store {describe(url)} midway ({str(exc).strip() or type(exc).__name__}); "
                            f"everything up to verdict {at[0]} and event {at[1]} is stored: run `lineside sync` "
                            "again to resume from there") from None
    finally:
        conn.close()
        side.close()
    report.seconds = time.monotonic() - start
    return report


def journal_of(path: str) -> Path:
    """--journal: the journal file itself, or the station config that names it."""
    p = Path(path)
    if p.suffix in (".yaml", ".yml", ".toml"):
        from .configfile import config_journal

        if not p.is_file():
            raise LinesideError(f"{p} does not exist: give the station config or its journal file")
        return config_journal(p)
    return p


def main(args) -> int:
    journal = journal_of(args.journal)
    while True:
        try:
            r = sync(journal, args.to, args.device, args.batch)
            rate = (r.verdicts + r.events) / r.seconds if r.seconds > 0 else 0.0
            print(f"synced {r.verdicts} verdicts and {r.events} line events ({r.reviews} reviews) from {journal} "
                  f"to {describe(args.to)} in {r.seconds:.1f} s ({rate:.0f} rows/s)", flush=True)
        except LinesideError as exc:
            if not args.every:
                raise
            print(f"lineside sync: {exc}; retrying in {args.every:g} s", flush=True)
        if not args.every:
            return 0
        time.sleep(args.every)

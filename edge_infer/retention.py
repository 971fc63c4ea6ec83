"""Journal retention: verdicts deleted by age and by disk budget, the space given back while the line runs.

The station config's ``journal.retain`` (docs/station-config.md) says, the way Frigate's
``record.retain`` does, how long verdicts stay: OK/ERROR/DROPPED ones ``days``, NG and reviewed
ones (``confirmed`` set) ``ng_days``, and how much disk the journal file and its WAL may take
(``max_mb``). One ``Retention`` thread per station, with its own connection, looks at the
journal's size every second and runs a pass every ``interval_s`` — at once when the journal
reaches EARLY of its budget, or when the server cannot write (``emergency``):

1. age: verdicts older than their class's days go, oldest first;
2. budget: while the rows take more than TRIM_TO of ``max_mb`` less the room the WAL needs (the
   most it took in the last minute, at least twice WAL_LIMIT_BYTES), the oldest OK verdicts go,
   then (if that is not enough) the oldest NG/reviewed ones;
3. reclaim: ``PRAGMA incremental_vacuum`` gives the freed pages back to the disk, VACUUM_PAGES per
   transaction (during a trim too), and a WAL checkpoint (PASSIVE; TRUNCATE while over budget, or
   when busy writers have starved SQLite's own checkpoints past twice WAL_LIMIT_BYTES) shrinks the WAL.

Deletes take ``batch_rows`` verdicts per transaction, so the line's writer never waits long.
The newest verdict is never deleted, so no verdict id is ever handed out twice (SQLite numbers
a new row max(id) + 1): cursors, alert deliveries and a PLC's reads by id stay true.
A verdict is protected while a delivery cursor (``line_cursors``: MQTT, a sync) has not passed
it or one of its alert deliveries is pending. The age rule never deletes a protected verdict;
the budget does only when nothing else is left to delete, and then logs ``retention_forced``
and health reports it. Deliveries go with their verdict. Frames in flight (``inflight``: a few
rows, each owed a verdict) and the audit log (``line_events``: one small row per change) are
never deleted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path

from .errors import LinesideError
from .journal import WAL_LIMIT_BYTES, connect
from .logs import log_event

MIB = 1 << 20
TRIM_TO = 0.6  # a budget pass trims the journal's content to this share of max_mb
MIN_ROWS_SHARE = 0.1  # however large the WAL got, a budget pass leaves rows this share of max_mb
EARLY = 0.7  # a pass starts before its interval once the journal reaches this share of max_mb
EMERGENCY_KEEP = 0.8  # an emergency pass (the disk refused a write) frees at least a fifth of the content
WAL_WINDOW_S = 60.0  # the budget leaves room for the largest WAL seen this long
LOG_EVERY_S = 60.0  # one "retention" log line a minute at most (and one per emergency pass)
EMERGENCY_EVERY_S = 60.0
CHECK_S = 0.1  # how often the thread looks at the journal's size (a stat: cheap)
VACUUM_PAGES = 64  # pages given back per transaction: each moves about as many again through the WAL
CHECKPOINT_BUSY_MS = 1000  # how long a TRUNCATE checkpoint waits for the writers of the moment to finish
CHECKPOINT_TRIES = 40  # ... and how often it tries while the writers' own checkpoints hold it off

OK_ROWS = "status != 'NG' AND confirmed IS NULL"
KEPT_ROWS = "(status = 'NG' OR confirmed IS NOT NULL)"
ANY_ROWS = "1"
UNPROTECTED = ("id <= ? AND NOT EXISTS (SELECT 1 FROM deliveries d "
               "WHERE d.verdict_id = verdicts.id AND d.delivered_at IS NULL)")
NO_CURSOR = 1 << 62


def journal_bytes(path: str | Path) -> int:
    """The journal's size on disk: the database file and its WAL."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += Path(f"{path}{suffix}").stat().st_size
        except FileNotFoundError:
            pass
    return total


class Retention:
    """The retention job of one station's journal: ``start`` its thread, ``close`` it; ``run_pass``
    is one pass (the thread's, or a caller's with its own connection)."""

    def __init__(self, station: str, journal_cfg):
        self.station, self.path, self.retain = station, Path(journal_cfg.path), journal_cfg.retain
        self.budget = int(self.retain.max_mb * MIB) if self.retain.max_mb else None
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.emergency, self.emergency_at = False, -EMERGENCY_EVERY_S
        self.thread: threading.Thread | None = None
        self.reclaimable: bool | None = None  # the journal has auto_vacuum=INCREMENTAL
        self.deleted = {"age": 0, "budget": 0, "forced": 0}
        self.unlogged, self.logged_at = {"age": 0, "budget": 0, "forced": 0}, 0.0
        self.last_pass: dict | None = None
        self.last_error: str | None = None
        self.wal_seen: deque[tuple[float, int]] = deque()  # (monotonic, WAL bytes) over the last WAL_WINDOW_S

    # ---- the thread ---------------------------------------------------------------------
    def start(self) -> Retention:
        self.thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self.thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop between two batches (a stop must not wait on a long pass)."""
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=timeout)

    def request_emergency(self) -> None:
        """The server could not write the journal: free space now (once per EMERGENCY_EVERY_S: when
        deleting a fifth did not help, deleting more would only lose history)."""
        if time.monotonic() - self.emergency_at >= EMERGENCY_EVERY_S:
            self.emergency_at = time.monotonic()
            self.emergency = True
            self.wake.set()

    def _run(self) -> None:
        while True:
            try:
                db = connect(self.path)
                break
            except LinesideError as exc:  # e.g. a disk too full for the WAL index: the line goes on, retry
                self.last_error = str(exc)
                log_event("retention_failed", level=logging.ERROR, station=self.station, error=str(exc))
                if self.stopping.wait(self.retain.interval_s):
                    return
        try:
            self._check_reclaimable(db)
            next_pass = 0.0
            while not self.stopping.is_set():
                self._keep_wal_small(db)
                near_budget = self.budget is not None and journal_bytes(self.path) >= EARLY * self.budget
                if self.emergency or near_budget or time.monotonic() >= next_pass:
                    emergency, self.emergency = self.emergency, False
                    try:
                        self.run_pass(db, emergency=emergency)
                        self.last_error = None
                    except sqlite3.Error as exc:  # disk full, locked: try again at the next pass
                        self.last_error = str(exc)
                        log_event("retention_failed", level=logging.ERROR, station=self.station, error=str(exc),
                                  emergency=emergency)
                    next_pass = time.monotonic() + self.retain.interval_s
                self.wake.wait(CHECK_S)
                self.wake.clear()
        finally:
            db.close()

    def _check_reclaimable(self, db: sqlite3.Connection) -> None:
        self.reclaimable = db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        if not self.reclaimable:
            log_event("journal_not_reclaimable", level=logging.WARNING, station=self.station, path=str(self.path),
                      fix=f"stop the station and run `lineside journal migrate {self.path}` once: until then "
                      "deleted verdicts' space is reused by new ones but the file does not shrink")

    # ---- one pass -----------------------------------------------------------------------
    def run_pass(self, db: sqlite3.Connection, emergency: bool = False, now: float | None = None) -> dict:
        """Delete by age, then by budget, then give the space back; return what was done."""
        if self.reclaimable is None:
            self.reclaimable = db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        now = time.time() if now is None else now
        t0 = time.perf_counter()
        deleted = {"age": 0, "budget": 0, "forced": 0}
        if emergency:  # a WAL that could not be written holds committed pages: move them home, freeing its disk
            self._checkpoint(db, "TRUNCATE")
        for rows, days in ((OK_ROWS, self.retain.days), (KEPT_ROWS, self.retain.ng_days)):
            if days is not None:
                deleted["age"] += self._delete_older(db, rows, now - days * 86400)
        target = self._content_target(db, emergency)
        if target is not None:
            for rows, protect in ((OK_ROWS, True), (KEPT_ROWS, True), (ANY_ROWS, False)):
                n = self._trim(db, rows, protect, target)
                deleted["budget" if protect else "forced"] += n
        self._reclaim(db)
        seconds = time.perf_counter() - t0
        total = sum(deleted.values())
        for key, n in deleted.items():
            self.deleted[key] += n
        self.last_pass = {"at": round(now, 3), "deleted": deleted, "seconds": round(seconds, 3),
                          "rows_per_s": round(total / seconds) if total and seconds > 0 else None,
                          "emergency": emergency, "size_mb": round(journal_bytes(self.path) / MIB, 3)}
        for key, n in deleted.items():
            self.unlogged[key] += n
        if emergency or (any(self.unlogged.values()) and time.monotonic() - self.logged_at >= LOG_EVERY_S):
            log_event("retention", station=self.station, deleted_since_last=self.unlogged, **self.last_pass)
            self.unlogged, self.logged_at = {"age": 0, "budget": 0, "forced": 0}, time.monotonic()
        return self.last_pass

    def _content_target(self, db: sqlite3.Connection, emergency: bool) -> int | None:
        """How many bytes of rows the budget (or an emergency) leaves, None when there is no limit."""
        target = None
        if self.budget is not None:  # the WAL's room comes first; some rows always stay
            target = max(int(MIN_ROWS_SHARE * self.budget), int(TRIM_TO * self.budget) - self.wal_room())
        if emergency:
            keep = int(EMERGENCY_KEEP * _content_bytes(db))
            target = keep if target is None else min(target, keep)
        return target

    def _delete_older(self, db: sqlite3.Connection, rows: str, cutoff: float) -> int:
        # decided_at rises with id (nearly: the index finds the first id at the cutoff), so the
        # candidates are a prefix of the table by id and each batch is a short rowid range scan.
        first_kept = db.execute("SELECT id FROM verdicts WHERE station = ? AND decided_at >= ? "
                                "ORDER BY decided_at LIMIT 1", (self.station, cutoff)).fetchone()
        bound = first_kept[0] if first_kept else NO_CURSOR
        total, after = 0, 0
        while not self.stopping.is_set():
            n, after = self._delete_batch(db, f"{rows} AND id < ? AND decided_at < ? AND {UNPROTECTED}",
                                          (bound, cutoff), after, protect=True)
            if not n:
                return total
            total += n
        return total

    def _trim(self, db: sqlite3.Connection, rows: str, protect: bool, target: int) -> int:
        total, after = 0, 0
        while _content_bytes(db) > target and not self.stopping.is_set():
            where = f"{rows} AND {UNPROTECTED}" if protect else rows
            n, after = self._delete_batch(db, where, (), after, protect=protect)
            if not n:
                break
            total += n
            self._give_back(db)  # as it goes: the file shrinks while the trim runs
            self._keep_wal_small(db)
        return total

    def _delete_batch(self, db: sqlite3.Connection, where: str, args: tuple, after: int,
                      protect: bool) -> tuple[int, int]:
        """Delete up to batch_rows of this station's oldest verdicts matching ``where`` with id >
        ``after``, and their deliveries, in one short transaction; return (deleted, last id)."""
        def select() -> list[int]:
            params = (self.station, after, *args, *((_cursor_floor(db),) if protect else ()), self.retain.batch_rows)
            # NOT INDEXED: walk the rowid from ``after``, never the station index (which would sort).
            # The newest verdict always stays: SQLite numbers a new row max(id) + 1, so deleting it
            # would hand its id out again, and a follower that had read it would skip the new one.
            return [r[0] for r in db.execute(f"SELECT id FROM verdicts NOT INDEXED WHERE station = ? AND id > ? "
                                             f"AND {where} AND id < (SELECT MAX(id) FROM verdicts) "
                                             f"ORDER BY id LIMIT ?", params)]

        if not select():  # a read: take the write lock only when there is something to delete
            return 0, after
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = select()  # again under the lock: cursors and deliveries may have moved
            if ids:
                marks = ",".join("?" * len(ids))
                if not protect:
                    self._report_forced(db, ids, marks)
                db.execute(f"DELETE FROM deliveries WHERE verdict_id IN ({marks})", ids)
                db.execute(f"DELETE FROM verdicts WHERE id IN ({marks})", ids)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(ids), (ids[-1] if ids else after)

    def _report_forced(self, db: sqlite3.Connection, ids: list[int], marks: str) -> None:
        pending = db.execute(f"SELECT COUNT(*) FROM deliveries WHERE delivered_at IS NULL AND verdict_id IN ({marks})",
                             ids).fetchone()[0]
        cursors = dict(db.execute("SELECT name, verdict_id FROM line_cursors WHERE verdict_id < ?", (ids[-1],)))
        log_event("retention_forced", level=logging.WARNING, station=self.station, verdicts=len(ids),
                  first_id=ids[0], last_id=ids[-1], pending_alerts_dropped=pending, cursors_not_past=cursors,
                  budget_mb=self.retain.max_mb,
                  why="the disk budget is full of verdicts not yet delivered: raise journal.retain.max_mb or "
                      "bring the delivery (MQTT broker, alert sink) back")

    def _reclaim(self, db: sqlite3.Connection) -> None:
        """Give freed pages back to the disk, then checkpoint the WAL."""
        self._give_back(db)
        over = self.budget is not None and journal_bytes(self.path) > self.budget
        self._checkpoint(db, "TRUNCATE" if over else "PASSIVE")

    def _give_back(self, db: sqlite3.Connection) -> None:
        """Free pages back to the disk (incremental_vacuum), VACUUM_PAGES per short transaction."""
        if not self.reclaimable:
            return
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        for _ in range(-(-free // VACUUM_PAGES)):
            if self.stopping.is_set():
                break
            # executescript steps the pragma to its end (execute() frees one page per call)
            db.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")

    def _keep_wal_small(self, db: sqlite3.Connection) -> None:
        """Busy writers can starve SQLite's automatic checkpoints (the WAL is reset only when no reader
        uses it): past twice its limit, checkpoint and truncate it. Remember how large it got."""
        wal, now = _wal_bytes(self.path), time.monotonic()
        self.wal_seen.append((now, wal))
        while self.wal_seen[0][0] < now - WAL_WINDOW_S:
            self.wal_seen.popleft()
        if wal > 2 * WAL_LIMIT_BYTES:
            self._checkpoint(db, "TRUNCATE")

    def wal_room(self) -> int:
        """The room the budget keeps for the WAL: twice its limit (where the job truncates it), or the
        most it took lately."""
        return max([2 * WAL_LIMIT_BYTES, *(wal for _, wal in self.wal_seen)])

    def _checkpoint(self, db: sqlite3.Connection, mode: str) -> bool:
        """Checkpoint the WAL; True when it got through. A writer's own automatic checkpoint
        makes ours return busy at once (no busy wait for that lock), so a TRUNCATE tries again."""
        busy = db.execute("PRAGMA busy_timeout").fetchone()[0]
        db.execute(f"PRAGMA busy_timeout={CHECKPOINT_BUSY_MS}")
        try:
            for _ in range(CHECKPOINT_TRIES if mode == "TRUNCATE" else 1):
                if db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0] == 0:
                    return True
                time.sleep(0.005)
            return False
        finally:
            db.execute(f"PRAGMA busy_timeout={busy}")

    # ---- what health and stats show -----------------------------------------------------------
    def report(self) -> dict:
        size = journal_bytes(self.path)
        out = {"path": str(self.path), "size_mb": round(size / MIB, 3), "budget_mb": self.retain.max_mb,
               "percent": None, "days": self.retain.days, "ng_days": self.retain.ng_days,
               "reclaimable": self.reclaimable, "deleted": dict(self.deleted), "last_pass": self.last_pass,
               "warnings": []}
        if self.budget:
            out["percent"] = round(100 * size / self.budget, 1)
            if out["percent"] >= self.retain.warn_percent:
                out["warnings"].append(f"journal at {out['percent']:g}% of its {self.retain.max_mb:g} MiB budget "
                                       "(journal.retain.max_mb): the oldest verdicts are deleted to stay under it")
        if self.deleted["forced"]:
            out["warnings"].append(f"{self.deleted['forced']} verdicts were deleted before every cursor or alert "
                                   "sink had them, to stay under the disk budget: raise journal.retain.max_mb")
        if self.reclaimable is False:
            out["warnings"].append("the journal cannot give space back to the disk: stop the station and run "
                                   f"`lineside journal migrate {self.path}` once")
        if self.last_error:
            out["warnings"].append(f"retention failed: {self.last_error}")
        return out


def _content_bytes(db: sqlite3.Connection) -> int:
    """The bytes the journal's rows take: the database less its free pages."""
    pages, free, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count",
                                                                            "page_size"))
    return (pages - free) * size


def _wal_bytes(path: Path) -> int:
    try:
        return Path(f"{path}-wal").stat().st_size
    except FileNotFoundError:
        return 0


def _cursor_floor(db: sqlite3.Connection) -> int:
    """The last verdict id every delivery cursor has passed (no cursor: all of them)."""
    row = db.execute("SELECT MIN(verdict_id) FROM line_cursors").fetchone()
    return NO_CURSOR if row[0] is None else row[0]


def migrate(path: str | Path) -> dict:
    """Rewrite an existing journal with auto_vacuum=INCREMENTAL (one VACUUM; the station must be stopped)."""
    import shutil

    path = Path(path)
    if not path.is_file():
        raise LinesideError(f"journal {path} does not exist: give the journal.path of the station's config")
    db = connect(path)
    try:
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return {"path": str(path), "migrated": False, "why": "already reclaimable (auto_vacuum=INCREMENTAL)"}
        size = journal_bytes(path)
        free = shutil.disk_usage(path.parent).free
        if free < 2 * size:
            raise LinesideError(f"migrating {path} ({size / MIB:.1f} MiB) needs about {2 * size / MIB:.1f} MiB free "
                                f"beside it, only {free / MIB:.1f} MiB are: free disk space first")
        t0 = time.perf_counter()
        try:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")  # needs the journal to itself
        except sqlite3.OperationalError as exc:
            raise LinesideError(f"cannot migrate {path}: {exc}; stop the station (`lineside serve`) first") from None
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return {"path": str(path), "migrated": True, "seconds": round(time.perf_counter() - t0, 2),
                "size_mb_before": round(size / MIB, 3), "size_mb_after": round(journal_bytes(path) / MIB, 3)}
    finally:
        db.close()


def main(args) -> int:
    """`lineside journal migrate SOURCE`."""
    import json

    from .review_cmd import journal_of

    path, _ = journal_of(args.source)
    print(json.dumps(migrate(path)))
    return 0

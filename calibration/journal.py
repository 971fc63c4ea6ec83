"""Scores from the line's verdict journal (SQLite, written by the runtime), for recalibration.

Table ``verdicts(id, decided_at REAL unix s, station, camera, frame_id, status, score,
threshold, reason, detail JSON, confirmed INTEGER NULL)``. ``confirmed`` is the operator's
review: 1 = the verdict was right, 0 = it was wrong, NULL = not reviewed. So the good
parts are the OK verdicts not overturned plus the NG verdicts overturned (false rejects),
and the defects are the NG verdicts confirmed plus the OK verdicts overturned (escapes).

Read through ``edge_infer.journal.iter_verdicts`` (read-only, safe while serve writes; rows
are streamed, not loaded).
"""

from __future__ import annotations

import time
from pathlib import Path

from edge_infer.errors import LinesideError
from edge_infer.journal import iter_verdicts, parse_duration

from .journal_scores import JournalScores, tally

__all__ = ["JournalScores", "parse_duration", "read_journal", "tally"]


def read_journal(path: str | Path, station: str, since: str = "7d", confirmed_only: bool = False,
                 now: float | None = None) -> JournalScores:
    """Good and defect scores of a station's verdicts over the last ``since``.

    Streams the rows (``iter_verdicts``): memory holds the scores, never the rows, so a journal
    of weeks at 30 fps is read in a few tens of MB. ``path`` may also be the plant's verdict
    store, postgresql://… (calibration/journal_store.py).
    """
    if str(path).startswith(("postgresql://", "postgres://")):
        from .journal_store import read_store

        return read_store(str(path), station, since, confirmed_only, now)
    path = Path(path)
    if not path.is_file():
        raise LinesideError(f"journal {path} does not exist: give the station's journal file (serve writes it)")
    start = (time.time() if now is None else now) - parse_duration(since)
    scores = tally(iter_verdicts(path, station=station, since=start, reviewed=True if confirmed_only else None), start)
    if not scores.rows:
        stations = sorted({str(r["station"]) for r in iter_verdicts(path, since=start)})
        hint = f"it has stations: {', '.join(stations)}" if stations else "it holds no verdicts in that time"
        reviewed = "reviewed " if confirmed_only else ""
        raise LinesideError(f"journal {path} has no {reviewed}scored verdicts for station {station!r} in the last "
                            f"{since} ({hint}): check --station or widen --since"
                            + (", or review verdicts first (`lineside review`)" if confirmed_only else ""))
    return scores

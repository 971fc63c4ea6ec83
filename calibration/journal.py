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
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.journal import iter_verdicts, parse_duration

__all__ = ["JournalScores", "parse_duration", "read_journal", "tally"]


@dataclass
class JournalScores:
    good: np.ndarray
    defects: np.ndarray
    unreviewed_ng: int
    since: float
    rows: int
    thresholds_seen: list[float] = field(default_factory=list)


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


def tally(rows, start: float) -> JournalScores:
    """Sort verdict rows (status, score, confirmed, threshold), streamed, into good and defect scores."""
    good, defects, unreviewed, n, thresholds = array("d"), array("d"), 0, 0, set()
    for row in rows:
        status, score, confirmed = row["status"], row["score"], row["confirmed"]
        if score is None:
            continue
        n += 1
        if row["threshold"] is not None:
            thresholds.add(float(row["threshold"]))
        if status == "OK":
            (defects if confirmed == 0 else good).append(score)
        elif status == "NG" and confirmed == 0:  # a false reject: the part was good
            good.append(score)
        elif status == "NG" and confirmed == 1:
            defects.append(score)
        elif status == "NG":
            unreviewed += 1
    return JournalScores(np.frombuffer(good, dtype=np.float64).copy(), np.frombuffer(defects, dtype=np.float64).copy(),
                         unreviewed, start, n, sorted(thresholds))

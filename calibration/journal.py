"""Scores from the line's verdict journal (SQLite, written by the runtime), for recalibration.

Table ``verdicts(id, decided_at REAL unix s, station, camera, frame_id, status, score,
threshold, reason, detail JSON, confirmed INTEGER NULL)``. ``confirmed`` is the operator's
review: 1 = the verdict was right, 0 = it was wrong, NULL = not reviewed. So the good
parts are the OK verdicts not overturned plus the NG verdicts overturned (false rejects),
and the defects are the NG verdicts confirmed plus the OK verdicts overturned (escapes).

Read through ``edge_infer.journal.read_verdicts`` (read-only, safe while serve writes).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.journal import read_verdicts

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class JournalScores:
    good: np.ndarray
    defects: np.ndarray
    unreviewed_ng: int
    since: float
    rows: int
    thresholds_seen: list[float] = field(default_factory=list)


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match:
        raise LinesideError(f"cannot read the duration {text!r}: write a number and a unit, e.g. 7d, 12h, 30m")
    return float(match.group(1)) * UNITS[match.group(2)]


def read_journal(path: str | Path, station: str, since: str = "7d", confirmed_only: bool = False,
                 now: float | None = None) -> JournalScores:
    """Good and defect scores of a station's verdicts over the last ``since``."""
    path = Path(path)
    if not path.is_file():
        raise LinesideError(f"journal {path} does not exist: give the station's journal file (serve writes it)")
    start = (time.time() if now is None else now) - parse_duration(since)
    rows = [r for r in read_verdicts(path, station=station, since=start) if r["score"] is not None]
    if not rows:
        stations = sorted({str(r["station"]) for r in read_verdicts(path, since=start)})
        hint = f"it has stations: {', '.join(stations)}" if stations else "it holds no verdicts in that time"
        raise LinesideError(f"journal {path} has no scored verdicts for station {station!r} in the last "
                            f"{since} ({hint}): check --station or widen --since")
    good, defects, unreviewed = [], [], 0
    for row in rows:
        status, score, confirmed = row["status"], row["score"], row["confirmed"]
        if confirmed_only and confirmed is None:
            continue
        if status == "OK":
            (defects if confirmed == 0 else good).append(score)
        elif status == "NG" and confirmed == 0:  # a false reject: the part was good
            good.append(score)
        elif status == "NG" and confirmed == 1:
            defects.append(score)
        elif status == "NG":
            unreviewed += 1
    return JournalScores(np.asarray(good, dtype=np.float64), np.asarray(defects, dtype=np.float64), unreviewed,
                         start, len(rows), sorted({float(r["threshold"]) for r in rows if r["threshold"] is not None}))

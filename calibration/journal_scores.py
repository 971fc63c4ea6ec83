"""Verdict rows sorted into the good and defect scores calibration needs, from any journal.

Both sources — a station's SQLite journal (journal.py) and the plant's verdict store
(journal_store.py) — stream their rows through ``tally``, so only scores are held in memory.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np


@dataclass
class JournalScores:
    good: np.ndarray
    defects: np.ndarray
    unreviewed_ng: int
    since: float
    rows: int
    thresholds_seen: list[float] = field(default_factory=list)


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

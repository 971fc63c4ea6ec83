"""Scores from the plant's verdict store (PostgreSQL, filled by `lineside sync`), for recalibration.

The same rows as a station's SQLite journal (table ``verdicts``, plus the device each came
from), read through a server-side cursor in batches, so a station with months of verdicts
on many devices is never held in memory as rows; only the scores are kept.
"""

from __future__ import annotations

import time

from edge_infer.errors import LinesideError
from edge_infer.journal import parse_duration

from .journal_scores import JournalScores, tally

FETCH = 10_000  # rows per round trip of the server-side cursor


def read_store(url: str, station: str, since: str = "7d", confirmed_only: bool = False,
               now: float | None = None) -> JournalScores:
    """Good and defect scores of a station's verdicts, from every device, over the last ``since``."""
    from deploy_jetson.verdict_store import connect, describe

    start = (time.time() if now is None else now) - parse_duration(since)
    conn = connect(url)  # says what to install or fix when it cannot
    import psycopg

    try:
        with conn.transaction(), conn.cursor(name="lineside_calibrate") as cur:
            cur.itersize = FETCH
            reviewed = " AND confirmed IS NOT NULL" if confirmed_only else ""
            cur.execute("SELECT status, score, confirmed, threshold FROM verdicts "
                        f"WHERE station = %s AND decided_at >= %s AND score IS NOT NULL{reviewed} "
                        "ORDER BY device, id", (station, start))
            rows = ({"status": s, "score": score, "confirmed": c, "threshold": t} for s, score, c, t in cur)
            scores = tally(rows, start)
        if scores.rows == 0:
            stations = [s for (s,) in conn.execute("SELECT DISTINCT station FROM verdicts WHERE decided_at >= %s "
                                                   "ORDER BY station", (start,)).fetchall()]
            hint = f"it has stations: {', '.join(stations)}" if stations else "it holds no verdicts in that time"
            raise LinesideError(f"the verdict store {describe(url)} has no scored verdicts for station {station!r} "
                                f"in the last {since} ({hint}): check --station or widen --since")
        return scores
    except LinesideError:
        raise
    except psycopg.Error as exc:  # a store without the schema, a lost connection
        raise LinesideError(f"cannot read the verdict store {describe(url)}: {str(exc).strip()}; run "
                            "`lineside sync --to URL` from a device first, which creates the schema") from None
    finally:
        conn.close()

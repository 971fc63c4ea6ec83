"""Recalibration streams the journal: memory holds scores, never the rows (issue 20, joint 6)."""

import itertools
import time
import tracemalloc

import pytest

from calibration.journal import read_journal
from edge_infer.journal import Journal

ROWS = 30_000


@pytest.fixture(scope="module")
def long_journal(tmp_path_factory):
    path = tmp_path_factory.mktemp("journal") / "journal.sqlite"
    journal, now = Journal(path), time.time()
    detail = {"regions": [], "latency_ms": {"queue": 0.1, "decode": 2.7, "preprocess": 2.1, "compute": 0.8}}
    for start in range(0, ROWS, 5_000):
        journal.record([{"decided_at": now - ROWS + i, "station": "s", "camera": "top", "frame_id": i,
                         "status": "NG" if i % 100 == 0 else "OK", "score": (i % 1000) / 1000, "threshold": 0.99,
                         "detail": detail} for i in range(start, start + 5_000)])
    journal.close()
    return path


def test_iter_verdicts_yields_rows_in_batches_in_order(long_journal):
    from edge_infer.journal import iter_verdicts

    rows = iter_verdicts(long_journal, batch=500)
    first = list(itertools.islice(rows, 3))
    assert [r["frame_id"] for r in first] == [0, 1, 2] and first[0]["detail"]["latency_ms"]["decode"] == 2.7
    rows.close()  # closes its connection
    newest = list(iter_verdicts(long_journal, status="NG", newest_first=True, limit=2))
    assert [r["frame_id"] for r in newest] == [ROWS - 100, ROWS - 200]


def test_read_journal_streams_a_long_journal_in_bounded_memory(long_journal):
    tracemalloc.start()
    try:
        scores = read_journal(long_journal, "s", since="7d")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scores.rows == ROWS and scores.good.size == ROWS - ROWS // 100 and scores.unreviewed_ng == ROWS // 100
    # 30k rows as dicts take about 40 MB; the scores themselves 0.25 MB, a batch of rows ~1.5 MB
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"

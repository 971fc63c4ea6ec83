"""`lineside sync` to a real PostgreSQL (initdb in a temporary folder, loopback) and
`calibrate --from-journal postgresql://…` reading it back.

Two devices' journals are synced; the first sync goes through a TCP proxy that the test
cuts after the second batch is committed, like a network outage. The resumed sync must
leave every row in the store exactly once, reviews applied, and the store's scores must
give the same thresholds as the SQLite journal they came from.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from net_helpers import TcpProxy

from edge_infer.errors import LinesideError
from edge_infer.journal import Journal, review
from tests.deploy.deploy_helpers import lineside

psycopg = pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' (the `fleet` extra)")


def make_journal(path, station: str, n: int, seed: int):
    """n verdicts over the last two days (about 3% NG), some reviewed, a recipe switch and a reload."""
    rng = np.random.default_rng(seed)
    now = time.time()
    journal = Journal(path)
    try:
        rows = []
        for i in range(n):
            ng = rng.random() < 0.03
            score = float(rng.normal(0.8 if ng else 0.3, 0.08))
            rows.append({"decided_at": now - 2 * 86400 + i * (2 * 86400 / n), "station": station, "camera": "cam0",
                         "frame_id": i, "status": "NG" if ng else "OK", "score": score, "threshold": 0.55,
                         "reason": "score" if ng else "", "detail": {"i": i, "nan": float("nan")} if i == 7 else {"i": i}})
            if len(rows) == 1000:
                journal.record(rows)
                rows = []
        journal.record(rows)
        journal.event(station, "recipe", "plc", recipe="B", previous="A")
        journal.event(station, "reload", "alice", bundle="v2")
    finally:
        journal.close()
    import sqlite3

    db = sqlite3.connect(path)
    ng_ids = [i for (i,) in db.execute("SELECT id FROM verdicts WHERE status = 'NG' ORDER BY id")]
    ok_ids = [i for (i,) in db.execute("SELECT id FROM verdicts WHERE status = 'OK' ORDER BY id LIMIT 5")]
    db.close()
    for k, vid in enumerate(ng_ids):  # the operator reviews every NG: two in five were good parts
        review(path, vid, k % 5 >= 2, "bob")
    review(path, ok_ids[0], False, "bob", note="an escape found at the end of line")
    review(path, ng_ids[0], True, "carol", note="second look: it was a defect after all")  # a later review wins
    return path


def store_rows(url, sql, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def journal_rows(path, sql):
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.slow
def test_sync_two_devices_cut_midway_resume_exactly_once_and_calibrate_from_the_store(postgres, tmp_path):
    from calibration.journal import read_journal
    from deploy_jetson.sync import cursor_name, sync

    url = postgres.url
    a = make_journal(tmp_path / "a.sqlite", "press-1", 6000, seed=1)
    b = make_journal(tmp_path / "b.sqlite", "press-2", 3000, seed=2)

    proxy = TcpProxy(postgres.port)  # the device's way to the store
    via_proxy = url.replace(f":{postgres.port}/", f":{proxy.port}/")
    batches = []

    def outage_after_two(text):
        batches.append(text)
        if len(batches) == 2:
            proxy.drop()  # an outage mid-sync: the open connection is reset

    try:
        with pytest.raises(LinesideError, match="run `lineside sync` again to resume"):
            sync(a, via_proxy, device="jetson-a", batch=1000, progress=outage_after_two)
        (stored,) = store_rows(url, "SELECT count(*) FROM verdicts")[0]
        assert stored == 2000  # two batches committed before the cut, nothing of the third

        resumed = sync(a, via_proxy, device="jetson-a", batch=1000)  # the network is back
        assert resumed.verdicts == 4000 and resumed.events == journal_rows(a, "SELECT count(*) FROM line_events")[0][0]

        # a sync whose cursor write was lost (store committed, journal not) sends rows again: none is doubled
        import sqlite3

        db = sqlite3.connect(a)
        db.execute("UPDATE line_cursors SET verdict_id = 1234 WHERE name = ?", (cursor_name(via_proxy),))
        assert db.total_changes == 1
        db.commit()
        db.close()
        again = sync(a, via_proxy, device="jetson-a", batch=1000)
        assert again.verdicts == 0 and again.batches == 5
    finally:
        proxy.close()
    r = lineside("sync", "--to", url, "--journal", b, "--device", "jetson-b", "--batch", "700")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "synced 3000 verdicts" in r.stdout and "rows/s" in r.stdout

    for device, path in (("jetson-a", a), ("jetson-b", b)):
        want = journal_rows(path, "SELECT id, station, status, score, confirmed FROM verdicts ORDER BY id")
        got = store_rows(url, "SELECT id, station, status, score, confirmed FROM verdicts WHERE device = %s "
                         "ORDER BY id", device)
        assert got == want  # every row exactly once, reviews applied (the later one winning)
        events = journal_rows(path, "SELECT id, kind, who FROM line_events ORDER BY id")
        assert store_rows(url, "SELECT id, kind, who FROM line_events WHERE device = %s ORDER BY id", device) == events
    (detail,) = store_rows(url, "SELECT detail FROM verdicts WHERE device = 'jetson-a' AND frame_id = 7")[0]
    assert detail == {"i": 7, "nan": None}  # NaN, which jsonb refuses, arrives as null

    assert store_rows(url, "SELECT count(*), count(DISTINCT (device, station, id)) FROM verdicts")[0] == (9000, 9000)
    assert store_rows(url, "SELECT max(version) FROM schema_version")[0][0] >= 2

    # the store's scores are the journal's: the same thresholds on the same rows
    for confirmed_only in (False, True):
        js, ps = read_journal(a, "press-1", "7d", confirmed_only), read_journal(url, "press-1", "7d", confirmed_only)
        assert np.array_equal(np.sort(js.good), np.sort(ps.good)) and np.array_equal(np.sort(js.defects),
                                                                                    np.sort(ps.defects))
        assert (js.unreviewed_ng, js.rows, js.thresholds_seen) == (ps.unreviewed_ng, ps.rows, ps.thresholds_seen)
    reports = {}
    for source in (str(a), url):
        out = tmp_path / f"cal-{len(reports)}"
        r = lineside("calibrate", "--from-journal", source, "--station", "press-1", "--since", "7d", "--out", out,
                     "--allow-few", timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        reports[source] = json.loads((out / "station-thresholds.json").read_text())
    sqlite_report, store_report = reports.values()
    chosen = [{k: v for k, v in r["thresholds"].items() if k != "provenance"} for r in (sqlite_report, store_report)]
    assert chosen[0] == chosen[1] and chosen[0]["image"] is not None
    prov = [r["thresholds"]["provenance"] for r in (sqlite_report, store_report)]
    assert prov[0]["journal_rows"] == prov[1]["journal_rows"] == 6000

    with pytest.raises(LinesideError, match="no scored verdicts for station 'press-9'.*press-1, press-2"):
        read_journal(url, "press-9", "7d")

    # the quality engineer's queries in docs/fleet.md run on this store and see its rows
    import re

    from tests.deploy.deploy_helpers import REPO

    queries = re.findall(r"```sql\n(.*?)```", (REPO / "docs" / "fleet.md").read_text(), re.DOTALL)
    assert len(queries) >= 4
    results = [store_rows(url, q) for q in queries]
    assert all(results), "every query in docs/fleet.md returns rows"
    overturns = results[2]
    want = journal_rows(a, "SELECT count(*) FROM verdicts WHERE confirmed = 0")[0][0] + \
        journal_rows(b, "SELECT count(*) FROM verdicts WHERE confirmed = 0")[0][0]
    assert len({(r[0], r[1], r[2]) for r in overturns}) == want


"""Journal retention (station config ``journal.retain``): by age, by disk budget, NG and reviewed
verdicts kept longer, delivery cursors and pending alerts respected, the space given back while
the journal is being written, and health warning before the budget is reached."""

import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest

from edge_infer.errors import LinesideError
from edge_infer.journal import Journal, connect
from edge_infer.retention import MIB, Retention, journal_bytes, migrate
from edge_infer.station import JournalConfig, RetainConfig

SHA = "ab" * 32


def verdict(i: int, status: str, decided_at: float) -> dict:
    """A row as the server journals it (detail as large as the server's)."""
    return {"decided_at": decided_at, "station": "st1", "camera": "cam0", "frame_id": i, "status": status,
            "score": 0.9 if status == "NG" else 0.1, "threshold": 0.5, "reason": "",
            "detail": {"regions": [], "latency_ms": {"queue": 0.1, "decode": 1.2, "preprocess": 0.8, "compute": 2.5,
                                                     "postprocess": 0.1}, "bundle_sha256": SHA,
                       "captured_at": decided_at - 0.01, "tags": {}}}


def journal_cfg(tmp_path, **retain) -> JournalConfig:
    return JournalConfig(path=tmp_path / "journal.sqlite", retain=RetainConfig(**{"interval_s": 0.5, **retain}))


def ids(path, where="1") -> set[int]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute(f"SELECT id FROM verdicts WHERE {where}")}


def test_retain_config_is_validated_with_frigate_like_names():
    retain = RetainConfig(days=7, ng_days=30, max_mb=4)
    assert (retain.days, retain.ng_days, retain.max_mb, retain.warn_percent) == (7, 30, 4, 80)
    with pytest.raises(ValueError, match="ng_days"):
        RetainConfig(days=30, ng_days=7)
    with pytest.raises(ValueError, match="max_mb"):
        JournalConfig(retain={"max_mb": 0.5})
    with pytest.raises(ValueError, match="extra"):
        JournalConfig(retain={"keep_days": 3})


def test_age_rule_keeps_ng_and_reviewed_longer_and_never_touches_protected_rows(tmp_path):
    cfg = journal_cfg(tmp_path, days=1, ng_days=10, max_mb=None)
    journal = Journal(cfg.path)
    now = time.time()
    # 0..99: 20 days old, 100..199: 5 days old, 200..299: fresh; every 10th NG, every 10th+1 reviewed
    rows = [verdict(i, "NG" if i % 10 == 0 else "OK", now - (20 if i < 100 else 5 if i < 200 else 0) * 86400)
            for i in range(300)]
    vids = journal.record(rows, alert_sinks=("webhook",))
    for i in range(1, 300, 10):
        journal.db.execute("UPDATE verdicts SET confirmed = 1 WHERE id = ?", (vids[i],))
    for i in range(0, 300, 10):
        if i != 50:  # verdict 50's alert is still pending
            journal.mark_delivered(vids[i], "webhook")
    journal.db.execute("INSERT INTO line_cursors (name, verdict_id) VALUES ('sync', ?)", (vids[80],))
    retention = Retention("st1", cfg)
    report = retention.run_pass(journal.db, now=now)

    left = {row["frame_id"] for row in _rows(cfg.path)}
    ok_kept = {i for i in range(300) if i % 10 not in (0, 1)}
    kept = {i for i in range(300) if i % 10 in (0, 1)}
    assert {i for i in ok_kept if i < 200} & left == set(range(81, 200)) & ok_kept  # after the cursor: kept
    assert {i for i in ok_kept if i >= 200} <= left  # fresh
    assert {i for i in kept if i >= 100} <= left  # NG/reviewed within ng_days
    assert {i for i in kept if i < 100} & left == {50, 81, 90, 91}  # older went; not a pending alert's, nor past the cursor
    assert report["deleted"]["age"] == 300 - len(left) and report["deleted"]["forced"] == 0
    with sqlite3.connect(cfg.path) as db:  # deliveries went with their verdicts
        assert db.execute("SELECT COUNT(*) FROM deliveries WHERE verdict_id NOT IN (SELECT id FROM verdicts)"
                          ).fetchone()[0] == 0
    journal.close()


def _rows(path):
    from edge_infer.journal import read_verdicts

    return read_verdicts(path)


def test_budget_holds_under_a_fast_writer_keeping_ng_cursor_and_pending_alerts(tmp_path):
    """A writer at about the rate `lineside serve` sustains on this CPU (groups of 32 in one
    transaction, ~1000 verdicts/s) and the retention thread side by side: the journal stays under
    a 3 MiB budget, OK verdicts go first,
    nothing a lagging cursor or a pending alert still needs goes, deliveries go with verdicts."""
    cfg = journal_cfg(tmp_path, days=None, ng_days=None, max_mb=3)
    budget = 3 * MIB
    writer = Journal(cfg.path)
    retention = Retention("st1", cfg).start()
    sizes, cursor, pending = [], 0, set()
    stop = threading.Event()

    def watch_size():
        while not stop.is_set():
            sizes.append(journal_bytes(cfg.path))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_size)
    watcher.start()
    try:
        n = 0
        while n < 20_000:  # about three times the budget
            group = [verdict(n + k, "NG" if (n + k) % 20 == 0 else "OK", time.time()) for k in range(32)]
            vids = writer.record(group, alert_sinks=("webhook",))
            for row, vid in zip(group, vids):
                if row["status"] == "NG":
                    if row["frame_id"] % 100 == 0:
                        pending.add(vid)  # this sink never took it
                    else:
                        writer.mark_delivered(vid, "webhook")
            n += 32
            cursor = max(0, vids[-1] - 500)  # an MQTT channel 500 verdicts behind
            writer.db.execute("INSERT INTO line_cursors (name, verdict_id) VALUES ('mqtt', ?) "
                              "ON CONFLICT(name) DO UPDATE SET verdict_id = excluded.verdict_id", (cursor,))
            time.sleep(0.02)
        deadline = time.monotonic() + 10
        while journal_bytes(cfg.path) > 0.9 * budget and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join()
        retention.close()
    report = retention.report()
    left = ids(cfg.path)
    last = max(left)
    assert report["deleted"]["budget"] > 10_000 and report["deleted"]["forced"] == 0
    assert max(sizes) <= budget, f"journal reached {max(sizes) / MIB:.2f} MiB of a 3 MiB budget"
    assert set(range(cursor + 1, last + 1)) <= left  # the cursor has not passed them: none deleted
    assert pending <= left  # their alerts are pending
    ng_left, ok_left = ids(cfg.path, "status = 'NG'"), ids(cfg.path, "status = 'OK'")
    assert min(ng_left - pending) < min(ok_left)  # NG outlive OK under the budget
    with sqlite3.connect(cfg.path) as db:
        assert db.execute("SELECT COUNT(*) FROM deliveries WHERE verdict_id NOT IN (SELECT id FROM verdicts)"
                          ).fetchone()[0] == 0
        assert db.execute("PRAGMA freelist_count").fetchone()[0] < 300  # the space went back to the disk
    writer.close()


def test_budget_deletes_past_a_stuck_cursor_only_when_forced_and_says_so(tmp_path, caplog):
    cfg = journal_cfg(tmp_path, days=None, ng_days=None, max_mb=2)
    journal = Journal(cfg.path)
    journal.db.execute("INSERT INTO line_cursors (name, verdict_id) VALUES ('mqtt', 0)")  # the broker is away
    for n in range(0, 8000, 100):
        journal.record([verdict(n + k, "OK", time.time()) for k in range(100)])
    retention = Retention("st1", cfg)
    with caplog.at_level("WARNING", logger="lineside.runtime"):
        report = retention.run_pass(journal.db)
    assert report["deleted"]["forced"] > 0 and report["deleted"]["budget"] == 0
    assert journal_bytes(cfg.path) <= 2 * MIB
    assert "retention_forced" in caplog.text and '"mqtt": 0' in caplog.text
    assert any("raise journal.retain.max_mb" in w for w in retention.report()["warnings"])
    journal.close()


def test_a_journal_made_before_retention_is_migrated_once(tmp_path):
    from edge_infer.journal import SCHEMA

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)  # as main made it: WAL, no auto_vacuum
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.close()
    retention = Retention("st1", SimpleNamespace(path=path, retain=RetainConfig()))
    db = connect(path)
    retention.run_pass(db)
    db.close()
    assert retention.reclaimable is False
    assert any("lineside journal migrate" in w for w in retention.report()["warnings"])
    assert migrate(path)["migrated"] is True
    assert migrate(path)["migrated"] is False
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    with pytest.raises(LinesideError, match="does not exist"):
        migrate(tmp_path / "nope.sqlite")


@pytest.mark.parametrize("rule", ["age", "budget"])
def test_a_verdict_id_is_never_handed_out_twice(tmp_path, rule):
    """SQLite gives a new row max(id) + 1: were the newest verdict deleted while older (NG) ones
    stay, the next verdict would get its id again, and every follower that had read up to that
    id (the soak's, MQTT's, a sync's cursor; a PLC reading results by id) would skip the new
    verdict. The soak lost one frame in 651,668 this way: cursor caught up, the newest row an OK
    one, the trim deleting every OK row the cursor had passed."""
    cfg = journal_cfg(tmp_path, days=1, ng_days=30, max_mb=2 if rule == "budget" else None)
    journal = Journal(cfg.path)
    old = time.time() - 2 * 86400  # past `days` for OK rows, within `ng_days` for NG ones
    # alternating, the newest one OK, like the soak's two images; for the budget, NG rows alone
    # over its target, so the trim deletes every OK row the cursor has passed
    rows = [verdict(i, "NG" if i % 2 else "OK", old) for i in range(16001 if rule == "budget" else 11)]
    vids = journal.record(rows)
    journal.db.execute("INSERT INTO line_cursors (name, verdict_id) VALUES ('follower', ?)", (vids[-1],))
    retention = Retention("st1", cfg)
    if rule == "budget":
        retention.wal_room = lambda: 0  # the trim's target from the rows alone
    retention.run_pass(journal.db)
    assert len(ids(cfg.path, "status = 'OK'")) < len(rows) // 2  # the rule did delete OK verdicts
    new = journal.record([verdict(len(rows), "OK", time.time())])[0]
    assert new > vids[-1], f"verdict id {new} handed out again (the newest before it was {vids[-1]})"
    journal.close()

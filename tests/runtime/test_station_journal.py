"""The station config as documented, and the journal's reading contract."""

import re
import time
from pathlib import Path

import pytest

from edge_infer.errors import LinesideError
from edge_infer.journal import Journal, read_verdicts, set_confirmed
from edge_infer.station import load_station

DOC = Path(__file__).resolve().parents[2] / "docs" / "station-config.md"


def test_the_documented_example_config_is_valid(tmp_path, monkeypatch):
    example = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    (tmp_path / "weld-3.yaml").write_text(example)
    monkeypatch.setenv("MES_TOKEN", "t0k3n")  # the example's webhook token comes from the environment
    cfg = load_station(tmp_path / "weld-3.yaml")
    assert cfg.alerts.webhook.headers == {"Authorization": "Bearer t0k3n"}
    assert cfg.station == "weld-3" and cfg.bundle == tmp_path / "bundles" / "weld-3"
    assert cfg.thresholds.image == 0.62 and cfg.alerts.gpio.pin == 12 and cfg.curve is not None
    assert [c.name for c in cfg.cameras] == ["top", "side"]


def test_config_errors_name_every_bad_key(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('station = "bad name"\nbundle = "b"\n[batch]\nmax_frames = 0\n[limits]\nmax_side = 99999\n')
    with pytest.raises(LinesideError) as caught:
        load_station(path)
    message = str(caught.value)
    assert "station:" in message and "batch.max_frames" in message and "limits.max_side" in message
    broken = tmp_path / "broken.yaml"
    broken.write_text("station: [1\n")
    with pytest.raises(LinesideError, match="cannot be parsed"):
        load_station(broken)
    with pytest.raises(LinesideError, match="does not exist"):
        load_station(tmp_path / "none.yaml")


def test_read_verdicts_filters_and_operator_confirmation(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    now = time.time()
    rows = [{"decided_at": now - 100 + i, "station": "a" if i % 2 else "b", "camera": "c", "frame_id": i,
             "status": "NG" if i % 3 == 0 else "OK", "score": i / 10, "threshold": 0.5,
             "detail": {"latency_ms": {"total": 1.0}}} for i in range(9)]
    ids = journal.record(rows, alert_sinks=("webhook",))
    assert len(journal.pending("webhook")) == 3  # one delivery per NG, written with it
    journal.close()
    everything = read_verdicts(path)
    assert [r["frame_id"] for r in everything] == list(range(9)) and everything[0]["detail"]["latency_ms"]
    assert [r["frame_id"] for r in read_verdicts(path, station="a", status="OK")] == [1, 5, 7]
    assert [r["frame_id"] for r in read_verdicts(path, since=now - 93)] == [7, 8]
    set_confirmed(path, ids[3], False)
    assert read_verdicts(path)[3]["confirmed"] == 0 and read_verdicts(path)[4]["confirmed"] is None
    with pytest.raises(LinesideError, match="no verdict"):
        set_confirmed(path, 999, True)
    with pytest.raises(LinesideError, match="does not exist"):
        read_verdicts(tmp_path / "missing.sqlite")


def test_station_config_refuses_an_unknown_backend(tmp_path):
    import pytest

    from edge_infer.errors import LinesideError
    from runtime_helpers import station

    with pytest.raises(LinesideError, match="unknown backend 'tensorrtt'"):
        station(tmp_path, backend="tensorrtt")


def test_review_sets_confirmed_and_journals_who_did_it(tmp_path):
    from edge_infer.journal import Journal, read_events, read_verdicts, review

    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    (vid,) = journal.record([{"decided_at": 1.0, "station": "s1", "status": "NG", "score": 2.0}])
    journal.close()
    assert review(path, vid, False, "op:anna", note="scratch only")["confirmed"] == 0
    assert read_verdicts(path)[0]["confirmed"] == 0
    (event,) = read_events(path, kind="review")
    assert (event["who"], event["station"], event["verdict_id"], event["confirmed"]) == ("op:anna", "s1", vid, False)
    with pytest.raises(LinesideError, match="no verdict 99"):
        review(path, 99, True, "op:anna")

"""Operator review from the product: `lineside review` journals who judged which verdict, and
`calibrate --from-journal --confirmed-only` learns from exactly the reviewed verdicts."""

import getpass
import json
import time

import numpy as np
import yaml
from tiny_bundle import make_tiny_bundle

from edge_infer.journal import Journal, read_events, read_verdicts
from lineside.cli import main


def lineside(capsys, *argv):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_reviews_from_the_cli_feed_confirmed_only_calibration(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "bundle", image_threshold=0.5)
    journal_path = tmp_path / "journal.sqlite"
    config = tmp_path / "press-3.yaml"
    config.write_text(yaml.safe_dump({"station": "press-3", "bundle": "bundle",
                                      "journal": {"path": "journal.sqlite"}}))
    rng, now = np.random.default_rng(1), time.time()
    rows = [{"decided_at": now - 600 + i, "station": "press-3", "camera": "top", "frame_id": i,
             "status": "NG" if s > 0.5 else "OK", "score": float(s), "threshold": 0.5}
            for i, s in enumerate(np.concatenate([rng.uniform(0.1, 0.45, 60), rng.uniform(0.55, 0.95, 12)]))]
    rows.append({"decided_at": now, "station": "other", "camera": "top", "frame_id": 0, "status": "NG",
                 "score": 0.9, "threshold": 0.5})  # another station in the same journal
    journal = Journal(journal_path)
    journal.record(rows)
    journal.close()

    code, out = lineside(capsys, "review", config, "list", "--status", "NG", "--unreviewed", "--json")
    listed = [json.loads(line) for line in out.out.splitlines()]
    assert code == 0 and len(listed) == 12 and {r["station"] for r in listed} == {"press-3"}
    assert [r["id"] for r in listed] == sorted((r["id"] for r in listed), reverse=True)  # newest first
    ng = [r["id"] for r in listed]
    ok = [r["id"] for r in read_verdicts(journal_path, station="press-3", status="OK")]

    assert lineside(capsys, "review", config, "confirm", *ng[:5], "--who", "anna")[0] == 0
    code, out = lineside(capsys, "review", journal_path, "overturn", *ng[5:7], "--who", "anna", "--note", "dust")
    assert code == 0 and out.out.count("overturned by anna") == 2
    assert lineside(capsys, "review", config, "confirm", *ok[:20])[0] == 0  # who: the OS user
    assert lineside(capsys, "review", config, "overturn", ok[20])[0] == 0  # an escape
    assert lineside(capsys, "review", config, "confirm", ok[21])[0] == 0
    assert lineside(capsys, "review", config, "clear", ok[21], "--who", "anna")[0] == 0  # taken back

    code, out = lineside(capsys, "review", config, "list", "--unreviewed", "--limit", "100")
    assert code == 0 and len(out.out.splitlines()) == 1 + 72 - 28  # header + the verdicts left to review
    code, out = lineside(capsys, "review", config, "confirm", 99999)
    assert code == 2 and "no verdict 99999" in out.err

    reviews = read_events(journal_path, kind="review")
    assert len(reviews) == 30
    assert {e["who"] for e in reviews} == {"anna", getpass.getuser()}
    assert [e["note"] for e in reviews if e["verdict_id"] in ng[5:7]] == ["dust", "dust"]
    by_id = {r["id"]: r["confirmed"] for r in read_verdicts(journal_path)}
    assert [by_id[i] for i in ng[:7]] == [1] * 5 + [0] * 2 and by_id[ok[20]] == 0 and by_id[ok[21]] is None

    out_dir = tmp_path / "recal"
    code, out = lineside(capsys, "calibrate", bundle, "--station", "press-3", "--from-journal", journal_path,
                       "--since", "1d", "--confirmed-only", "--allow-few", "--out", out_dir)
    assert code == 0, out.err
    report = json.loads((out_dir / "report.json").read_text())
    # good: 20 OK confirmed + 2 NG overturned; defects: 5 NG confirmed + 1 OK overturned
    assert report["journal"] == {"rows": 28, "good": 22, "defects": 6, "unreviewed_ng": 0}

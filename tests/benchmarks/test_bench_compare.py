"""compare flags a real slowdown and leaves noise alone."""

import json

import numpy as np
import pytest

from benchmarks import compare
from benchmarks.machine import describe
from edge_infer.errors import LinesideError


def report(samples_by_key: dict, kind: str = "latency") -> dict:
    results = [{"key": k, "status": "ok", "samples_ms": {"total": list(v)},
                "throughput_ips": 1000 / float(np.mean(v))} for k, v in samples_by_key.items()]
    return {"kind": kind, "machine": describe(), "command": "test", "created": "now", "results": results}


def runs(seed: int, n: int = 300, median: float = 10.0):
    return np.random.default_rng(seed).lognormal(np.log(median), 0.15, n)


def test_twice_as_slow_is_a_regression_and_a_rerun_is_noise():
    base = report({"ort-cpu/fp32/b1": runs(0), "ort-cpu/fp32/b8": runs(1, median=60)})
    cand = report({"ort-cpu/fp32/b1": 2 * runs(2), "ort-cpu/fp32/b8": runs(3, median=60)})
    rows = {r["key"]: r for r in compare.compare(base, cand)}
    assert rows["ort-cpu/fp32/b1"]["verdict"] == compare.REGRESSION
    assert rows["ort-cpu/fp32/b1"]["ratio"] == pytest.approx(2.0, rel=0.1)
    assert rows["ort-cpu/fp32/b8"]["verdict"] == compare.NOISE
    assert rows["ort-cpu/fp32/b8"]["throughput_ratio"] == pytest.approx(1.0, rel=0.1)


def test_twice_as_fast_is_flagged_faster_not_regression():
    rows = compare.compare(report({"k": runs(0)}), report({"k": runs(1) / 2}))
    assert rows[0]["verdict"] == compare.FASTER


def test_judge_needs_the_whole_interval_beyond_the_effect():
    assert compare.judge(1.06, 1.2, 0.05) == compare.REGRESSION
    assert compare.judge(1.04, 1.2, 0.05) == compare.NOISE  # could be 4 %: not worth a flag
    assert compare.judge(0.8, 0.9, 0.05) == compare.FASTER


def test_main_exits_1_on_regression_and_prints_table(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report({"k": runs(0).tolist()})))
    b.write_text(json.dumps(report({"k": (3 * runs(1)).tolist()})))
    args = type("Args", (), {"baseline": str(a), "candidate": str(b), "stat": "p50", "min_effect": 0.05,
                             "level": 0.95})()
    assert compare.main(args) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "1 regression(s)" in out
    args.candidate = str(a)
    assert compare.main(args) == 0


def test_refuses_what_cannot_be_compared(tmp_path):
    with pytest.raises(LinesideError, match="share no measured configuration"):
        compare.compare(report({"a": runs(0)}), report({"b": runs(0)}))
    with pytest.raises(LinesideError, match="e2e"):
        compare.compare(report({"a": runs(0)}), report({"a": runs(0)}, kind="e2e"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LinesideError, match="not JSON"):
        compare.load_report(bad)
    bad.write_text("{}")
    with pytest.raises(LinesideError, match="not a lineside bench report"):
        compare.load_report(bad)

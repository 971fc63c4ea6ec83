"""`lineside bench trigger` (benchmarks/trigger.py): a short run through the real line path."""

import argparse

from line_helpers import make_tiny_bundle

from benchmarks.trigger import measure, register_trigger


def test_bench_trigger_reports_latency_and_never_fires_before_the_deadline(tmp_path):
    parser = argparse.ArgumentParser()
    register_trigger(parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args(["trigger", str(make_tiny_bundle(tmp_path / "b")), "--count", "4", "--warmup", "1",
                              "--interval-ms", "1", "--delay-ms", "40", "--size", "64x48", "--reject-all"])
    report = measure(args)
    assert report["parts"] == 4 and report["statuses"]["NG"] == 4  # noise frames: max brightness > 0.5
    assert report["trigger_to_result_ms"]["count"] == 4
    assert report["trigger_to_reject_ms"]["count"] == 4  # every part fires: judged NG, or LATE fail-safe
    assert report["reject_error_ms"]["min"] >= 0  # the ejector never fires before its deadline
    suggestion = report["suggestion"]  # p99.9 and a delay above it with margin
    assert suggestion["p99.9_ms"] == report["trigger_to_result_ms"]["p99.9"] > 0
    assert suggestion["delay_ms"] >= suggestion["p99.9_ms"] + 5 and suggestion["delay_ms"] % 5 == 0
    assert "--count 1000" in suggestion["note"]  # 4 parts cannot tell a p99.9


def test_the_suggested_delay_covers_p999_with_margin():
    from benchmarks.trigger import suggest_delay

    s = suggest_delay({"p99.9": 40.0, "p50": 10.0, "count": 2000})
    assert (s["margin_ms"], s["delay_ms"], s["note"]) == (30.0, 70.0, "")  # spread 30 > 25 % of 40
    assert suggest_delay({"p99.9": 100.0, "p50": 90.0, "count": 2000})["delay_ms"] == 125.0  # 25 %

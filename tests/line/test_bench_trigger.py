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

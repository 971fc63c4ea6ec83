"""`lineside bench trigger`: trigger-to-output latency and jitter through the real line path.

A real server scores a bundle; the line service (simulated GPIO, real monotonic clock)
takes network triggers one part at a time. For each part it records, on the line's clock:

- trigger → result: the result is in the PLC signals (ResultValid; what Modbus/OPC UA show);
- trigger → reject output: the reject line goes high, due at trigger + ``--delay-ms``; its
  error against that deadline is the output's timing jitter. Parts the bundle judges OK
  fire nothing, so feed defective images or use ``--reject-all`` to measure every part.
  A delay shorter than trigger → result makes every part LATE (rejected fail-safe).

Frames are synthetic (noise at ``--size``) unless ``--images`` gives a folder. The first
``--warmup`` parts are not counted. Numbers depend on the machine and its load: report both.

It ends with a suggested ``reject.delay_ms``: trigger → result p99.9 plus a margin (the
larger of 25 % of it, its spread p99.9 − p50, and 5 ms), rounded up to 5 ms. p99.9 needs
about 1,000 parts to mean anything (``--count 1000``): fewer, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import threading
import time
from pathlib import Path


def register_trigger(bench_sub) -> None:
    """Add `trigger` to the `lineside bench` subcommands (called from benchmarks/cli.py)."""
    from edge_infer.cli import handler

    p = bench_sub.add_parser("trigger", help="trigger-to-output latency and jitter with the simulated GPIO",
                             description=__doc__.split("\n\n")[1])
    _arguments(p)
    p.set_defaults(handler=handler("benchmarks.trigger:main"))


def _arguments(p) -> None:
    p.add_argument("bundle", help="bundle directory (from `lineside export`)")
    p.add_argument("--count", type=int, default=200, help="parts measured (default: 200)")
    p.add_argument("--warmup", type=int, default=10, help="parts not counted first (default: 10)")
    p.add_argument("--interval-ms", type=float, default=20.0, help="pause between parts (default: 20)")
    p.add_argument("--delay-ms", type=float, default=100.0, help="reject delay after the trigger (default: 100)")
    p.add_argument("--size", default="640x480", help="synthetic frame WIDTHxHEIGHT (default: 640x480)")
    p.add_argument("--images", help="folder of images to use as frames instead of synthetic noise")
    p.add_argument("--reject-all", action="store_true", help="treat OK as a reject too, so every part fires")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frames(args):
    import numpy as np

    if args.images:
        from edge_infer.imageio import list_images, read_image

        images = [read_image(p) for p in list_images(Path(args.images))]
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(8)]
    state = {"i": 0}

    def grab():
        state["i"] += 1
        return images[state["i"] % len(images)]

    return grab


def measure(args) -> dict:
    import numpy as np
    import yaml

    from edge_infer.line.hw import Clock, SimGpio
    from edge_infer.line.service import LineService
    from edge_infer.server import Server
    from edge_infer.station import load_station

    from .stats import summarize

    work = Path(tempfile.mkdtemp(prefix="lineside-bench-trigger-"))
    data = {"station": "bench", "bundle": str(Path(args.bundle).resolve()),
            "sockets": {k: f"tcp://127.0.0.1:{_free_port()}" for k in ("frames", "verdicts", "control")},
            "journal": {"path": str(work / "journal.sqlite")},
            "line": {"gpio_backend": "sim", "max_in_flight": 1,
                     "recipes": [{"id": 1, "name": "bench", "bundle": str(Path(args.bundle).resolve())}],
                     "reject": {"delay_ms": args.delay_ms, "pulse_ms": 5}}}
    (work / "station.yaml").write_text(yaml.safe_dump(data))
    cfg = load_station(work / "station.yaml")
    if args.reject_all:
        cfg.line.reject.reject = ["NG", "ERROR", "DROPPED"]
    clock = Clock()
    server = Server(cfg)
    service = LineService(server, grabber=_frames(args), clock=clock, gpio=SimGpio(clock))
    if args.reject_all:
        service.reject.cfg = service.reject.cfg.model_copy(update={"reject": ["OK", "NG", "ERROR", "DROPPED"]})
    results, fired, done = {}, {}, threading.Event()
    push = service.signals.push_result

    def timed_push(result, handshake=True):
        results[result.inspection_id] = (clock.now(), result.status)
        push(result, handshake)
        done.set()

    service.signals.push_result = timed_push
    service.reject.on_fire = lambda p: fired.__setitem__(p.inspection_id, p.fired_at)
    triggered = {}
    server.start()
    try:
        for n in range(args.warmup + args.count):
            done.clear()
            insp = service.hub.trigger("network", "bench", plc=True)
            triggered[insp.id] = insp.t_trigger
            if not done.wait(30):
                raise TimeoutError(f"no result for part {insp.id} within 30 s")
            service.signals.acknowledge()
            time.sleep(args.interval_ms / 1e3 + args.delay_ms / 1e3)
    finally:
        server.close()
    counted = [i for i in sorted(triggered) if i > args.warmup]
    result_ms = [(results[i][0] - triggered[i]) * 1e3 for i in counted if i in results]
    reject_ms = [(fired[i] - triggered[i]) * 1e3 for i in counted if i in fired]
    report = {"bundle": str(args.bundle), "parts": len(counted), "delay_ms": args.delay_ms,
              "statuses": {s: sum(1 for i in counted if results.get(i, (0, "?"))[1] == s)
                           for s in ("OK", "NG", "ERROR", "DROPPED")},
              "late": service.reject.late, "machine": f"{platform.machine()} {os.cpu_count()} cpus",
              "load_average": os.getloadavg()}
    error_ms = [v - args.delay_ms for v in reject_ms]
    for name, values in (("trigger_to_result_ms", result_ms), ("trigger_to_reject_ms", reject_ms),
                         ("reject_error_ms", error_ms)):
        if values:
            stats = summarize(values)
            stats["p99.9"] = float(np.percentile(values, 99.9))
            stats["jitter_p99_minus_p50"] = stats["p99"] - stats["p50"]
            report[name] = {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}
    if result_ms:
        report["suggestion"] = suggest_delay(report["trigger_to_result_ms"])
    return report


def suggest_delay(result_stats: dict) -> dict:
    """The reject delay to configure: trigger → result p99.9 plus a margin, rounded up to 5 ms.

    The margin covers what a short bench run does not see (a busier line, a warmer device,
    the operator page open): the larger of 25 % of p99.9, the spread p99.9 − p50, and 5 ms.
    """
    p999, p50 = result_stats["p99.9"], result_stats["p50"]
    margin = max(0.25 * p999, p999 - p50, 5.0)
    delay = 5.0 * math.ceil((p999 + margin) / 5.0)
    note = ("" if result_stats["count"] >= 1000 else
            f"only {result_stats['count']} parts: p99.9 is the maximum seen; run --count 1000 or more")
    return {"p99.9_ms": round(p999, 3), "margin_ms": round(margin, 3), "delay_ms": delay, "note": note}


def main(args) -> int:
    from .stats import format_row

    report = measure(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"bench trigger: {report['parts']} parts, delay {report['delay_ms']} ms, {report['statuses']}, "
          f"LATE {report['late']}, {report['machine']}, load {tuple(round(x, 1) for x in report['load_average'])}")
    for name in ("trigger_to_result_ms", "trigger_to_reject_ms", "reject_error_ms"):
        if name in report:
            s = report[name]
            print(format_row(name.removesuffix("_ms").replace("trigger_to_", "→ "), s)
                  + f"  p99.9 {s['p99.9']:7.2f}  std {s['std']:.2f}  p99-p50 {s['jitter_p99_minus_p50']:.2f}")
    if "suggestion" in report:
        g = report["suggestion"]
        print(f"suggested reject.delay_ms: {g['delay_ms']:g} (trigger → result p99.9 {g['p99.9_ms']:.2f} ms + margin "
              f"{g['margin_ms']:.2f} ms); the part must take at least that long from camera to ejector"
              + (f" — {g['note']}" if g["note"] else ""))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trigger", description=__doc__.split("\n\n")[0])
    _arguments(parser)
    raise SystemExit(main(parser.parse_args()))

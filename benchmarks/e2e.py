"""`lineside bench e2e`: the whole line on this machine. A server for the station, N
synthetic cameras replaying real frames at a resolution, and a subscriber; the report is
capture-to-verdict latency, throughput, what was dropped, the server's CPU and memory, and
how much the pipeline adds to the bare model call (and where that time goes)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError

from .images import load_images
from .stats import summarize

SCORED = ("OK", "NG")
STATUSES = ("OK", "NG", "DROPPED", "ERROR")
SETTLE_S = 10.0  # after the last frame, how long verdicts may still arrive
SWEEP_GROWTH, SWEEP_STEPS = 1.5, 3  # geometric search up, then bisection steps


def main(args) -> int:
    import zmq

    from edge_infer.station import load_station
    from edge_infer.wire import encode_frame

    from . import load, report

    width, height = parse_resolution(args.resolution)
    if args.sweep and args.budget_ms is None:
        raise LinesideError("--sweep needs --budget-ms P99: the p99 capture-to-verdict latency to stay under")
    if args.fps <= 0:
        raise LinesideError(f"--fps must be positive, got {args.fps}")
    station = load_station(args.station_config)
    if args.workers is not None:
        station = station.model_copy(update={"workers": args.workers})
    images = load_images(args.images, 64)
    frames = load.make_frames(images, width, height)
    shm = args.encoding == "shm"  # raw pixels through each camera's /dev/shm ring, the header over the socket
    templates = [encode_frame(f, station.station, "cam", 0, "raw" if shm else args.encoding) for f in frames]
    workdir = load.scratch_dir()
    server = load.ServerProcess(load.bench_station(station, workdir, shm=shm), workdir)
    ctx = zmq.Context()
    try:
        health = server.wait_ready()
        run = Runner(ctx, server, templates, args.cameras, args.warmup, args.duration,
                     shm_slots=args.shm_slots if shm else 0, frames=frames)
        results = sweep(run, args.fps, args.budget_ms) if args.sweep else [run.trial(args.fps)]
        for r in results:
            per_hardware(r, station.workers)
        server_stats = server.stats()
    finally:
        server.stop()
        ctx.term()
    doc = {
        **report.header(args, "e2e", ("station_config",)),
        "station": {"name": station.station, "backend": station.backend, "precision": station.precision,
                    "queue": station.queue.model_dump(), "batch": station.batch.model_dump(),
                    "workers": station.workers, "threads_per_backend": station.threads,
                    "server": health.get("bundle"), "curve": "off for the benchmark" if station.curve else "off",
                    "alerts": "webhook/GPIO/disk off for the benchmark; scratch journal"},
        "frames": {"resolution": [width, height], "encoding": args.encoding, "distinct_frames": len(templates),
                   "shm_slots": args.shm_slots if shm else None,
                   "mean_payload_kib": round(float(np.mean([len(p) for _, p in templates])) / 1024, 1),
                   "images": images.describe()},
        "settings": {"cameras": args.cameras, "fps": args.fps, "warmup_s": args.warmup, "duration_s": args.duration,
                     "sweep": args.sweep, "budget_ms": args.budget_ms},
        "results": results,
        "sweep": sweep_summary(results, args.budget_ms) if args.sweep else None,
        "server_stats_at_end": server_stats,
    }
    paths = report.write(doc, Path(args.out), "e2e")
    print(report.e2e_table(doc))
    print(f"\nwrote {paths['json']} and {paths['png']}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if any(r["status"] == "ok" for r in results) else 1


class Runner:
    """Runs trials against one server; camera frame ids keep rising from trial to trial."""

    def __init__(self, ctx, server, templates, cameras: int, warmup_s: float, duration_s: float,
                 shm_slots: int = 0, frames=None):
        self.ctx, self.server, self.templates = ctx, server, templates
        self.shm_slots, self.frames = shm_slots, frames
        self.names = [f"bench{i}" for i in range(cameras)]
        self.next_ids = {n: 0 for n in self.names}
        self.warmup_s, self.duration_s = warmup_s, duration_s

    def trial(self, fps: float) -> dict:
        from .load import Camera, Collector

        collector = Collector(self.ctx, self.server.cfg.sockets.verdicts, self.server.cfg.station)
        collector.start()
        collector.connected.wait(5)
        time.sleep(0.3)  # a SUB socket misses what is published before it has joined
        t0 = time.time() + 0.2
        measure_from, measure_to = t0 + self.warmup_s, t0 + self.warmup_s + self.duration_s
        cams = [Camera(self.ctx, self.server.cfg.sockets.frames, self.templates, name, fps,
                       t0 + i / (fps * len(self.names)), measure_to, self.next_ids[name], offset=i,
                       shm_slots=self.shm_slots, frames=self.frames)
                for i, name in enumerate(self.names)]
        for cam in cams:
            cam.start()
        for cam in cams:
            cam.join()
            self.next_ids[cam.name] = cam.next_id
        measured = {(c.name, fid): cap for c in cams for fid, cap in c.sent.items() if measure_from <= cap < measure_to}
        deadline = time.time() + SETTLE_S
        while time.time() < deadline and not all(k in collector.verdicts for k in measured):
            time.sleep(0.05)
        collector.stopping.set()
        collector.join()
        result = analyse(fps, len(cams), measured, collector.verdicts, sum(c.unsent for c in cams),
                         self.server.usage(measure_from, measure_to), self.duration_s)
        result["camera_missed_slots"] = sum(c.missed_slots for c in cams)
        writes = [ms for c in cams for ms in c.shm_write_ms]
        if writes and result["status"] == "ok":  # transport's share that is the camera's copy into its ring
            result["overhead_ms"]["where"]["camera_shm_write"] = summarize(writes)["p50"]
        return result


def analyse(fps: float, cameras: int, measured: dict, verdicts: dict, unsent: int, usage: dict,
            duration_s: float) -> dict:
    key = f"{cameras}cam@{fps:g}fps"
    counts = {s: 0 for s in STATUSES}
    e2e, decided, per_stage, transport = [], [], {}, []
    for k, captured_at in measured.items():
        if k not in verdicts:
            continue
        arrived, event = verdicts[k]
        counts[event["status"]] = counts.get(event["status"], 0) + 1
        if event["status"] not in SCORED:
            continue
        e2e.append((arrived - captured_at) * 1e3)
        decided.append((event["decided_at"] - captured_at) * 1e3)
        for stage, ms in event.get("latency_ms", {}).items():
            per_stage.setdefault(stage, []).append(ms)
        if "total" in event.get("latency_ms", {}):
            transport.append(e2e[-1] - event["latency_ms"]["total"])
    base = {"key": key, "cameras": cameras, "fps": fps, "offered_fps": cameras * fps, "frames": len(measured),
            "counts": counts, "missing": len(measured) - sum(counts.values()), "unsent": unsent,
            "server": usage, "duration_s": duration_s}
    if not e2e:
        reasons = {v[1].get("reason") for k, v in verdicts.items() if k in measured and v[1].get("reason")}
        return {**base, "status": "failed", "reason": "no frame was scored (OK/NG) in the measured window"
                + (f": {'; '.join(sorted(reasons))[:300]}" if reasons else "")}
    stages = {s: summarize(v) for s, v in per_stage.items()}
    overhead = float(np.median(e2e)) - stages["compute"]["p50"] if "compute" in stages else None
    return {**base, "status": "ok",
            "latency_ms": summarize(e2e), "decided_ms": summarize(decided),
            "throughput_ips": (counts["OK"] + counts["NG"]) / duration_s,
            "stages_ms": stages,
            "overhead_ms": {"e2e_p50_minus_compute_p50": overhead,
                            "where": {**{s: st["p50"] for s, st in stages.items() if s not in ("total", "compute")},
                                      "transport": float(np.median(transport)) if transport else None}},
            "samples_ms": {"total": [round(v, 4) for v in e2e]}}


def per_hardware(result: dict, workers: int) -> None:
    """Throughput per CPU core the server used (its mean CPU %, /100) and per backend (worker)."""
    if result["status"] != "ok":
        return
    cores = result.get("server", {}).get("cpu_percent_mean", 0) / 100
    result["throughput_per_core_ips"] = round(result["throughput_ips"] / cores, 2) if cores > 0 else None
    result["throughput_per_backend_ips"] = round(result["throughput_ips"] / workers, 2)
    result["workers"] = workers


def passes(result: dict, budget_ms: float) -> bool:
    """Held the rate: every frame offered (the cameras kept pace) and scored (none dropped,
    refused or lost), with p99 within budget."""
    c = result["counts"]
    return (result["status"] == "ok" and result["latency_ms"]["p99"] <= budget_ms and c["DROPPED"] == 0
            and c["ERROR"] == 0 and result["missing"] == 0 and result["unsent"] == 0
            and result.get("camera_missed_slots", 0) == 0)


def sweep(run: Runner, fps: float, budget_ms: float, max_trials: int = 12) -> list[dict]:
    """Grow the per-camera FPS until a trial fails (or shrink it until one holds), then
    bisect between the highest that held and the lowest that failed."""
    results, good, bad = [], None, None
    while len(results) < max_trials:
        held = _sweep_trial(run, fps, budget_ms, results)
        good, bad = (fps, bad) if held else (good, fps)
        if good is not None and bad is not None:
            break
        fps = fps * SWEEP_GROWTH if held else fps / 2
        if fps < 0.1:
            break
    for _ in range(SWEEP_STEPS if good is not None and bad is not None else 0):
        mid = round((good + bad) / 2, 2)
        if _sweep_trial(run, mid, budget_ms, results):
            good = mid
        else:
            bad = mid
    return results


def _sweep_trial(run: Runner, fps: float, budget_ms: float, results: list[dict]) -> bool:
    r = run.trial(fps)
    results.append(r)
    held = passes(r, budget_ms)
    p99 = f"p99 {r['latency_ms']['p99']:.1f} ms" if r["status"] == "ok" else r["reason"]
    print(f"  {r['key']}: {'held' if held else 'failed'} ({p99}, {r['counts']['DROPPED']} dropped)", flush=True)
    return held


def sweep_summary(results: list[dict], budget_ms: float) -> dict:
    held = [r for r in results if passes(r, budget_ms)]
    best = max(held, key=lambda r: r["fps"]) if held else None
    return {"budget_ms": budget_ms, "rule": "p99 ≤ budget; no DROPPED/ERROR/missing/unsent frame; no camera slot skipped",
            "max_fps_per_camera": best["fps"] if best else None,
            "max_total_fps": best["offered_fps"] if best else None,
            "trials": [(r["fps"], passes(r, budget_ms)) for r in results]}


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise LinesideError(f"--resolution {text!r}: give WIDTHxHEIGHT, e.g. 1920x1080") from None
    if not (8 <= width <= 8192 and 8 <= height <= 8192):
        raise LinesideError(f"--resolution {text}: each side must be 8..8192 pixels")
    return width, height

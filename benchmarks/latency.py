"""`lineside bench latency`: every backend × precision × batch this machine can run, timed
stage by stage the way trtexec times an engine: warm-up excluded, real images in rotation,
percentiles of the per-batch latency and the throughput of the measured span."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edge_infer.bundle import Bundle
from edge_infer.decide import decide
from edge_infer.errors import LinesideError
from edge_infer.imageio import decode_image
from edge_infer.preprocess import preprocess_batch

from .images import ImageSet, load_images
from .stats import summarize, throughput
from .targets import BACKENDS, PRECISIONS, Target, Unavailable, open_target

STAGES = ("decode", "preprocess", "h2d", "compute", "d2h", "postprocess")
MIN_ITERATIONS = 10  # a duration-bound run still gets enough samples for percentiles


def main(args) -> int:
    from . import report

    backends = parse_list(args.backend, BACKENDS, "--backend")
    precisions = parse_list(args.precision, PRECISIONS, "--precision")
    batches = parse_batches(args.batch)
    if args.iterations is not None:
        args.duration = None  # a count-bound run; the report's command must not name both
    bundle = Bundle.load(args.bundle)
    images = load_images(args.images, args.max_images)
    results = run_all(bundle, images, backends, precisions, batches, args)
    doc = report.latency_document(args, bundle, images, results)
    paths = report.write(doc, Path(args.out), "latency")
    print(report.latency_table(doc))
    print(f"\nwrote {paths['json']} and {paths['png']}")
    return 0 if any(r["status"] == "ok" for r in results) else 1


def run_all(bundle: Bundle, images: ImageSet, backends, precisions, batches, args) -> list[dict]:
    results = []
    for backend in backends:
        for precision in precisions:
            try:
                target = open_target(bundle, backend, precision, args.threads, args.run,
                                     cuda_graph=getattr(args, "cuda_graph", False))
            except Unavailable as exc:
                results += [skipped(backend, precision, b, str(exc)) for b in batches]
                continue
            try:
                for batch in batches:
                    if batch > target.max_batch:
                        results.append(skipped(backend, precision, batch,
                                               f"batch {batch} exceeds the bundle's max_batch {target.max_batch}"))
                        continue
                    print(f"measuring {backend} {precision} batch {batch} ...", flush=True)
                    results.append(measure(target, bundle, images, batch, args.warmup, args.duration,
                                           args.iterations))
            finally:
                target.close()
    return results


def skipped(backend: str, precision: str, batch: int, reason: str) -> dict:
    return {"key": key(backend, precision, batch), "backend": backend, "precision": precision, "batch": batch,
            "status": "skipped", "reason": reason}


def key(backend: str, precision: str, batch: int) -> str:
    return f"{backend}/{precision}/b{batch}"


def measure(target: Target, bundle: Bundle, images: ImageSet, batch: int, warmup_s: float,
            duration_s: float | None, iterations: int | None) -> dict:
    """Warm up for `warmup_s`, then time iterations until the duration or count is reached."""
    spec, thresholds = bundle.input_spec, bundle.thresholds
    warm_scores, t_end = [], time.perf_counter() + warmup_s
    while time.perf_counter() < t_end or not warm_scores:
        warm_scores += list(one_iteration(target, spec, thresholds, images.take(batch))[1])
    threshold_source = "bundle"
    if thresholds.image is None:
        # Without a threshold decide() stops early; a median threshold makes about half the
        # images NG, so the region search (the costly part of postprocess) is timed too.
        thresholds = thresholds.model_copy(update={"image": float(np.median(warm_scores))})
        threshold_source = "median of warm-up scores (the bundle has no threshold)"

    samples: dict[str, list[float]] = {s: [] for s in ("total", "decode", "preprocess", "compute", "postprocess")}
    count, start = 0, time.perf_counter()
    while not _done(count, time.perf_counter() - start, duration_s, iterations):
        stages, _ = one_iteration(target, spec, thresholds, images.take(batch))
        for name, ms in stages.items():
            samples[name].append(ms)
        count += 1
    wall = time.perf_counter() - start

    stage_stats = {s: (summarize(samples[s]) if s in samples else {"status": target.transfers}) for s in STAGES}
    return {
        "key": key(target.backend, target.precision, batch), "backend": target.backend,
        "precision": target.precision, "batch": batch, "status": "ok",
        "iterations": count, "images": count * batch, "wall_s": round(wall, 3),
        "latency_ms": summarize(samples["total"]),
        "throughput_ips": throughput(count * batch, wall),
        "compute_throughput_ips": throughput(count * batch, sum(samples["compute"]) / 1e3),
        "stages_ms": stage_stats,
        "transfers": target.transfers,
        "threshold": {"image": thresholds.image, "source": threshold_source},
        "backend_info": target.describe(),
        "samples_ms": {k: [round(v, 4) for v in vals] for k, vals in samples.items()},
    }


def one_iteration(target: Target, spec, thresholds, payloads: list[bytes]):
    """Decode, preprocess, compute, decide one batch of frames; stage times in ms for the whole batch.
    With a tiled bundle, compute is every tile of the batch's frames, and their stitching."""
    t0 = time.perf_counter()
    decoded = [decode_image(p) for p in payloads]
    t1 = time.perf_counter()
    batch = preprocess_batch(decoded, spec)  # a tiled bundle: canvases, each cut into its tiles by the target
    t2 = time.perf_counter()
    out = target.run(batch)
    t3 = time.perf_counter()
    for i in range(len(payloads)):
        decide(float(out.score[i]), out.anomaly_map[i], thresholds)
    t4 = time.perf_counter()
    ms = {"total": t4 - t0, "decode": t1 - t0, "preprocess": t2 - t1, "compute": t3 - t2, "postprocess": t4 - t3}
    return {k: v * 1e3 for k, v in ms.items()}, out.score


def _done(count: int, elapsed: float, duration_s: float | None, iterations: int | None) -> bool:
    if iterations is not None:
        return count >= iterations
    return count >= MIN_ITERATIONS and elapsed >= duration_s


def parse_list(text: str, allowed, option: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise LinesideError(f"{option} {text!r}: unknown {', '.join(unknown) or 'empty list'}; "
                            f"choose from {','.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise LinesideError(f"--batch {text!r}: give positive integers separated by commas, e.g. 1,4,8")
    return list(dict.fromkeys(batches))

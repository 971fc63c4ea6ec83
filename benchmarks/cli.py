"""`lineside bench latency | e2e | compare | train-step`. Imports nothing heavy: handlers load on use."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from edge_infer.cli import handler

    bench = sub.add_parser("bench", help="measure latency and throughput, per stage and end to end",
                           description="Latency a buyer can trust: warm-up excluded, real images, percentiles, "
                           "the per-stage split, and the machine and exact command in every report. "
                           "See benchmarks/README.md for how to get stable numbers.")
    cmds = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)
    _latency(cmds, handler)
    _e2e(cmds, handler)
    _compare(cmds, handler)
    _train_step(cmds, handler)
    from .trigger import register_trigger  # the line's trigger-to-reject timing (argparse only)

    register_trigger(cmds)
    from train_host.cli import register_device_check  # argparse only: the check imports torch when it runs

    register_device_check(cmds)


def _latency(cmds, handler) -> None:
    p = cmds.add_parser("latency", help="time a bundle on every backend/precision/batch this machine can run",
                        description="Times decode, preprocess, host→device, compute, device→host and postprocess "
                        "for every combination; combinations that cannot run are listed with the reason.")
    p.add_argument("bundle", help="bundle directory (from `lineside export`)")
    p.add_argument("--backend", default="ort-cpu,ort-cuda,ort-trt,trt,torch",
                   help="comma-separated backends to try (default: all of ort-cpu,ort-cuda,ort-trt,trt,torch)")
    p.add_argument("--precision", default="fp32,fp16,int8", help="comma-separated precisions (default: fp32,fp16,int8)")
    p.add_argument("--batch", default="1,4,8", help="comma-separated batch sizes (default: 1,4,8)")
    p.add_argument("--warmup", type=_seconds, default=1.0, help="warm-up seconds per configuration, "
                   "not measured (default: 1)")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--duration", type=_seconds, default=3.0,
                      help="measured seconds per configuration, at least 10 iterations (default: 3)")
    span.add_argument("--iterations", type=_positive_int, help="measure exactly N iterations instead of a duration")
    p.add_argument("--images", help="folder of images to replay (default: the ELPV solar cells, "
                   "CC BY-NC-SA 4.0, non-commercial)")
    p.add_argument("--max-images", type=_positive_int, default=256, help="images held in rotation (default: 256)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for ONNX Runtime / torch (default: all)")
    p.add_argument("--cuda-graph", action="store_true", help="tensorrt: replay each batch size from a captured "
                   "CUDA graph, as `cuda_graph: true` in a station config does (needs cuda-python)")
    p.add_argument("--run", help="training run folder, for the torch backend")
    p.add_argument("--out", default="bench-latency", help="folder for latency.json and latency.png "
                   "(default: ./bench-latency)")
    p.set_defaults(handler=handler("benchmarks.latency:main"))


def _e2e(cmds, handler) -> None:
    p = cmds.add_parser("e2e", help="capture-to-verdict latency with the server and N synthetic cameras",
                        description="Starts `lineside serve` for the station and N cameras replaying real images "
                        "at the given resolution; reports capture-to-verdict percentiles, throughput, "
                        "DROPPED/ERROR counts, server CPU/RSS and the pipeline overhead over compute.")
    p.add_argument("station_config", help="station config file (YAML/TOML) naming the bundle and backend")
    p.add_argument("--cameras", type=_positive_int, default=1, help="synthetic cameras (default: 1)")
    p.add_argument("--fps", type=float, default=5.0, help="frames per second per camera (default: 5)")
    p.add_argument("--duration", type=_seconds, default=10.0, help="measured seconds (default: 10)")
    p.add_argument("--warmup", type=_seconds, default=2.0, help="seconds of frames not counted (default: 2)")
    p.add_argument("--resolution", default="1920x1080", help="frame size WIDTHxHEIGHT (default: 1920x1080)")
    p.add_argument("--encoding", default="jpeg", choices=["jpeg", "png", "raw", "shm"],
                   help="how the cameras send frames (default: jpeg, encoded once up front); shm: raw pixels "
                   "through each camera's /dev/shm ring, only the header over the socket (the server gets "
                   "`shm: true`)")
    p.add_argument("--shm-slots", type=_positive_int, default=8, help="slots of each camera's ring with "
                   "--encoding shm (default: 8)")
    p.add_argument("--images", help="folder of images to replay (default: ELPV)")
    p.add_argument("--sweep", action="store_true", help="find the highest FPS per camera with p99 under --budget-ms")
    p.add_argument("--budget-ms", type=float, help="p99 capture-to-verdict budget for --sweep")
    p.add_argument("--workers", type=_positive_int, help="override the station's `workers` (scoring threads, "
                   "one backend each); throughput per core and per backend are in every trial")
    p.add_argument("--out", default="bench-e2e", help="folder for e2e.json and e2e.png (default: ./bench-e2e)")
    p.set_defaults(handler=handler("benchmarks.e2e:main"))


def _compare(cmds, handler) -> None:
    p = cmds.add_parser("compare", help="ratios between two benchmark reports, regressions beyond noise flagged",
                        description="Compares configurations present in both reports. A change is flagged only "
                        "when the bootstrap interval of the ratio lies beyond --min-effect; exits 1 on a regression.")
    p.add_argument("baseline", help="the reference report (JSON from `lineside bench latency|e2e`)")
    p.add_argument("candidate", help="the report to judge against it")
    p.add_argument("--stat", default="p50", help="statistic judged: p50, p90, p99 or mean (default: p50)")
    p.add_argument("--min-effect", type=float, default=0.05,
                   help="smallest relative change worth flagging, beyond the bootstrap interval (default: 0.05)")
    p.add_argument("--level", type=float, default=0.95, help="bootstrap confidence level (default: 0.95)")
    p.set_defaults(handler=handler("benchmarks.compare:main"))


def _train_step(cmds, handler) -> None:
    p = cmds.add_parser("train-step", help="time each family's data loading and training steps (CPU), "
                        "optionally against an older source tree",
                        description="Runs a small `lineside train` per family in its own process and times, inside "
                        "fit, the wait for each batch, the work on each batch, and each optimiser step (warm-up "
                        "excluded; percentiles; the machine in the report). With --baseline, the runs alternate "
                        "with the same runs of another source tree (e.g. `git worktree add ../before COMMIT`).")
    p.add_argument("family", nargs="+", help="families to time (rx adtr rddpm cutpaste draem dinov2-lora dinov2-knn, "
                   "or all)")
    p.add_argument("--data", default="elpv", help="training data: elpv (default) or an MVTec-layout category folder")
    p.add_argument("--images", type=_positive_int, default=64,
                   help="training images (--limit of train; validation and test are capped alike; default: 64)")
    p.add_argument("--epochs", type=_positive_int, default=3, help="epochs of the gradient families (default: 3)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="batch size (default: 8)")
    p.add_argument("--size", type=_positive_int, default=64,
                   help="input size in px (ViT families: rounded down to a multiple of 14; default: 64)")
    p.add_argument("--warmup", type=int, default=2, help="first batches and steps of each run not measured "
                   "(default: 2)")
    p.add_argument("--repeats", type=_positive_int, default=2, help="runs per family and tree, alternating "
                   "(default: 2)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: the family's default)")
    p.add_argument("--baseline", help="another lineside source tree to time the same way (PYTHONPATH=TREE)")
    p.add_argument("--timeout", type=_positive_int, default=900, help="seconds per run before it is counted as "
                   "failed (default: 900)")
    p.add_argument("--out", default="bench-train-step", help="folder for train-step.json "
                   "(default: ./bench-train-step)")
    p.set_defaults(handler=handler("benchmarks.train_step:main"))


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be zero or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return value

"""`lineside`: one command line that dispatches to the packages' commands.

Each package registers its commands in its own ``cli`` module, which imports nothing
heavy; the work happens in modules the handlers import when they run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from edge_infer.errors import LinesideError

# In the order of the jobs: build a detector, calibrate, flash, run/watch/measure.
PACKAGES = ("train_host", "calibration", "deploy_jetson", "edge_infer", "benchmarks", "lineside")


def build_parser(packages=PACKAGES, prog: str = "lineside") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train anomaly detectors for a station, compile them for the line-side device, "
        "and give a verdict on every frame.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for package in packages:
        if importlib.util.find_spec(f"{package}.cli") is not None:
            importlib.import_module(f"{package}.cli").register(sub)
    return parser


def main(argv=None, packages=PACKAGES, prog: str = "lineside") -> int:
    args = build_parser(packages, prog).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except LinesideError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: interrupted", file=sys.stderr)
        return 130


def register(sub) -> None:
    from edge_infer.cli import handler

    p = sub.add_parser("demo", help="the whole path on real data: train, evaluate, export, calibrate, score",
                       description="Train `rx` on the ELPV solar-cell dataset (CC BY-NC-SA 4.0, non-commercial; "
                       "pip install elpv-dataset), evaluate it, export a bundle, set a first threshold, score "
                       "the test images through the bundle on the CPU and report accuracy and latency.")
    p.add_argument("--out", default="lineside-demo", help="working folder for the run and the bundle "
                   "(default: ./lineside-demo)")
    p.add_argument("--quick", action="store_true", help="a small subset, for a smoke test in about a minute")
    p.add_argument("--threads", type=int, help="CPU threads for torch and ONNX Runtime (default: all cores)")
    p.set_defaults(handler=handler("lineside.demo:main"))


def _version() -> str:
    from lineside import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())

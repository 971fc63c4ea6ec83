"""The runtime's commands, and the lazy-handler helper every package's CLI uses.

Nothing heavy is imported here: each handler imports its module when it runs, so
`lineside --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib


def handler(target: str):
    """'module:function' → a handler that imports the module only when the command runs."""
    module, func = target.split(":")

    def run(args: argparse.Namespace):
        return getattr(importlib.import_module(module), func)(args)

    return run


def register(sub) -> None:
    p = sub.add_parser("score", help="score image files or folders with a bundle and print verdicts",
                       description="Score images with a bundle on this machine's backend; one verdict per image.")
    p.add_argument("bundle", help="bundle directory (from `lineside export`)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    p.add_argument("--backend", default="auto", help="inference backend: auto, tensorrt, ort-trt, ort-cuda or ort-cpu "
                   "(default: auto, the best one available here)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="which model variant of the bundle to run (default: fp32)")
    p.add_argument("--threshold", type=float, help="override the bundle's image threshold for this run")
    p.add_argument("--batch", type=int, default=1, help="images per backend call (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    p.set_defaults(handler=handler("edge_infer.score_cmd:main"))

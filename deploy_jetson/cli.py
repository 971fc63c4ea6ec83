"""deploy_jetson's commands. argparse only: handlers import tensorrt when they run."""

from __future__ import annotations

from edge_infer.cli import handler


def register(sub) -> None:
    register_engine(sub)


def batch_range(text: str) -> tuple[int, int, int]:
    parts = [int(v) for v in text.split(",")]
    if len(parts) != 3:
        raise ValueError("give MIN,OPT,MAX")
    return tuple(parts)


def register_engine(sub) -> None:
    """`lineside build-engine` (kept apart so it merges beside the bundle/flash commands)."""
    p = sub.add_parser("build-engine", help="build a TensorRT engine for this device from a bundle's ONNX",
                       description="Build BUNDLE/engines/model.PRECISION.engine with the TensorRT Python API, "
                       "strongly typed (precision comes from the ONNX variant), record the TensorRT version and GPU "
                       "beside it, and compare its outputs with onnxruntime's. Run it on the device itself.")
    p.add_argument("bundle", help="bundle directory (from `lineside export`)")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "int8"],
                   help="which ONNX variant of the bundle to build (default: fp16)")
    p.add_argument("--batch", type=batch_range, help="optimization profile MIN,OPT,MAX batch (default: 1,1,max_batch)")
    p.add_argument("--workspace", type=int, default=1024, help="builder workspace limit in MiB (default: 1024)")
    p.add_argument("--timing-cache", default="~/.cache/lineside/tensorrt.timing-cache",
                   help="timing cache file reused across builds (default: ~/.cache/lineside/tensorrt.timing-cache)")
    p.add_argument("--dla-core", type=int, help="build for this DLA core (Jetson), GPU fallback for the rest")
    p.add_argument("--weakly-typed", action="store_true",
                   help="let TensorRT pick layer precisions with the 10.x FP16/INT8 flags (not in TensorRT 11)")
    p.add_argument("--images", help="folder of station images for the check against onnxruntime "
                   "(default: synthetic images, labelled as such)")
    p.add_argument("--check-images", type=int, default=16, help="images in that check (default: 16)")
    p.add_argument("--tolerance", type=float,
                   help="largest relative error vs onnxruntime (default: fp32 1e-2, fp16 5e-2, int8 0.15)")
    p.set_defaults(handler=handler("deploy_jetson.engine:main"))

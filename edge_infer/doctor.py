"""`lineside doctor`: what this machine gives the runtime, in one report.

Which OpenCV is in use (its path, version, and whether it has GStreamer and CUDA, from its
build information) or that the runtime runs on Pillow + NumPy without it; ONNX Runtime's
providers; the TensorRT and cuda-python versions; the CPU and GPU; on a Jetson the model, L4T
release, nvpmodel power mode and jetson_clocks state ("not a Jetson" elsewhere). Nothing
here loads a model or touches the GPU: it is safe on a running line.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .imaging import OPENCV_HINT, opencv, opencv_builds_with


def report() -> dict:
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "numpy": _version("numpy"),
        "opencv": opencv_info(),
        "pillow": _version("pillow"),
        "onnxruntime": onnxruntime_info(),
        "tensorrt": _module_version("tensorrt"),
        "cuda_python": _version("cuda-python"),
        "cpu": cpu_info(),
        "gpu": gpu(),
        "jetson": jetson() or "not a Jetson",
    }


def opencv_info() -> dict:
    cv2 = opencv()
    if cv2 is None:
        return {"installed": False, "note": "images decode with Pillow and resize with NumPy (within 1 grey level "
                f"of OpenCV); cameras, videos and GStreamer need OpenCV: {OPENCV_HINT}"}
    return {"installed": True, "path": str(Path(cv2.__file__).resolve()), "version": cv2.__version__,
            "gstreamer": bool(opencv_builds_with("GStreamer")), "cuda": bool(opencv_builds_with("NVIDIA CUDA"))}


def onnxruntime_info() -> dict | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def cpu_info() -> dict:
    info = cpuinfo()
    return {"model": info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine(),
            "architecture": platform.machine(), "logical_cores": os.cpu_count()}


def gpu() -> dict:
    """NVIDIA GPUs as nvidia-smi reports them; the reason when there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"devices": [], "note": "nvidia-smi not found: no NVIDIA driver here (Jetsons have none; see `jetson`)"}
    fields = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "power.limit", "pstate")
    out = run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if out is None:
        return {"devices": [], "note": "nvidia-smi failed: the driver is not loaded or no GPU is visible"}
    devices = [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]
    return {"devices": devices}


def jetson() -> dict | None:
    """Jetson model, L4T release, nvpmodel power mode and jetson_clocks state; None on anything else."""
    model = (read("/proc/device-tree/model") or "").rstrip("\x00")
    release = read("/etc/nv_tegra_release")
    if "jetson" not in model.lower() and release is None:
        return None
    nvpmodel, clocks = shutil.which("nvpmodel"), shutil.which("jetson_clocks")
    mode = run([nvpmodel, "-q"]) if nvpmodel else None
    shown = run([clocks, "--show"]) if clocks else None
    return {"model": model or None, "l4t": release.splitlines()[0] if release else None,
            "power_mode": " ".join(mode.split()) if mode else "unknown: nvpmodel -q not available",
            "jetson_clocks": shown if shown else ("unknown: `sudo jetson_clocks --show` reads it (needs root)"
                                                  if clocks else "jetson_clocks not installed"),
            "note": "latency holds for this power mode only; `sudo jetson_clocks` pins the clocks"}


def cpuinfo() -> dict:
    """The first processor's fields from /proc/cpuinfo (plus the board-wide ones on ARM)."""
    info: dict[str, str] = {}
    for line in (read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _module_version(module: str) -> str | None:
    """A module's own version: JetPack installs tensorrt from apt, where pip metadata may be missing."""
    try:
        return getattr(__import__(module), "__version__", "unknown version")
    except ImportError:
        return None


def format_report(r: dict) -> str:
    cv = r["opencv"]
    ort = r["onnxruntime"]
    lines = [
        f"python       {r['python']['version']} ({r['python']['executable']})",
        f"numpy        {r['numpy']}",
        "opencv       " + (f"{cv['version']} at {cv['path']} (GStreamer: {'yes' if cv['gstreamer'] else 'no'}, "
                           f"CUDA: {'yes' if cv['cuda'] else 'no'})" if cv["installed"] else f"none: {cv['note']}"),
        f"pillow       {r['pillow'] or 'not installed'}",
        "onnxruntime  " + (f"{ort['version']}, providers: {', '.join(ort['providers'])}" if ort
                           else "not installed: `pip install \"lineside[cpu]\"` (or [gpu])"),
        f"tensorrt     {r['tensorrt'] or 'not installed'}",
        f"cuda-python  {r['cuda_python'] or 'not installed'}",
        f"cpu          {r['cpu']['model']} ({r['cpu']['architecture']}, {r['cpu']['logical_cores']} logical cores)",
        "gpu          " + (", ".join(d["name"] for d in r["gpu"]["devices"]) or r["gpu"].get("note", "none")),
    ]
    j = r["jetson"]
    if isinstance(j, dict):
        lines += [f"jetson       {j['model']} ({j['l4t']})", f"power mode   {j['power_mode']}",
                  f"clocks       {j['jetson_clocks']}"]
    else:
        lines.append(f"jetson       {j}")
    return "\n".join(lines)


def main(args) -> int:
    r = report()
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0

"""What a number was measured on: CPU (model, flags, cores, pinning, load), GPU, Jetson
power mode and the library versions. A latency without this is not worth comparing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from importlib import metadata

from edge_infer.doctor import cpuinfo as _cpuinfo, gpu, jetson, read as _read  # the device's own probes

# Instruction-set flags that change inference speed; the full list is noise in a report.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "asimd", "asimddp", "asimdhp", "sve", "i8mm", "bf16")
LIBRARIES = ("lineside", "numpy", "opencv-python-headless", "opencv-python", "onnxruntime",
             "onnxruntime-gpu", "tensorrt", "cuda-python", "pillow", "torch", "pyzmq", "psutil")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def describe() -> dict:
    return {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu(),
        "memory_gib": memory_gib(),
        "gpu": gpu(),
        "jetson": jetson(),
        "libraries": libraries(),
        "environment": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
    }


def cpu() -> dict:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "model": info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine(),
        "architecture": platform.machine(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        # taskset pinning shows here: the cores this process may run on.
        "affinity": affinity,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def summary(machine: dict) -> str:
    """One line for a table header: CPU model, cores, flags, load, GPU, power mode."""
    c = machine["cpu"]
    parts = [f"CPU: {c['model']} ({c['architecture']}, {c['logical_cores']} logical cores"
             + (f", pinned to {c['affinity']}" if c["affinity"] and len(c["affinity"]) != c["logical_cores"] else "")
             + (f", {' '.join(c['flags'])}" if c["flags"] else "") + ")"]
    if c["load_average"]:
        parts.append(f"load {c['load_average'][0]:.2f}")
    gpus = machine["gpu"].get("devices") or []
    parts.append("GPU: " + (", ".join(g["name"] for g in gpus) if gpus else "none"))
    if machine["jetson"]:
        parts.append(f"power mode: {machine['jetson'].get('power_mode') or 'unknown'}")
    return "  ".join(parts)


def libraries() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import onnxruntime

        versions["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return versions


def memory_gib() -> float | None:
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None

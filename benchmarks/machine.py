"""What a number was measured on: CPU (model, flags, cores, pinning, load), GPU, Jetson
power mode and the library versions. A latency without this is not worth comparing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

# Instruction-set flags that change inference speed; the full list is noise in a report.
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_int8", "asimd", "asimddp", "asimdhp", "sve", "i8mm", "bf16")
LIBRARIES = ("lineside", "numpy", "opencv-python-headless", "opencv-python", "onnxruntime",
             "onnxruntime-gpu", "tensorrt", "pycuda", "cuda-python", "torch", "pyzmq", "psutil")
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


def gpu() -> dict:
    """NVIDIA GPUs as nvidia-smi reports them; the reason when there are none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {"devices": [], "note": "nvidia-smi not found: no NVIDIA driver here (Jetsons have none; see `jetson`)"}
    fields = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "power.limit", "pstate")
    out = _run([smi, f"--query-gpu={','.join(fields)}", "--format=csv,noheader"])
    if out is None:
        return {"devices": [], "note": "nvidia-smi failed: the driver is not loaded or no GPU is visible"}
    devices = [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]
    return {"devices": devices}


def jetson() -> dict | None:
    """Jetson model, L4T release and the nvpmodel power mode; None on anything else."""
    model = (_read("/proc/device-tree/model") or "").rstrip("\x00")
    release = _read("/etc/nv_tegra_release")
    if "jetson" not in model.lower() and release is None:
        return None
    nvpmodel = shutil.which("nvpmodel")
    mode = _run([nvpmodel, "-q"]) if nvpmodel else None
    return {"model": model or None, "l4t": release.splitlines()[0] if release else None,
            "power_mode": " ".join(mode.split()) if mode else "unknown: nvpmodel -q not available",
            "note": "numbers hold for this power mode only; run `sudo jetson_clocks` to fix clocks"}


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


def _cpuinfo() -> dict:
    """The first processor's fields from /proc/cpuinfo (plus the board-wide ones on ARM)."""
    info: dict[str, str] = {}
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def _run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None

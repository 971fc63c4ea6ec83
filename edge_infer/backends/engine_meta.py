"""What a TensorRT engine is tied to, and the check that refuses a stale one.

An engine is only valid for the TensorRT version and the GPU (name, compute
capability) it was built with, and for the ONNX graph it was built from: the sha256 of
that graph, as the bundle's signed manifest lists it. Not the manifest itself: thresholds
change with every calibration, the graph does not, and recalibrating must not make the
engine stale. ``lineside build-engine`` writes these beside the engine
(``engines/model.<precision>.engine.json``, in the bundle's derived-data folder); the
runtime compares them with what it finds before deserializing anything.

The sidecar also says which backend runs the engine (``backend``): ``tensorrt``, or
``tensorrt-standin`` for the test stand-in (backends/standin.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bundle import ENGINES_DIR
from ..errors import LinesideError

ENGINE_DIR = ENGINES_DIR
TIED_TO = ("tensorrt_version", "gpu_name", "compute_capability")
REQUIRED = (*TIED_TO, "precision", "onnx", "onnx_sha256")


def engine_path(bundle_root: Path, precision: str) -> Path:
    return Path(bundle_root) / ENGINE_DIR / f"model.{precision}.engine"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: Path) -> dict:
    path = sidecar_path(engine)
    bundle = engine.parent.parent
    if not path.is_file():
        raise LinesideError(f"{engine} has no {path.name} saying what it was built for: "
                            f"rebuild with `lineside build-engine {bundle}`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LinesideError(f"{path} is not valid JSON ({exc}): rebuild with `lineside build-engine "
                            f"{bundle}`") from None
    missing = [k for k in REQUIRED if k not in meta] if isinstance(meta, dict) else list(REQUIRED)
    if missing:
        raise LinesideError(f"{path} lacks {', '.join(missing)} (an engine from an older lineside, tied to the "
                            f"manifest): rebuild with `lineside build-engine {bundle}`")
    return meta


def check_engine(engine: Path, onnx_sha256: str, environment: dict) -> dict:
    """The sidecar of ``engine`` if it matches this device and the graph ``onnx_sha256``; else a LinesideError."""
    meta = read_sidecar(engine)
    changed = [f"{k}: built for {meta[k]!r}, this device has {environment.get(k)!r}"
               for k in TIED_TO if str(meta[k]) != str(environment.get(k))]
    if meta["onnx_sha256"] != onnx_sha256:
        changed.append(f"it was built from another graph than the bundle's {meta['precision']} model "
                       f"(sha256 {meta['onnx_sha256'][:12]}…, the bundle has {onnx_sha256[:12]}…)")
    if changed:
        raise LinesideError(f"the TensorRT engine {engine} is stale ({'; '.join(changed)}): rebuild with "
                            f"`lineside build-engine {engine.parent.parent} --precision {meta['precision']}`")
    return meta


def write_sidecar(engine: Path, onnx: Path, onnx_sha256: str, environment: dict, build: dict) -> dict:
    """Record what ``engine`` is tied to (this device, the graph it was built from) and how it was built."""
    from ..bundle import sha256_file, write_json_atomic

    meta = {**{k: environment[k] for k in TIED_TO}, "onnx": Path(onnx).name, "onnx_sha256": onnx_sha256,
            "engine_sha256": sha256_file(engine), "backend": "tensorrt", **build}
    write_json_atomic(sidecar_path(engine), meta)
    return meta


def built_engines(bundle_root: Path) -> list[dict]:
    """Every engine sidecar in the bundle's engines/ folder, newest build first (no validity check)."""
    found = []
    for path in sorted((Path(bundle_root) / ENGINE_DIR).glob("model.*.engine")):
        try:
            found.append({**read_sidecar(path), "engine": str(path)})
        except LinesideError:
            continue
    return sorted(found, key=lambda m: (str(m.get("built", "")), m.get("built_ns", 0)), reverse=True)


def current_environment(cuda=None) -> dict:
    """TensorRT version, GPU name and compute capability of this machine (needs tensorrt and CUDA)."""
    import tensorrt as trt

    from .cuda import open_cuda

    return {"tensorrt_version": trt.__version__, **(cuda or open_cuda()).device_info()}

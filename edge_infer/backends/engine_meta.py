"""What a TensorRT engine is tied to, and the check that refuses a stale one.

An engine is only valid for the TensorRT version and the GPU (name, compute
capability) it was built with, and for the bundle it was built from. ``lineside
build-engine`` writes these beside the engine (``*.engine.json``); the runtime compares
them with what it finds before deserializing anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..bundle import MANIFEST, sha256_file
from ..errors import LinesideError

ENGINE_DIR = "engines"
TIED_TO = ("tensorrt_version", "gpu_name", "compute_capability")


def engine_path(bundle_root: Path, precision: str) -> Path:
    return Path(bundle_root) / ENGINE_DIR / f"model.{precision}.engine"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: Path) -> dict:
    path = sidecar_path(engine)
    if not path.is_file():
        raise LinesideError(f"{engine} has no {path.name} saying what it was built for: "
                            f"rebuild with `lineside build-engine {engine.parent.parent}`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LinesideError(f"{path} is not valid JSON ({exc}): rebuild with `lineside build-engine "
                            f"{engine.parent.parent}`") from None
    missing = [k for k in (*TIED_TO, "bundle_manifest_sha256") if k not in meta]
    if missing:
        raise LinesideError(f"{path} lacks {', '.join(missing)}: rebuild with `lineside build-engine "
                            f"{engine.parent.parent}`")
    return meta


def check_engine(engine: Path, bundle_root: Path, environment: dict) -> dict:
    """The sidecar of ``engine`` if it matches this device and bundle; otherwise a LinesideError."""
    meta = read_sidecar(engine)
    changed = [f"{k}: built for {meta[k]!r}, this device has {environment.get(k)!r}"
               for k in TIED_TO if str(meta[k]) != str(environment.get(k))]
    manifest_sha = sha256_file(Path(bundle_root) / MANIFEST)
    if meta["bundle_manifest_sha256"] != manifest_sha:
        changed.append("the bundle's manifest changed since the engine was built")
    if changed:
        raise LinesideError(f"the TensorRT engine {engine} is stale ({'; '.join(changed)}): rebuild with "
                            f"`lineside build-engine {bundle_root} --precision {meta.get('precision', 'fp16')}`")
    return meta


def write_sidecar(engine: Path, bundle_root: Path, environment: dict, build: dict) -> dict:
    """Record what ``engine`` is tied to (this device, this bundle) and how it was built."""
    from ..bundle import write_json_atomic

    meta = {**{k: environment[k] for k in TIED_TO}, "bundle_manifest_sha256": sha256_file(Path(bundle_root) / MANIFEST),
            "engine_sha256": sha256_file(engine), **build}
    write_json_atomic(sidecar_path(engine), meta)
    return meta


def current_environment(cuda=None) -> dict:
    """TensorRT version, GPU name and compute capability of this machine (needs tensorrt and CUDA)."""
    import tensorrt as trt

    from .cuda import open_cuda

    return {"tensorrt_version": trt.__version__, **(cuda or open_cuda()).device_info()}

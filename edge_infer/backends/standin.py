"""A stand-in for TensorRT on machines without one, for tests: chosen by an environment variable, never silently.

With ``LINESIDE_ENGINE_STANDIN=1``, `lineside build-engine` writes where the real build
writes (``engines/model.<precision>.engine`` and its sidecar) a copy of the bundle's ONNX
graph and a sidecar whose ``backend`` is ``tensorrt-standin``; the runtime, with the same
variable set, runs such an engine on ONNX Runtime's CPU provider and names it
``tensorrt-standin`` in the logs, ``health`` and ``stats``. Without the variable, the
runtime refuses a stand-in engine (and `auto` says why it skipped it) and build-engine
builds with TensorRT. So the whole flash → build → serve path, including the engine
selection and the precision that follows the built engine, runs for real in CI; only
the compiler is replaced, and every report says so.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ..errors import LinesideError
from .engine_meta import engine_path, write_sidecar
from .ort import OrtBackend

ENV = "LINESIDE_ENGINE_STANDIN"
BACKEND = "tensorrt-standin"
ENVIRONMENT = {"tensorrt_version": "none (test stand-in)", "gpu_name": "none (test stand-in)",
               "compute_capability": "-"}


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def refusal(engine: Path) -> str:
    return (f"{engine} was made by the test stand-in builder ({ENV}=1), not by TensorRT: it runs only where "
            f"{ENV}=1 is set; rebuild with TensorRT (`lineside build-engine {engine.parent.parent}`)")


def build(bundle, precision: str) -> dict:
    """Copy the precision's ONNX graph to the engine path and write the sidecar, as a real build would."""
    if not enabled():
        raise LinesideError(f"the stand-in engine builder runs only with {ENV}=1 (tests)")
    onnx = bundle.model_path(precision)
    engine = engine_path(bundle.root, precision)
    engine.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx, engine)
    build = {"precision": precision, "backend": BACKEND, "builder": f"stand-in ({ENV}=1): a copy of the ONNX graph",
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "built_ns": time.time_ns()}
    meta = write_sidecar(engine, onnx, bundle.model_sha256(precision), ENVIRONMENT, build)
    return {**meta, "engine": str(engine)}


class StandinEngineBackend(OrtBackend):
    """The stand-in engine (an ONNX graph) on ONNX Runtime's CPU provider, under its own name."""

    def __init__(self, engine: Path, meta: dict, spec, max_batch: int, threads: int | None = None):
        super().__init__(engine, spec, max_batch, provider="ort-cpu", threads=threads)
        self.name, self.meta = BACKEND, meta

    def describe(self) -> dict:
        return {**super().describe(), "engine": {k: self.meta.get(k) for k in ("precision", "builder", "onnx_sha256")}}

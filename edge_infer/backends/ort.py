"""ONNX Runtime backend (CPU here; the CUDA and TensorRT providers where installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LinesideError
from ..preprocess import InputSpec
from .base import Backend, ModelOutputs

PROVIDERS = {"ort-trt": "TensorrtExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
             "ort-cpu": "CPUExecutionProvider"}


class OrtBackend(Backend):
    name = "ort-cpu"

    def __init__(self, model_path: str | Path, spec: InputSpec, max_batch: int = 8,
                 provider: str = "ort-cpu", threads: int | None = None, cache_dir: str | Path | None = None):
        super().__init__(spec, max_batch)
        ort = import_onnxruntime()
        if provider not in PROVIDERS:
            raise LinesideError(f"unknown ONNX Runtime provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), options,
                                                providers=provider_chain(provider, model_path, cache_dir))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LinesideError(f"ONNX Runtime cannot load {model_path} with {PROVIDERS[provider]}: {exc}") from None
        active = self.session.get_providers()
        if active[0] != PROVIDERS[provider]:  # ORT falls back silently when a provider's libraries fail to load
            raise LinesideError(f"ONNX Runtime could not start {PROVIDERS[provider]} (it fell back to {active[0]}): "
                                "check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs")
        self.name = provider
        self.outputs = [o.name for o in self.session.get_outputs()]
        missing = {"anomaly_map", "score"} - set(self.outputs)
        if missing or [i.name for i in self.session.get_inputs()] != ["image"]:
            raise LinesideError(
                f"{model_path} does not meet the model I/O contract (input `image`, outputs `anomaly_map`, "
                f"`score`); it has inputs {[i.name for i in self.session.get_inputs()]} and outputs {self.outputs}"
            )

    def _run(self, images: np.ndarray) -> ModelOutputs:
        anomaly_map, score = self.session.run(["anomaly_map", "score"], {"image": images})
        return ModelOutputs(anomaly_map.astype(np.float32, copy=False), score.astype(np.float32, copy=False))

    def close(self) -> None:
        # Drop the session now (its arena, thread pool and weights), not whenever the last
        # reference to this backend goes: a reload must not hold two models' memory for long.
        self.session = None

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.session.get_providers()}


def provider_chain(provider: str, model_path: str | Path, cache_dir: str | Path | None = None) -> list:
    """The provider with its options, then the providers that take the nodes it cannot run."""
    if provider == "ort-trt":
        cache = Path(cache_dir) if cache_dir else Path(model_path).parent / "engines" / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        # Precision is in the graph (FP16 graph or QDQ), so no precision flags: the EP reads it from there.
        trt_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                       "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}
        return [("TensorrtExecutionProvider", trt_options), "CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider == "ort-cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def available_providers() -> list[str]:
    return list(import_onnxruntime().get_available_providers())


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise LinesideError(
            "onnxruntime is not installed: `pip install lineside[cpu]` on a CPU box, "
            "`lineside[gpu]` on a CUDA machine (never both)"
        ) from None
    return onnxruntime

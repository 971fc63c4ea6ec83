"""ONNX Runtime backend (CPU here; the CUDA and TensorRT providers where installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LinesideError
from ..preprocess import InputSpec
from .base import Backend, ModelOutputs

PROVIDERS = {"ort-cpu": "CPUExecutionProvider"}


class OrtBackend(Backend):
    name = "ort-cpu"

    def __init__(self, model_path: str | Path, spec: InputSpec, max_batch: int = 8,
                 provider: str = "ort-cpu", threads: int | None = None):
        super().__init__(spec, max_batch)
        ort = import_onnxruntime()
        if provider not in PROVIDERS:
            raise LinesideError(f"unknown ONNX Runtime provider {provider!r}: choose one of {', '.join(PROVIDERS)}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=[PROVIDERS[provider]])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise LinesideError(f"ONNX Runtime cannot load {model_path}: {exc}") from None
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

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.session.get_providers()}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise LinesideError(
            "onnxruntime is not installed: `pip install lineside[cpu]` on a CPU box, "
            "`lineside[gpu]` on a CUDA machine (never both)"
        ) from None
    return onnxruntime

"""What can be measured on this machine: each backend × precision either opens as a
Target or is refused with the reason (no variant in the bundle, library missing, ...)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from edge_infer.backends import Backend, ModelOutputs, open_backend
from edge_infer.bundle import Bundle
from edge_infer.errors import LinesideError

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
# The ONNX Runtime execution provider each ORT backend needs.
ORT_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-trt": "TensorrtExecutionProvider"}
EDGE_NAMES = {"trt": "tensorrt"}  # this command's short name → edge_infer's backend name
HOST_MEMORY = "not applicable: the model runs on the CPU and reads host memory, nothing is copied"
NOT_SEPARATED = "included in compute: this backend does not report its copies separately"


class Unavailable(Exception):
    """A combination that cannot run here; the message is the reason shown in the report."""


@dataclass
class Target:
    """A loaded model to time: `run` is the compute stage."""

    backend: str
    precision: str
    max_batch: int
    transfers: str  # what the h2d / d2h stages are for this backend
    model: Backend | object

    def run(self, images) -> ModelOutputs:
        """Frames' outputs; a tiled bundle's canvases are cut, scored and stitched as serve does."""
        run_frames = getattr(self.model, "run_frames", None)
        return run_frames(images) if run_frames else self.model.run(images)

    def describe(self) -> dict:
        describe = getattr(self.model, "describe", None)
        return describe() if describe else {"backend": self.backend}

    def close(self) -> None:
        close = getattr(self.model, "close", None)
        if close:
            close()


def open_target(bundle: Bundle, backend: str, precision: str, threads: int | None = None,
                run_dir: str | None = None, cuda_graph: bool = False) -> Target:
    """Open one combination, or raise Unavailable with every reason it cannot run here."""
    if backend == "torch":
        return _open_torch(bundle, precision, threads, run_dir)
    reasons = [r for r in (_missing_library(backend), _missing_variant(bundle, precision)) if r]
    if reasons:
        raise Unavailable("; and ".join(reasons))
    try:
        model = open_backend(bundle, EDGE_NAMES.get(backend, backend), precision, threads,
                             cuda_graph=cuda_graph and backend == "tensorrt")
    except LinesideError as exc:
        raise Unavailable(str(exc)) from None
    transfers = HOST_MEMORY if backend == "ort-cpu" else NOT_SEPARATED
    return Target(backend, precision, model.max_batch, transfers, model)


def _missing_variant(bundle: Bundle, precision: str) -> str | None:
    if precision in bundle.manifest.variants:
        return None
    have = ", ".join(sorted(bundle.manifest.variants)) or "none"
    return (f"the bundle has no {precision} variant (it has: {have}); "
            f"export one with `lineside export RUN --precision {precision}`")


def _missing_library(backend: str) -> str | None:
    if backend in ORT_PROVIDERS:
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install lineside[cpu] or lineside[gpu])"
        import onnxruntime

        have = onnxruntime.get_available_providers()
        if ORT_PROVIDERS[backend] not in have:
            need = "onnxruntime-gpu" if backend == "ort-cuda" else "onnxruntime-gpu built with TensorRT"
            return (f"{ORT_PROVIDERS[backend]} missing: {need} is not installed "
                    f"(this onnxruntime offers {', '.join(have)})")
        return None
    if backend == "trt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT missing: the tensorrt Python package is not installed (JetPack ships it; on x86 pip install lineside[gpu])"
        return None
    raise LinesideError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")


def _open_torch(bundle: Bundle, precision: str, threads: int | None, run_dir: str | None) -> Target:
    """The training run's PyTorch model on the CPU: the reference the exported graphs are held to."""
    if precision != "fp32":
        raise Unavailable(f"torch runs the training run's fp32 model only; {precision} lives in the bundle's ONNX")
    reasons = []
    if run_dir is None:
        reasons.append("torch times the training run's PyTorch model, which a bundle does not carry: "
                       "pass --run RUN_DIR (the folder `lineside train` wrote)")
    if importlib.util.find_spec("torch") is None:
        reasons.append("torch is not installed (pip install lineside[train])")
    if reasons:
        raise Unavailable("; and ".join(reasons))
    import torch

    from train_host.run import load_run

    model, record = load_run(run_dir)
    if record["input"] != bundle.input_spec.to_dict():
        raise Unavailable(f"run {run_dir} takes input {record['input']} but the bundle takes "
                          f"{bundle.input_spec.to_dict()}: pass the run the bundle was exported from")
    if threads:
        torch.set_num_threads(threads)
    return Target("torch", "fp32", bundle.manifest.input.max_batch, HOST_MEMORY, TorchModel(model, record))


class TorchModel:
    def __init__(self, model, record: dict):
        self.model, self.record = model, record

    def run(self, images) -> ModelOutputs:
        """The model on a batch; a tiled run's canvases are cut and stitched as Backend.run_frames does."""
        from edge_infer.backends.base import stack_maps
        from edge_infer.preprocess import InputSpec
        from edge_infer.tiling import score_canvases

        spec = InputSpec.from_dict(self.record["input"])
        if spec.tiles is None:
            return ModelOutputs(*self._run(images))
        maps, scores = score_canvases(self._run, images, spec.tiles, (spec.height, spec.width))
        return ModelOutputs(stack_maps(maps), scores)

    def _run(self, images: np.ndarray):
        import torch

        with torch.inference_mode():
            anomaly_map, score = self.model(torch.from_numpy(images))
        return anomaly_map.numpy(), score.numpy()

    def describe(self) -> dict:
        import torch

        return {"backend": "torch", "family": self.record["family"], "torch": torch.__version__,
                "threads": torch.get_num_threads()}

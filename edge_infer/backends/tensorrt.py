"""TensorRT backend: a prebuilt engine, named I/O tensors, one stream, pinned host buffers.

The TensorRT 10 runtime API: ``deserialize_cuda_engine``, tensors by name
(``set_input_shape``, ``set_tensor_address``) and ``execute_async_v3`` on one stream.
Host buffers are page-locked and allocated once for ``max_batch``; the uint8 input is
copied as uint8 (a quarter of the bytes of float32; normalisation runs in the engine).
With ``cuda_graph=True`` each batch size is captured into a CUDA graph after one plain
enqueue (as trtexec does: the first enqueue may allocate or tune), then replayed.
Before anything is deserialized, the engine's sidecar is checked against this device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LinesideError
from ..preprocess import InputSpec
from .base import Backend, ModelOutputs
from .engine_meta import check_engine, current_environment

CONTRACT = {"image": np.uint8, "anomaly_map": np.float32, "score": np.float32}


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise LinesideError("TensorRT is not installed here: on a Jetson it comes with JetPack "
                            "(`apt install python3-libnvinfer`), elsewhere `pip install tensorrt`; "
                            "or use --backend ort-cuda / ort-cpu") from None
    return tensorrt


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine: str | Path, onnx_sha256: str, spec: InputSpec, max_batch: int = 8,
                 cuda_graph: bool = False):
        super().__init__(spec, max_batch)
        trt = import_tensorrt()
        from .cuda import open_cuda

        self.cuda = open_cuda()
        self.meta = check_engine(Path(engine), onnx_sha256, current_environment(self.cuda))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine).read_bytes())
        if self.engine is None:
            raise LinesideError(f"TensorRT could not deserialize {engine} (see its log above): "
                                f"rebuild with `lineside build-engine {Path(engine).parent.parent}`")
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs = self._io_names(trt)
        self.stream = self.cuda.stream()
        self.cuda_graph, self.graphs = cuda_graph, {}
        self.context.set_input_shape("image", (max_batch, *spec.graph_shape))
        self.host, self.device = {}, {}
        for name in (*self.inputs, *self.outputs):
            shape = tuple(self.context.get_tensor_shape(name))
            self.host[name] = self.cuda.pinned(shape, CONTRACT[name])
            self.device[name] = self.cuda.malloc(self.host[name].nbytes)
            self.context.set_tensor_address(name, self.device[name])

    def _io_names(self, trt) -> tuple[list[str], list[str]]:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        wrong = [f"{n} ({trt.nptype(self.engine.get_tensor_dtype(n)).__name__})" for n in names
                 if n not in CONTRACT or trt.nptype(self.engine.get_tensor_dtype(n)) != CONTRACT[n]]
        if inputs != ["image"] or sorted(outputs) != ["anomaly_map", "score"] or wrong:
            raise LinesideError(f"the engine's tensors {names} do not meet the model I/O contract (uint8 `image`; "
                                "float32 `anomaly_map`, `score`): rebuild it from the bundle's ONNX")
        return inputs, ["anomaly_map", "score"]

    def _run(self, images: np.ndarray) -> ModelOutputs:
        n = len(images)
        self.context.set_input_shape("image", images.shape)
        self.host["image"][:n] = images
        if self.cuda_graph and n in self.graphs:
            self.cuda.launch(self.graphs[n], self.stream)
        else:
            self._enqueue(n)
            if self.cuda_graph:  # the first enqueue for this shape ran plainly; capture the next one
                self.cuda.synchronize(self.stream)
                self.cuda.begin_capture(self.stream)
                self._enqueue(n)
                self.graphs[n] = self.cuda.end_capture(self.stream)
                self.cuda.launch(self.graphs[n], self.stream)
        self.cuda.synchronize(self.stream)
        return ModelOutputs(self.host["anomaly_map"][:n].copy(), self.host["score"][:n].copy())

    def _enqueue(self, n: int) -> None:
        self.cuda.htod(self.device["image"], self.host["image"][:n], self.stream)
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise LinesideError("TensorRT failed to enqueue the engine (see its log above)")
        for name in self.outputs:
            self.cuda.dtoh(self.host[name][:n], self.device[name], self.stream)

    def close(self) -> None:
        for name, ptr in self.device.items():
            self.cuda.free(ptr)
            self.cuda.free_pinned(self.host[name])
        self.device, self.host = {}, {}

    def describe(self) -> dict:
        return {**super().describe(), "engine": {k: self.meta.get(k) for k in
                                                 ("tensorrt_version", "gpu_name", "compute_capability", "precision")},
                "cuda": self.cuda.library, "cuda_graph": self.cuda_graph}

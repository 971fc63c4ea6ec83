"""One small adapter over CUDA memory, streams and graphs, on cuda-python's runtime API.

cuda-python (``cuda.bindings.runtime``) is the one CUDA binding: NVIDIA's TensorRT samples
use it, it installs as a wheel (pycuda is a source build that needs nvcc) and it captures
CUDA graphs. The TensorRT backend talks to this adapter only; nothing here is imported
unless a CUDA backend is asked for.
"""

from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod

import numpy as np

from ..errors import LinesideError

INSTALL_HINT = ("install cuda-python matching the device's CUDA major version (`pip install \"cuda-python>=12,<13\"` "
                "for CUDA 12, as on JetPack 6), or the `gpu` extra")


def open_cuda(device: int = 0) -> "Cuda":
    """cuda-python's runtime, bound to ``device``."""
    try:
        return CudaPython(device)
    except ImportError as exc:
        raise LinesideError(f"cuda-python is not installed ({exc}): {INSTALL_HINT}") from None


class Cuda(ABC):
    """Device memory, page-locked host memory, one stream, and optional CUDA graph capture
    (an interface, so the TensorRT backend's logic reads without the binding's tuples)."""

    library = ""

    @abstractmethod
    def device_info(self) -> dict:
        """GPU name and compute capability ("8.7" on Orin), what an engine is tied to."""

    @abstractmethod
    def malloc(self, nbytes: int) -> int:
        """Device memory; returns its address."""

    @abstractmethod
    def free(self, ptr: int) -> None: """Release device memory."""

    @abstractmethod
    def pinned(self, shape, dtype) -> np.ndarray:
        """A page-locked host array, so copies run asynchronously at full bus speed."""

    @abstractmethod
    def free_pinned(self, array: np.ndarray) -> None: """Release a page-locked array."""

    @abstractmethod
    def stream(self): """A new CUDA stream."""

    @abstractmethod
    def stream_handle(self, stream) -> int: """The raw cudaStream_t TensorRT takes."""

    @abstractmethod
    def synchronize(self, stream) -> None: """Wait for the stream's work."""

    @abstractmethod
    def htod(self, ptr: int, host: np.ndarray, stream) -> None: """Asynchronous host → device copy."""

    @abstractmethod
    def dtoh(self, host: np.ndarray, ptr: int, stream) -> None: """Asynchronous device → host copy."""

    @abstractmethod
    def begin_capture(self, stream) -> None: """Start recording the stream's work into a CUDA graph."""

    @abstractmethod
    def end_capture(self, stream): """Stop recording; returns an instantiated graph."""

    @abstractmethod
    def launch(self, graph, stream) -> None: """Replay a captured graph on the stream."""


class CudaPython(Cuda):
    library = "cuda-python"

    def __init__(self, device: int = 0):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6 layout
        self.rt = cudart
        self.device = device
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._pinned: dict[int, int] = {}

    def _check(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            raise LinesideError(f"CUDA call {what} failed: {name.decode() if isinstance(name, bytes) else name}; "
                                "check the driver (`nvidia-smi`, `tegrastats` on Jetson) and free GPU memory")
        return values[0] if len(values) == 1 else values

    def device_info(self) -> dict:
        prop = self._check(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return {"gpu_name": name.rstrip("\x00").strip(), "compute_capability": f"{prop.major}.{prop.minor}"}

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr), "cudaFree")

    def pinned(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        array = np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=dtype).reshape(shape)
        self._pinned[id(array)] = ptr
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        self._check(self.rt.cudaFreeHost(self._pinned.pop(id(array))), "cudaFreeHost")

    def stream(self):
        return self._check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def stream_handle(self, stream) -> int:
        return int(stream)

    def synchronize(self, stream) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def htod(self, ptr: int, host: np.ndarray, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync")

    def dtoh(self, host: np.ndarray, ptr: int, stream) -> None:
        self._check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync")

    def begin_capture(self, stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream):
        graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        return self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def launch(self, graph, stream) -> None:
        self._check(self.rt.cudaGraphLaunch(graph, stream), "cudaGraphLaunch")

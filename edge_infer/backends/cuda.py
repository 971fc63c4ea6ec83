"""One small adapter over CUDA memory, streams and graphs: cuda-python or pycuda.

NVIDIA's TensorRT samples moved from pycuda to cuda-python (``cuda.bindings``); either
may be what a device has, so the TensorRT backend talks to this adapter only. Nothing
here is imported unless a CUDA backend is asked for.
"""

from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod

import numpy as np

from ..errors import LinesideError

INSTALL_HINT = "install cuda-python (`pip install cuda-python`) or pycuda, matching the device's CUDA"


def open_cuda(device: int = 0) -> "Cuda":
    """The first CUDA binding that imports here, bound to ``device``."""
    errors = []
    for kind in (CudaPython, PyCuda):
        try:
            return kind(device)
        except ImportError as exc:
            errors.append(f"{kind.library}: {exc}")
    raise LinesideError(f"no CUDA binding for Python is installed ({'; '.join(errors)}): {INSTALL_HINT}")


class Cuda(ABC):
    """Device memory, page-locked host memory, one stream, and optional CUDA graph capture."""

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


class PyCuda(Cuda):
    library = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as drv

        drv.init()
        self.drv = drv
        self.dev = drv.Device(device)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        self._allocations: dict[int, object] = {}

    def device_info(self) -> dict:
        major, minor = self.dev.compute_capability()
        return {"gpu_name": self.dev.name(), "compute_capability": f"{major}.{minor}"}

    def malloc(self, nbytes: int) -> int:
        allocation = self.drv.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def pinned(self, shape, dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def free_pinned(self, array: np.ndarray) -> None:
        array.base.free() if hasattr(array.base, "free") else None

    def stream(self):
        return self.drv.Stream()

    def stream_handle(self, stream) -> int:
        return stream.handle

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def htod(self, ptr: int, host: np.ndarray, stream) -> None:
        self.drv.memcpy_htod_async(ptr, host, stream)

    def dtoh(self, host: np.ndarray, ptr: int, stream) -> None:
        self.drv.memcpy_dtoh_async(host, ptr, stream)

    def begin_capture(self, stream) -> None:
        raise LinesideError("CUDA graph capture goes through cuda-python here; pycuda is installed instead: "
                            "run without --cuda-graph, or `pip install cuda-python`")

    def end_capture(self, stream):
        raise LinesideError("CUDA graph capture needs cuda-python")

    def launch(self, graph, stream) -> None:
        raise LinesideError("CUDA graph capture needs cuda-python")

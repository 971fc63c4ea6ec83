"""TensorRT and CUDA paths. They need the hardware: each skips here with the reason and runs where
it exists (marked `trt` / `gpu`). Nothing in them fakes a result."""

import numpy as np
import pytest

from edge_infer.bundle import Bundle


def cuda_providers():
    import onnxruntime

    return onnxruntime.get_available_providers()


def have_gpu() -> str | None:
    """The GPU's name, or None where there is no CUDA binding, driver or device."""
    try:
        from edge_infer.backends.cuda import open_cuda

        return open_cuda().device_info()["gpu_name"]
    except Exception:  # ImportError, LinesideError from the driver, OSError from a missing libcudart
        return None


@pytest.mark.gpu
def test_cuda_adapter_round_trips_pinned_memory():
    if have_gpu() is None:
        pytest.skip("no CUDA device or no cuda-python here (CPU-only machine)")
    from edge_infer.backends.cuda import open_cuda

    cuda = open_cuda()
    host = cuda.pinned((4, 3, 8, 8), np.uint8)
    host[:] = np.arange(host.size, dtype=np.uint32).reshape(host.shape) % 251
    back = cuda.pinned(host.shape, np.uint8)
    ptr, stream = cuda.malloc(host.nbytes), cuda.stream()
    cuda.htod(ptr, host, stream)
    cuda.dtoh(back, ptr, stream)
    cuda.synchronize(stream)
    assert np.array_equal(host, back)
    cuda.free(ptr)


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["ort-cuda", "ort-trt"])
def test_ort_gpu_provider_agrees_with_the_cpu(tiny_bundle, provider):
    from edge_infer.backends import ORT_PROVIDERS
    from edge_infer.backends.ort import OrtBackend

    if ORT_PROVIDERS[provider] not in cuda_providers():
        pytest.skip(f"onnxruntime here has no {ORT_PROVIDERS[provider]} (CPU-only onnxruntime)")
    bundle = Bundle.load(tiny_bundle)
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    cpu = OrtBackend(bundle.model_path(), bundle.input_spec, 8).run(images)
    gpu = OrtBackend(bundle.model_path(), bundle.input_spec, 8, provider=provider).run(images)
    assert np.allclose(gpu.score, cpu.score, rtol=1e-3) and np.allclose(gpu.anomaly_map, cpu.anomaly_map, atol=1e-3)


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_build_engine_and_run_it_against_onnxruntime(tiny_bundle, tmp_path, cuda_graph):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here (no GPU machine)")
    if have_gpu() is None:
        pytest.skip("no CUDA device here")
    from deploy_jetson.engine import build_engine
    from edge_infer.backends import open_backend
    from edge_infer.backends.ort import OrtBackend

    bundle = Bundle.load(tiny_bundle)
    result = build_engine(bundle, "fp32", timing_cache=tmp_path / "timing.cache", check_images=8)
    assert result["check"]["score_rel_err"] < 1e-2 and (tmp_path / "timing.cache").stat().st_size > 0
    backend = open_backend(bundle, "auto", cuda_graph=cuda_graph, log=lambda _: None)
    assert backend.name == "tensorrt"
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    for _ in range(3):  # plain, captured, replayed
        out = backend.run(images)
    ref = OrtBackend(bundle.model_path(), bundle.input_spec, 8).run(images)
    assert np.allclose(out.score, ref.score, rtol=1e-2)
    backend.close()

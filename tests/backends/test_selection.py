"""Backend choice: the selection logic with faked availability, and real fallbacks on this CPU."""

import pytest

from edge_infer.backends import open_backend, plan
from edge_infer.bundle import Bundle
from edge_infer.errors import LinesideError

CPU = ["CPUExecutionProvider"]
GPU = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def no_engine():
    return "no engine at bundle/engines/model.fp16.engine"


def test_auto_prefers_a_valid_engine_then_ort_trt_cuda_cpu():
    assert plan("auto", GPU, lambda: None).candidates == ["tensorrt", "ort-trt", "ort-cuda", "ort-cpu"]
    selection = plan("auto", GPU, no_engine)
    assert selection.candidates == ["ort-trt", "ort-cuda", "ort-cpu"]
    assert selection.skipped == [("tensorrt", no_engine())]


def test_auto_on_a_cpu_box_says_why_each_gpu_backend_was_skipped():
    selection = plan("auto", CPU, no_engine)
    assert selection.candidates == ["ort-cpu"]
    assert [name for name, _ in selection.skipped] == ["tensorrt", "ort-trt", "ort-cuda"]
    text = selection.explain("ort-cpu")
    assert "no TensorrtExecutionProvider" in text and "no CUDAExecutionProvider" in text and "no engine" in text


def test_cuda_only_onnxruntime_skips_the_trt_provider():
    assert plan("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], no_engine).candidates == ["ort-cuda", "ort-cpu"]


def test_a_pinned_backend_is_that_backend_or_an_error_saying_why():
    assert plan("ort-cuda", GPU, no_engine).candidates == ["ort-cuda"]
    with pytest.raises(LinesideError, match="no CUDAExecutionProvider"):
        plan("ort-cuda", CPU, no_engine)
    with pytest.raises(LinesideError, match="no engine"):
        plan("tensorrt", GPU, no_engine)
    with pytest.raises(LinesideError, match="unknown backend"):
        plan("gpu", GPU, no_engine)


def test_open_backend_auto_on_this_machine_reports_its_choice(tiny_bundle):
    import onnxruntime

    lines = []
    backend = open_backend(Bundle.load(tiny_bundle), "auto", log=lines.append)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has a CUDA onnxruntime; the CPU-box expectation does not apply")
    assert backend.name == "ort-cpu" and len(lines) == 1
    assert lines[0].startswith("backend ort-cpu (tensorrt skipped: no engine")


def test_pinned_gpu_backend_on_a_cpu_box_fails_clearly(tiny_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has a CUDA onnxruntime")
    with pytest.raises(LinesideError, match="ort-cuda is not usable here"):
        open_backend(Bundle.load(tiny_bundle), "ort-cuda")

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


# --- issue 20 joint 2: the precision the station runs follows the engine that was built ----------------------


def with_fp16_variant(root):
    """The tiny bundle with an fp16 graph beside its fp32 one (the same graph: it only has to run)."""
    import shutil

    shutil.copyfile(root / "model.onnx", root / "model.fp16.onnx")
    bundle = Bundle.load(root)
    bundle.add_file("model.fp16.onnx", "model", "tests: a second variant", precision="fp16")
    bundle.save()
    return root


def test_the_station_runs_the_engine_flash_built_by_default(tiny_bundle, monkeypatch):
    import json

    from edge_infer.backends.engine_meta import engine_path, sidecar_path
    from edge_infer.pipeline import Model
    from edge_infer.station import StationConfig
    from lineside.cli import main as cli

    cfg = StationConfig(station="s1", bundle=with_fp16_variant(tiny_bundle))
    assert cfg.precision == "auto"
    monkeypatch.setenv("LINESIDE_ENGINE_STANDIN", "1")
    assert cli(["build-engine", str(tiny_bundle)]) == 0  # fp16, as flash builds it
    model = Model(cfg)
    assert (model.info["backend"], model.info["precision"]) == ("tensorrt-standin", "fp16")
    model.close()

    assert cli(["build-engine", str(tiny_bundle), "--precision", "fp32"]) == 0  # the newest valid engine wins
    model = Model(cfg)
    assert (model.info["backend"], model.info["precision"]) == ("tensorrt-standin", "fp32")
    model.close()
    meta = json.loads(sidecar_path(engine_path(tiny_bundle, "fp32")).read_text())
    sidecar_path(engine_path(tiny_bundle, "fp32")).write_text(json.dumps({**meta, "onnx_sha256": "0" * 64}))
    model = Model(cfg)  # the fp32 engine is stale now: auto takes the fp16 one
    assert (model.info["backend"], model.info["precision"]) == ("tensorrt-standin", "fp16")
    model.close()


def test_a_stand_in_engine_never_runs_silently(tiny_bundle, monkeypatch):
    from edge_infer.backends import resolve_precision
    from lineside.cli import main as cli

    monkeypatch.setenv("LINESIDE_ENGINE_STANDIN", "1")
    assert cli(["build-engine", str(tiny_bundle)]) == 0
    monkeypatch.delenv("LINESIDE_ENGINE_STANDIN")
    bundle = Bundle.load(tiny_bundle)
    assert resolve_precision(bundle, "auto", "auto") == ("fp32", "auto: no engine built for this bundle is valid here")
    lines = []
    backend = open_backend(bundle, "auto", "auto", log=lines.append)
    assert backend.name == "ort-cpu" and "made by the test stand-in builder" in lines[0]
    with pytest.raises(LinesideError, match="stand-in builder.*rebuild with TensorRT"):
        open_backend(bundle, "tensorrt", "fp32")

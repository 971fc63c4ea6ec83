"""The stale-engine check, on sidecar JSON: no TensorRT needed to decide an engine is stale."""

import json

import pytest

from edge_infer.backends import engine_meta
from edge_infer.backends.engine_meta import check_engine, engine_path, read_sidecar, write_sidecar
from edge_infer.bundle import Bundle, Thresholds
from edge_infer.errors import LinesideError

ORIN = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}


@pytest.fixture
def engine(tiny_bundle):
    path = engine_path(tiny_bundle, "fp16")
    path.parent.mkdir()
    path.write_bytes(b"serialized engine bytes")  # the check reads only the sidecar, never these bytes
    write_sidecar(path, tiny_bundle / "model.onnx", onnx_sha(tiny_bundle), ORIN, {"precision": "fp16"})
    return path


def onnx_sha(root) -> str:
    return Bundle.load(root).model_sha256("fp32")


def test_matching_device_and_bundle_pass(engine, tiny_bundle):
    meta = check_engine(engine, onnx_sha(tiny_bundle), dict(ORIN))
    assert meta["precision"] == "fp16" and meta["compute_capability"] == "8.7"


@pytest.mark.parametrize("field,value", [("tensorrt_version", "10.7.0"), ("gpu_name", "NVIDIA H100"),
                                         ("compute_capability", "9.0")])
def test_changed_tensorrt_or_gpu_refuses_the_engine(engine, tiny_bundle, field, value):
    with pytest.raises(LinesideError, match=f"stale.*{field}.*rebuild with `lineside build-engine"):
        check_engine(engine, onnx_sha(tiny_bundle), {**ORIN, field: value})


def test_an_engine_is_tied_to_its_graph_not_to_the_manifest(engine, tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    bundle.manifest.station = "line 2"  # what calibrate does: thresholds.json and the manifest change
    bundle.write_thresholds(Thresholds(image=0.7), "a recalibration")
    assert check_engine(engine, onnx_sha(tiny_bundle), dict(ORIN))["precision"] == "fp16"
    with pytest.raises(LinesideError, match="stale.*another graph"):
        check_engine(engine, "0" * 64, dict(ORIN))


def test_missing_or_broken_sidecar_says_rebuild(engine):
    sidecar = engine_meta.sidecar_path(engine)
    sidecar.write_text("{not json")
    with pytest.raises(LinesideError, match="not valid JSON.*rebuild"):
        read_sidecar(engine)
    sidecar.write_text(json.dumps({"tensorrt_version": "10.3.0"}))
    with pytest.raises(LinesideError, match="lacks gpu_name"):
        read_sidecar(engine)
    sidecar.write_text(json.dumps({**ORIN, "precision": "fp16", "bundle_manifest_sha256": "ab"}))  # older lineside
    with pytest.raises(LinesideError, match="lacks onnx, onnx_sha256.*rebuild"):
        read_sidecar(engine)
    sidecar.unlink()
    with pytest.raises(LinesideError, match="build-engine"):
        read_sidecar(engine)


def test_build_engine_refuses_a_cpu_only_int8_graph_before_needing_tensorrt(tiny_bundle):
    from deploy_jetson.engine import build_engine

    bundle = Bundle.load(tiny_bundle)
    bundle.manifest.files["model.onnx"].checks["conversion"] = {"symmetric_activations": False}
    with pytest.raises(LinesideError, match="TensorRT needs symmetric INT8"):
        build_engine(bundle, "fp32")


def test_build_engine_without_tensorrt_says_how_to_get_it(tiny_bundle):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    from deploy_jetson.engine import build_engine

    with pytest.raises(LinesideError, match="TensorRT is not installed"):
        build_engine(Bundle.load(tiny_bundle), "fp32")

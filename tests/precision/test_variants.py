"""FP32, FP16 and INT8 exports of a small rx detector, each checked against PyTorch on the CPU.

Tolerances (max relative error against PyTorch, over the category's test images):
FP32 1e-3 (the export's own parity tolerance), FP16 1e-2 (only the backbone is in half
precision); INT8 has no elementwise bound (quantizing the backbone moves defect
scores by design, see docs/precision.md) and is held to: good-image scores within 25%
(median within 10%), and the same ranking of good vs defective images as PyTorch.
"""

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
import torch

from edge_infer.backends.ort import OrtBackend
from edge_infer.bundle import Bundle
from edge_infer.imageio import read_image
from edge_infer.preprocess import InputSpec, preprocess
from lineside.cli import main as cli
from tests.mvtec_fixture import make_mvtec
from train_host.data import load_split
from train_host.export import relative_error
from train_host.run import load_run

pytestmark = pytest.mark.slow
SPEC = InputSpec(64, 64, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    data = make_mvtec(root / "cells")
    run = root / "run"
    assert cli(["train", "rx", "--data", str(data), "--out", str(run), "--size", "64", "--feature-dim", "24",
                "--sigma", "1", "--threads", "2"]) == 0
    bundle = root / "bundle"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli(["export", str(run), "--out", str(bundle), "--precision", "fp32,fp16,int8",
                    "--calib-method", "minmax", "--threads", "2"]) == 0
    return data, run, Bundle.load(bundle), printed.getvalue()


@pytest.fixture(scope="module")
def reference(exported):
    data, run = exported[:2]
    samples = load_split(data).test
    images = np.stack([preprocess(read_image(s.path), SPEC) for s in samples])
    labels = np.array([s.label for s in samples])
    model, _ = load_run(run)
    with torch.no_grad():
        amap, score = (t.numpy() for t in model(torch.from_numpy(images)))
    return images, labels, amap, score


def run_variant(bundle, precision, images):
    backend = OrtBackend(bundle.model_path(precision), bundle.input_spec, max_batch=len(images))
    return backend.run(images)


def test_manifest_lists_every_variant_with_its_checks(exported):
    bundle = exported[2]
    assert bundle.manifest.variants == {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        acc = bundle.manifest.files[name].checks["accuracy"]
        assert {"score_rel_err", "map_rel_err", "spearman", "auroc", "auroc_change_points"} <= set(acc)
        assert acc["auroc_change_points"] >= -1.0 and acc["images"] == 12
    calib = bundle.manifest.files["model.int8.onnx"].checks["conversion"]["calibration"]
    assert calib["images"] == 14 and calib["kind"] == "training split (good images)" and calib["names_sha256"]


def test_variants_keep_the_io_contract(exported):
    bundle = exported[2]
    for precision in ("fp16", "int8"):
        graph = onnx.load(str(bundle.model_path(precision))).graph
        assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [("image", onnx.TensorProto.UINT8)]
        assert {(o.name, o.type.tensor_type.elem_type) for o in graph.output} == {
            ("anomaly_map", onnx.TensorProto.FLOAT), ("score", onnx.TensorProto.FLOAT)}


def test_fp32_matches_pytorch(exported, reference):
    images, _, amap, score = reference
    out = run_variant(exported[2], "fp32", images)
    assert relative_error(out.score, score) < 1e-3 and relative_error(out.anomaly_map, amap) < 1e-3


def test_fp16_matches_pytorch_and_really_is_half_precision(exported, reference):
    images, _, amap, score = reference
    bundle = exported[2]
    out = run_variant(bundle, "fp16", images)
    assert relative_error(out.score, score) < 1e-2 and relative_error(out.anomaly_map, amap) < 1e-2
    graph = onnx.load(str(bundle.model_path("fp16"))).graph
    halves = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert any(name.startswith("backbone.") for name in halves)  # the backbone's weights are FP16 ...
    fp32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert {"mean", "whiten"} <= fp32  # ... the Gaussian's statistics are not


def test_int8_is_a_symmetric_qdq_graph_that_ranks_like_pytorch(exported, reference):
    images, labels, amap, score = reference
    bundle = exported[2]
    out = run_variant(bundle, "int8", images)
    good = labels == 0
    rel = np.abs(out.score[good] - score[good]) / score[good]
    assert rel.max() < 0.25 and np.median(rel) < 0.10
    assert out.score[labels == 1].min() > out.score[good].max()  # PyTorch separates them: so must INT8
    graph = onnx.load(str(bundle.model_path("int8"))).graph
    zero_points = [i for i in graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # symmetric
    assert all(onnx.numpy_helper.to_array(z).dtype == np.int8 for z in zero_points)
    conv_weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("backbone.")]
    assert conv_weights  # weights quantized ...
    head = [n for n in graph.node if n.op_type == "MatMul"]
    produced = {o: n.op_type for n in graph.node for o in n.output}
    assert head and all(produced.get(i) != "DequantizeLinear" for n in head for i in n.input)  # ... the distance not


def test_export_prints_the_numbers_it_records(exported):
    bundle, printed = exported[2], exported[3]
    for precision in ("fp16", "int8"):
        line = next(line for line in printed.splitlines() if line.startswith(f"{precision}: score rel. error"))
        acc = bundle.manifest.files[f"model.{precision}.onnx"].checks["accuracy"]
        assert f"Spearman {acc['spearman']:.4f}" in line and f"AUROC {acc['auroc']:.4f}" in line
    manifest = json.loads((bundle.root / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "fp16", "int8"}

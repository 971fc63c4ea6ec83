"""Fast checks of the precision helpers on hand-built graphs (no training, no export)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_infer.backends.base import ModelOutputs
from edge_infer.errors import LinesideError
from train_host.precision.accuracy import check_variant, compare
from train_host.precision.fp16 import convert_fp16
from train_host.precision.regions import backbone_nodes, head_nodes
from train_host.precision.variants import parse_precisions


def tiny_detector(path):
    """image → normalise → backbone (conv, relu, conv) → big squared distance → sum → outputs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32), "backbone.c1.weight"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "backbone.c2.weight"),
             numpy_helper.from_array(np.array(300.0, np.float32), "scale"),  # pushes sums past FP16's 65504
             numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")]
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Mul", ["f", "scale"], ["x"], name="norm"),
             helper.make_node("Conv", ["x", "backbone.c1.weight"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "backbone.c2.weight"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Mul", ["c2", "c2"], ["sq"], name="square"),
             helper.make_node("ReduceSum", ["sq", "axes"], ["score"], keepdims=0, name="sum"),
             helper.make_node("Sqrt", ["sq"], ["anomaly_map0"], name="sqrt"),
             helper.make_node("ReduceMean", ["anomaly_map0"], ["anomaly_map"], axes=[1], keepdims=1, name="mean")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, 8, 8]),
                               helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return model


def test_backbone_is_the_weighted_nodes_and_what_lies_between(tmp_path):
    model = tiny_detector(tmp_path / "m.onnx")
    assert backbone_nodes(model) == ["conv1", "relu1", "conv2"]
    assert head_nodes(model) == ["cast", "norm", "square", "sum", "sqrt", "mean"]


def test_a_graph_without_a_backbone_is_refused(tmp_path):
    model = tiny_detector(tmp_path / "m.onnx")
    with pytest.raises(LinesideError, match="backbone"):
        backbone_nodes(model, prefix="encoder.")


def test_fp16_keeps_the_head_in_fp32_so_large_sums_do_not_overflow(tmp_path):
    tiny_detector(tmp_path / "m.onnx")
    info = convert_fp16(tmp_path / "m.onnx", tmp_path / "h.onnx")
    assert info["fp16_nodes"] == 3
    x = np.random.default_rng(1).integers(0, 255, (1, 1, 8, 8), dtype=np.uint8)
    ref = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": x})
    half = ort.InferenceSession(str(tmp_path / "h.onnx")).run(None, {"image": x})
    assert ref[1].max() > 65504  # the test is only meaningful past FP16's range
    assert np.isfinite(half[1]).all() and np.allclose(half[1], ref[1], rtol=1e-2)
    graph = onnx.load(str(tmp_path / "h.onnx")).graph
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert len(casts) == 3  # uint8→fp32 input cast, →fp16 into the backbone, →fp32 out of it: no round trips


def test_variant_refused_past_the_auroc_tolerance_with_a_hint(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1])
    ref = ModelOutputs(np.zeros((6, 1, 2, 2), np.float32), np.array([1, 2, 3, 4, 5, 6], np.float32))
    bad = ModelOutputs(np.zeros((6, 1, 2, 2), np.float32), np.array([1, 5, 3, 4, 2, 6], np.float32))
    result = compare(bad, ref, labels)
    assert result["auroc_fp32"] == 1.0 and result["auroc_change_points"] < -1
    with pytest.raises(LinesideError, match="refused.*calibration images"):
        check_variant("int8", result, 1.0, tmp_path / "model.int8.onnx")
    check_variant("int8", compare(ref, ref, labels), 1.0, tmp_path / "model.int8.onnx")  # no loss: accepted


def test_non_finite_outputs_are_refused(tmp_path):
    labels = np.array([0, 1])
    ref = ModelOutputs(np.ones((2, 1, 2, 2), np.float32), np.array([1, 2], np.float32))
    inf = ModelOutputs(np.ones((2, 1, 2, 2), np.float32), np.array([1, np.inf], np.float32))
    with pytest.raises(LinesideError, match="non-finite"):
        check_variant("fp16", compare(inf, ref, labels), 1.0, tmp_path / "model.fp16.onnx")


def test_precision_list_parsing():
    assert parse_precisions("int8, fp16") == ("fp32", "fp16", "int8")
    with pytest.raises(LinesideError, match="fp32, fp16, int8"):
        parse_precisions("fp8")


@pytest.mark.parametrize("activations,dtype", [("s8", np.int8), ("u8", np.uint8)])
def test_int8_quantizes_the_backbone_only_with_the_asked_activation_type(tmp_path, activations, dtype):
    from train_host.precision.int8 import quantize_int8

    tiny_detector(tmp_path / "m.onnx")
    images = np.random.default_rng(2).integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    info = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", images, "minmax", activations=activations)
    # (with u8 activations the quantizer folds the ReLU into the zero point, so only Conv may remain)
    assert "Conv" in info["quantized_op_types"] and set(info["quantized_op_types"]) <= {"Conv", "Relu"}
    assert info["symmetric_activations"] == (activations == "s8")
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert quantized_inputs and quantized_inputs <= {"x", "c1", "r1", "c2"}  # the head's tensors stay float
    weights = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].ndim == 4}
    assert weights == {"backbone.c1.weight_quantized", "backbone.c2.weight_quantized"}
    act_zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == dtype for z in act_zero_points)
    if activations == "s8":
        assert all(not z.any() for z in act_zero_points)  # symmetric: zero points 0, as TensorRT requires


def test_calibration_from_a_folder_records_its_provenance(tmp_path):
    import cv2

    from edge_infer.preprocess import InputSpec
    from train_host.precision.variants import calibration_set

    for i in range(5):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((20, 20), 40 * i, np.uint8))
    images, provenance = calibration_set(str(tmp_path), {"data": {}}, InputSpec(16, 16, 1), count=3)
    assert images.shape == (3, 1, 16, 16) and images.dtype == np.uint8
    assert provenance["kind"] == "folder of good images" and provenance["images"] == 3 and provenance["available"] == 5
    with pytest.raises(LinesideError, match="at least 1"):
        calibration_set(str(tmp_path), {"data": {}}, InputSpec(16, 16, 1), count=0)


def test_initializers_are_renamed_so_the_quantizers_copies_cannot_take_a_tensors_name(tmp_path):
    from train_host.precision.int8 import keep_duplicates_apart

    model = tiny_detector(tmp_path / "m.onnx")
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.float32), "val_40"))
    model.graph.node[2].input.append("val_40")  # conv1's bias
    model.graph.node[3].output[0] = "val_405"  # what onnxruntime names its copy of a shared val_40
    model.graph.node[4].input[0] = "val_405"
    keep_duplicates_apart(model)
    names = {i.name for i in model.graph.initializer}
    assert "val_40" not in names and "val_40_w" in names and list(model.graph.node[2].input)[-1] == "val_40_w"
    assert "backbone.c1.weight" in names  # names that end in a letter are left alone
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.full((1, 1, 8, 8), 7, np.uint8)})[1].shape == (1,)

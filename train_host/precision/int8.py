"""INT8 variant: explicit quantization (a QDQ graph) calibrated on the station's good images.

onnxruntime.quantization does the work: ``quant_pre_process`` (shape inference and
graph cleanup, which its docs ask for before static quantization), then
``quantize_static`` in the QDQ format with symmetric INT8 activations and weights, the
form TensorRT's explicit quantization reads (zero points must be 0). Weights are
quantized per output channel. Only the backbone is quantized; the normalisation and the
head (distance computation, smoothing, image score) stay FP32, since the score is a
max over a distance, where a quantization step moves the verdict.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from edge_infer.errors import LinesideError

from .regions import backbone_nodes

METHODS = ("minmax", "entropy", "percentile")


class ImageReader:
    """A ``CalibrationDataReader`` over preprocessed uint8 images, a few at a time."""

    def __init__(self, images: np.ndarray, batch: int = 1):  # histogram calibrators need equal batches
        self.images, self.batch, self.position = images, batch, 0

    def get_next(self):
        if self.position >= len(self.images):
            return None
        chunk = self.images[self.position:self.position + self.batch]
        self.position += self.batch
        return {"image": chunk}

    def rewind(self):
        self.position = 0


def quantize_int8(src: Path, dst: Path, images: np.ndarray, method: str = "percentile",
                  per_channel: bool = True, percentile: float = 99.999, activations: str = "s8") -> dict:
    """Write the QDQ INT8 variant of ``src`` to ``dst`` calibrated on ``images`` (uint8 N×C×H×W).

    ``activations="s8"``: symmetric signed INT8, what TensorRT needs (the default).
    ``"u8"``: asymmetric unsigned activations (U8S8), which onnxruntime's x86 CPU kernels
    run faster (VPMADDUBSW takes u8×s8); such a graph is for a CPU line PC, not TensorRT.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if method not in METHODS:
        raise LinesideError(f"unknown calibration method {method!r}: choose one of {', '.join(METHODS)}")
    if activations not in ("s8", "u8"):
        raise LinesideError(f"unknown INT8 activation type {activations!r}: s8 (TensorRT) or u8 (x86 CPU)")
    if len(images) == 0:
        raise LinesideError("no calibration images: give --calib a folder of the station's good images")
    reader = type("Reader", (ImageReader, CalibrationDataReader), {})(images)
    with tempfile.TemporaryDirectory(prefix="lineside-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        nodes = backbone_nodes(model)
        keep_duplicates_apart(model)
        onnx.save(model, str(prepared))  # with the node names backbone_nodes gave unnamed nodes
        entry_ranges = backbone_input_ranges(model, nodes, images)
        symmetric = activations == "s8"
        extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                 "TensorQuantOverrides": {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                          for name, (lo, hi) in entry_ranges.items()}}
        if method == "percentile":
            extra["CalibPercentile"] = percentile
        quantize_static(str(prepared), str(dst), reader, quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        nodes_to_quantize=nodes, calibrate_method=getattr(CalibrationMethod, _METHOD_NAMES[method]),
                        extra_options=extra)
    quantized = onnx.load(str(dst))
    ops = [n.op_type for n in quantized.graph.node]
    return {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "activations": activations,
            "symmetric_activations": symmetric, "for": "TensorRT and CPU" if symmetric else "x86 CPU (not TensorRT)",
            "per_channel": per_channel, "method": method, **({"percentile": percentile} if method == "percentile" else {}),
            "nodes_in_scope": len(nodes), "quantized_op_types": sorted(_quantized_op_types(quantized, set(nodes))),
            "qdq_pairs": ops.count("QuantizeLinear"), "backbone_input_ranges": entry_ranges,
            "fp32_scope": "normalisation and head (everything outside the backbone)"}


def keep_duplicates_apart(model: onnx.ModelProto) -> None:
    """Rename the initializers whose names end in a digit, so the quantizer's copies cannot take a tensor's name.

    A bias shared by several nodes is copied per node by onnxruntime's QDQ quantizer under the name
    ``<name><n>``: ``val_40`` becomes ``val_405``, and torch's exporter may already have called a
    tensor ``val_405``; the quantizer then takes that tensor for a weight and stops with "Quantization
    parameter shared mode is not supported for weight yet". A suffix that ends in a letter makes
    the copies' names (``val_40_w5``) unlike any name the exporter gives.
    """
    graph = model.graph
    renamed = {i.name: f"{i.name}_w" for i in graph.initializer if i.name[-1:].isdigit()}
    taken = {name for n in graph.node for name in n.output} | {i.name for i in graph.initializer}
    renamed = {old: new for old, new in renamed.items() if new not in taken}
    for init in graph.initializer:
        init.name = renamed.get(init.name, init.name)
    for value in graph.input:
        value.name = renamed.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]


def backbone_input_ranges(model: onnx.ModelProto, nodes: list[str], images: np.ndarray) -> dict:
    """The full range of each tensor entering the backbone, over black, white and calibration images.

    Calibrating on good images only would clip whatever a defect makes brighter or darker
    than any good image at the backbone's input, flattening the very signal the detector
    looks for. The input is uint8 and the normalisation before the backbone is monotone,
    so black and white images give the range any frame can reach.
    """
    import onnxruntime as ort

    inside = set(nodes)
    produced = {out: n.name for n in model.graph.node for out in n.output}
    entries = sorted({i for n in model.graph.node if n.name in inside for i in n.input
                      if i in produced and produced[i] not in inside})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in entries)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    shape = (1, *images.shape[1:])
    batches = [np.zeros(shape, np.uint8), np.full(shape, 255, np.uint8)]
    batches += [images[i:i + 1] for i in range(min(8, len(images)))]
    values = [session.run(entries, {"image": b}) for b in batches]
    return {name: (float(min(v[i].min() for v in values)), float(max(v[i].max() for v in values)))
            for i, name in enumerate(entries)}


_METHOD_NAMES = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def _quantized_op_types(model: onnx.ModelProto, scope: set[str]) -> set[str]:
    """Op types in the backbone that read dequantized tensors: they run on INT8 data once fused."""
    dq = {out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    return {n.op_type for n in model.graph.node if n.name in scope and any(i in dq for i in n.input)}

"""FP16 variant: the backbone in half precision, everything numerically sensitive in FP32.

onnxruntime's converter (``onnxruntime.transformers.float16``, the maintained successor
of onnxconverter-common's) rewrites float tensors to FP16 and inserts Casts at the
borders of blocked nodes. Blocked here: every node outside the backbone (input
normalisation, feature alignment, the distance computation, smoothing and the score
reduction) and ops that accumulate. The uint8 input is not a float and stays as it is;
``keep_io_types`` keeps the float32 outputs, so the model I/O contract holds.

The converter routes a tensor between two blocked nodes through FP16 and back (a Cast
pair per edge), which overflows a squared Mahalanobis distance past 65504 and rounds
the rest; ``drop_round_trips`` removes those pairs so the FP32 part really is FP32.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import onnx
from onnx import TensorProto

from .regions import head_nodes

# Reductions and normalisations accumulate; keep them FP32 wherever they appear.
SENSITIVE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2", "ReduceLogSumExp", "Softmax",
                 "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Sqrt", "Pow", "TopK"]


def convert_fp16(src: Path, dst: Path) -> dict:
    """Write the FP16 variant of ``src`` to ``dst``; returns what was kept in FP32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    kept = head_nodes(model)
    ops = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(SENSITIVE_OPS))
    blocked = set(kept) | {n.name for n in model.graph.node if n.op_type in ops}
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=kept, op_block_list=ops)
    fp32 = {i.name for i in half.graph.initializer if i.data_type == TensorProto.FLOAT}
    fp32 |= {out for n in half.graph.node if n.name in blocked for out in n.output}
    removed = drop_round_trips(half, fp32)
    del half.graph.value_info[:]  # the converter's types are stale after the rewiring: infer them again
    half = onnx.shape_inference.infer_shapes(half)
    OnnxModel(half).topological_sort()  # the converter appends its Casts at the end of the graph
    onnx.checker.check_model(half)
    onnx.save(half, str(dst))
    total = len(model.graph.node)
    fp16_nodes = total - len(blocked)
    return {"converter": "onnxruntime.transformers.float16", "nodes": total, "fp16_nodes": fp16_nodes,
            "fp32_nodes": total - fp16_nodes, "round_trip_casts_removed": removed,
            "fp32_scope": "normalisation and head (everything outside the backbone), plus " + ", ".join(SENSITIVE_OPS)}


def drop_round_trips(model: onnx.ModelProto, fp32: set[str]) -> int:
    """Rewire consumers of ``Cast(to=float)`` applied to an FP32 tensor (directly or via an FP16 Cast)."""
    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    outputs = {o.name for o in graph.output}
    rename = {}
    for node in graph.node:
        if node.op_type != "Cast" or _cast_to(node) != TensorProto.FLOAT:
            continue
        source = node.input[0]
        before = producer.get(source)
        if before is not None and before.op_type == "Cast" and _cast_to(before) == TensorProto.FLOAT16:
            source = before.input[0]
        if source not in fp32:
            continue
        if node.output[0] in outputs:  # a graph output keeps its name: the Cast becomes a plain copy
            node.op_type, node.input[0] = "Identity", source
            del node.attribute[:]
        else:
            rename[node.output[0]] = source
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    return _drop_dead_nodes(graph, outputs)


def _drop_dead_nodes(graph: onnx.GraphProto, outputs: set[str]) -> int:
    removed = 0
    while True:
        used = defaultdict(int)
        for n in graph.node:
            for name in n.input:
                used[name] += 1
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in outputs or used[o] for o in n.output)]
        if not dead:
            return removed
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")

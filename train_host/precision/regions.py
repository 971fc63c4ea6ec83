"""Which nodes of an exported detector belong to its backbone.

Precision is lowered in the backbone only: the normalisation before it and the head
after it (feature alignment, the Mahalanobis / distance computation, map smoothing and
the image-score reduction) stay FP32, where a small error in a distance or a max moves
the verdict. The backbone is found from the graph itself: the nodes whose weights are
named ``backbone.*`` (every family names its feature extractor ``backbone``), plus the
weight-free nodes between them (ReLU, residual Add, pooling).
"""

from __future__ import annotations

from collections import defaultdict

import onnx

from edge_infer.errors import LinesideError

BACKBONE_PREFIX = "backbone."


def backbone_nodes(model: onnx.ModelProto, prefix: str = BACKBONE_PREFIX) -> list[str]:
    """Names of the backbone's nodes, in graph order."""
    graph = model.graph
    ensure_node_names(model)
    initializers = {i.name for i in graph.initializer}
    weighted = {n.name for n in graph.node
                if any(name in initializers and name.startswith(prefix) for name in n.input)}
    if not weighted:
        raise LinesideError(
            f"no node of this graph uses weights named {prefix!r}*, so its backbone cannot be told from its "
            "head: name the family's feature extractor `backbone` (as rx does) to export FP16/INT8 variants")
    order = [n.name for n in graph.node]
    producer = {out: n.name for n in graph.node for out in n.output}
    consumers = defaultdict(list)
    for n in graph.node:
        for name in n.input:
            if name in producer:
                consumers[producer[name]].append(n.name)
    parents = {n.name: [producer[i] for i in n.input if i in producer] for n in graph.node}
    below = _reach(weighted, consumers)  # everything fed by a backbone weight
    above = _reach(weighted, parents)  # everything that feeds a backbone weight
    region = weighted | (below & above)
    return [name for name in order if name in region]


def head_nodes(model: onnx.ModelProto, prefix: str = BACKBONE_PREFIX) -> list[str]:
    """Every node outside the backbone: normalisation before it, the head after it."""
    inside = set(backbone_nodes(model, prefix))
    return [n.name for n in model.graph.node if n.name not in inside]


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Block and exclude lists work by node name; give unnamed nodes stable names."""
    seen = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _reach(start: set[str], edges: dict) -> set[str]:
    seen, stack = set(start), list(start)
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen

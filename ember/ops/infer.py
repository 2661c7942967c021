"""Whole-graph shape and dtype inference (with build-time values of shape tensors)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.types import TensorType
from ember.ops.registry import infer_node
from ember.ops.shape_values import propagate, value_for


def constant_type(value: np.ndarray) -> TensorType:
    """The IR type of a constant array."""
    return TensorType(DType.from_numpy(value.dtype), tuple(int(d) for d in value.shape))


def _input_types(node: Node, types: dict[str, TensorType]) -> list[Optional[TensorType]]:
    in_types: list[Optional[TensorType]] = []
    for name in node.inputs:
        if not name:
            in_types.append(None)
        elif name in types:
            in_types.append(types[name])
        else:
            raise ShapeError(f"node {node.name!r} ({node.op}) reads {name!r}, which has no type yet "
                             f"(not a graph input, constant, or earlier node output)")
    return in_types


def infer_node_types(node: Node, types: dict[str, TensorType], constants: dict[str, np.ndarray],
                     values: Optional[dict[str, np.ndarray]] = None) -> list[TensorType]:
    """Output types of one node given the types known so far (omitted inputs are None).

    ``values`` holds build-time values of shape tensors (see ``ember.ops.shape_values``); when
    given, it is used like constants and extended with this node's output values.
    """
    in_types = _input_types(node, types)
    raw = [constants.get(n) if n in constants else (values or {}).get(n) if n else None
           for n in node.inputs]
    consts = [value_for(node, i, v) for i, v in enumerate(raw)]
    out = infer_node(node, in_types, consts)
    if len(out) < len(node.outputs):
        raise ShapeError(f"node {node.name!r} ({node.op}) has {len(node.outputs)} outputs but its "
                         f"inference gave {len(out)}")
    out = out[:len(node.outputs)]
    if values is not None:
        for name, v in zip(node.outputs, propagate(node, in_types, raw, out)):
            if name and v is not None:
                values[name] = v
    return out


def infer_graph(graph: Graph) -> Graph:
    """Recomputes every node's output types in order; returns a new Graph.

    Input types are kept; constant types are re-derived from their arrays; types of tensors
    that no longer exist are dropped. Shape tensors computed from known or symbolic dims
    (``Shape -> Gather -> Concat -> Reshape``) are evaluated on the way, so such a Reshape gets
    its real (possibly symbolic) output shape.

    >>> g2 = infer_graph(g)            # doctest: +SKIP
    >>> g2.types[g2.outputs[0]]        # doctest: +SKIP
    """
    types: dict[str, TensorType] = {}
    for name in graph.inputs:
        types[name] = graph.type_of(name)
    for name, value in graph.constants.items():
        types[name] = constant_type(value)
    values: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        for name, t in zip(node.outputs, infer_node_types(node, types, graph.constants, values)):
            if name:
                types[name] = t
    return graph.copy(types=types)

"""Whole-graph shape and dtype inference."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ember.errors import ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.types import TensorType
from ember.ops.registry import infer_node


def constant_type(value: np.ndarray) -> TensorType:
    """The IR type of a constant array."""
    return TensorType(DType.from_numpy(value.dtype), tuple(int(d) for d in value.shape))


def infer_node_types(node: Node, types: dict[str, TensorType],
                     constants: dict[str, np.ndarray]) -> list[TensorType]:
    """Output types of one node given the types known so far (omitted inputs are None)."""
    in_types: list[Optional[TensorType]] = []
    for name in node.inputs:
        if not name:
            in_types.append(None)
        elif name in types:
            in_types.append(types[name])
        else:
            raise ShapeError(f"node {node.name!r} ({node.op}) reads {name!r}, which has no type yet "
                             f"(not a graph input, constant, or earlier node output)")
    consts = [constants.get(name) if name else None for name in node.inputs]
    out = infer_node(node, in_types, consts)
    named = [o for o in node.outputs]
    if len(out) < len(named):
        raise ShapeError(f"node {node.name!r} ({node.op}) has {len(named)} outputs but its "
                         f"inference gave {len(out)}")
    return out[:len(named)]


def infer_graph(graph: Graph) -> Graph:
    """Recomputes every node's output types in order; returns a new Graph.

    Input types are kept; constant types are re-derived from their arrays; types of tensors
    that no longer exist are dropped.

    >>> g2 = infer_graph(g)            # doctest: +SKIP
    >>> g2.types[g2.outputs[0]]        # doctest: +SKIP
    """
    types: dict[str, TensorType] = {}
    for name in graph.inputs:
        types[name] = graph.type_of(name)
    for name, value in graph.constants.items():
        types[name] = constant_type(value)
    for node in graph.nodes:
        for name, t in zip(node.outputs, infer_node_types(node, types, graph.constants)):
            if name:
                types[name] = t
    return graph.copy(types=types)

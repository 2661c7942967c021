"""Checks the IR's structural invariants.

What an op's attributes must be is the ops layer's knowledge, not the IR's: ``verify`` takes a
per-node check, and ``ember.ops.verify.verify_graph`` runs it with the op registry's (the pass
manager runs that after every pass in tests).
"""
from __future__ import annotations

from typing import Callable, Optional

from ember.errors import GraphError
from ember.ir.graph import Graph, Node

#: Raises ``GraphError`` when a node breaks a rule of its op (its attributes' class, say).
NodeCheck = Callable[[Node], None]


def verify(graph: Graph, node_check: Optional[NodeCheck] = None) -> None:
    """Raises ``GraphError`` naming the first broken invariant.

    Invariants: every tensor has exactly one definition (graph input, constant or node
    output); nodes are in topological order; every node's inputs are defined before it;
    every graph output is defined; every tensor has a type; node names are unique; and
    ``node_check`` (when given) holds for every node.
    """
    defined: set[str] = set()
    for name in graph.inputs:
        if name in defined:
            raise GraphError(f"graph input {name!r} is listed twice")
        defined.add(name)
    for name in graph.constants:
        if name in defined:
            raise GraphError(f"constant {name!r} has the same name as a graph input")
        defined.add(name)
    seen_nodes: set[str] = set()
    for node in graph.nodes:
        if node.name in seen_nodes:
            raise GraphError(f"two nodes are named {node.name!r}")
        seen_nodes.add(node.name)
        for i in node.inputs:
            if i and i not in defined:
                raise GraphError(f"node {node.name!r} ({node.op}) reads {i!r}, which is not "
                                 f"defined before it (missing producer or bad order)")
        for o in node.outputs:
            if not o:
                continue
            if o in defined:
                raise GraphError(f"tensor {o!r} is defined twice (second time by node {node.name!r})")
            defined.add(o)
        if node_check is not None:
            node_check(node)
    for o in graph.outputs:
        if o not in defined:
            raise GraphError(f"graph output {o!r} is not produced by any node")
    for name in defined:
        if name not in graph.types:
            raise GraphError(f"tensor {name!r} has no type")

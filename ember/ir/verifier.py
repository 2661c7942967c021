"""Checks the IR's invariants. The pass manager runs it after every pass in tests."""
from __future__ import annotations

from ember.errors import GraphError
from ember.ir.graph import Graph


def verify(graph: Graph) -> None:
    """Raises ``GraphError`` naming the first broken invariant.

    Invariants: every tensor has exactly one definition (graph input, constant or node
    output); nodes are in topological order; every node's inputs are defined before it;
    every graph output is defined; every tensor has a type; node names are unique;
    attributes have the class the op registry declares.
    """
    from ember.ops.registry import get_spec

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
        spec = get_spec(node.op)
        if spec.attrs is not None and not isinstance(node.attrs, spec.attrs):
            raise GraphError(f"node {node.name!r} ({node.op}) has attrs of type "
                             f"{type(node.attrs).__name__}, expected {spec.attrs.__name__}")
    for o in graph.outputs:
        if o not in defined:
            raise GraphError(f"graph output {o!r} is not produced by any node")
    for name in defined:
        if name not in graph.types:
            raise GraphError(f"tensor {name!r} has no type")

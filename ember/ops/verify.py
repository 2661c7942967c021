"""The whole IR check: the IR's structural invariants plus every op's own rules.

>>> verify_graph(graph)            # doctest: +SKIP
"""
from __future__ import annotations

from ember.errors import GraphError
from ember.ir.graph import Graph, Node
from ember.ir.verifier import verify
from ember.ops.registry import get_spec


def check_node(node: Node) -> None:
    """Raises ``GraphError`` unless ``node``'s attributes have the class its op declares."""
    spec = get_spec(node.op)
    if spec.attrs is not None and not isinstance(node.attrs, spec.attrs):
        raise GraphError(f"node {node.name!r} ({node.op}) has attrs of type "
                         f"{type(node.attrs).__name__}, expected {spec.attrs.__name__}")


def verify_graph(graph: Graph) -> None:
    """Raises ``GraphError`` naming the first broken invariant of ``graph`` (structure, then each
    node's op rules, in order)."""
    verify(graph, check_node)

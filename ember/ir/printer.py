"""A readable text form of a graph, for dumps and error messages."""
from __future__ import annotations

import dataclasses

from ember.ir.graph import Graph, Node


def _attrs_text(attrs: object) -> str:
    if attrs is None:
        return ""
    if dataclasses.is_dataclass(attrs):
        parts = []
        for f in dataclasses.fields(attrs):
            v = getattr(attrs, f.name)
            if dataclasses.is_dataclass(v):
                v = "{" + _attrs_text(v) + "}"
            elif hasattr(v, "value") and not isinstance(v, (int, float)):
                v = v.value
            parts.append(f"{f.name}={v}")
        return ", ".join(parts)
    return repr(attrs)


def format_node(node: Node, graph: Graph | None = None) -> str:
    def t(n: str) -> str:
        if not n:
            return "-"
        if graph is not None and n in graph.types:
            return f"%{n}: {graph.types[n]}"
        return f"%{n}"

    outs = ", ".join(t(o) for o in node.outputs)
    ins = ", ".join(("$" + i if graph is not None and i in graph.constants else t(i)) if i else "-"
                    for i in node.inputs)
    attrs = _attrs_text(node.attrs)
    rule = f"  # {node.rule}" if node.rule else ""
    return f"{outs} = {node.op.value}[{node.display_name}]({ins}){' {' + attrs + '}' if attrs else ''}{rule}"


def format_graph(graph: Graph) -> str:
    lines = [f"graph {graph.name} (opset {graph.opset}, {len(graph.nodes)} nodes, "
             f"{len(graph.constants)} constants)"]
    for i in graph.inputs:
        lines.append(f"  input  %{i}: {graph.types.get(i)}")
    for node in graph.nodes:
        lines.append("  " + format_node(node, graph))
    for o in graph.outputs:
        lines.append(f"  output %{o}: {graph.types.get(o)}")
    return "\n".join(lines)

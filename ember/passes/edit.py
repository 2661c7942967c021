"""Small graph-editing helpers shared by the passes.

All of them return new graphs or new nodes; none mutates a graph a caller still holds.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ember.ir.graph import Graph, Node
from ember.ir.types import Dim, TensorType


def rename_inputs(node: Node, mapping: Mapping[str, str]) -> Node:
    """``node`` reading ``mapping[t]`` instead of every input ``t`` in ``mapping``."""
    if not mapping or not any(i in mapping for i in node.inputs):
        return node
    return node.with_(inputs=tuple(mapping.get(i, i) if i else i for i in node.inputs))


def rename_all(node: Node, mapping: Mapping[str, str]) -> Node:
    """``node`` with inputs and outputs renamed through ``mapping``."""
    if not mapping:
        return node
    ins = tuple(mapping.get(i, i) if i else i for i in node.inputs)
    outs = tuple(mapping.get(o, o) if o else o for o in node.outputs)
    if ins == node.inputs and outs == node.outputs:
        return node
    return node.with_(inputs=ins, outputs=outs)


def resolve(mapping: Mapping[str, str], name: str) -> str:
    """Follows ``mapping`` until a name that is not a key (alias chains)."""
    seen = set()
    while name in mapping and name not in seen:
        seen.add(name)
        name = mapping[name]
    return name


def remove_forwarding(graph: Graph, protected: set[str],
                      forwards: Mapping[str, tuple[str, str]]) -> tuple[Graph, int]:
    """Removes nodes that merely forward one input to their (one used) output.

    ``forwards`` maps a node name to ``(src, dst)``: the node's output ``dst`` equals its input
    ``src``. Readers of ``dst`` then read ``src``. A protected ``dst`` keeps its name by renaming
    ``src`` to ``dst`` at its producer, when ``src`` is an unprotected node output not renamed
    yet; otherwise the node stays. Returns the new graph and how many nodes were removed.
    """
    producers = graph.producers()
    external = set(graph.inputs) | set(graph.constants)
    subst: dict[str, str] = {}
    renames: dict[str, str] = {}
    kept: list[Node] = []
    removed = 0
    for node in graph.nodes:
        node = rename_inputs(node, {i: resolve(subst, i) for i in node.inputs if i in subst})
        fw = forwards.get(node.name)
        if fw is None:
            kept.append(node)
            continue
        src, dst = resolve(subst, fw[0]), fw[1]
        if dst not in protected:
            subst[dst] = src
            removed += 1
            continue
        if src in producers and src not in external and src not in protected and src not in renames:
            renames[src] = dst
            removed += 1
            continue
        kept.append(node.with_(inputs=(src,) + node.inputs[1:]))
    nodes = [rename_all(n, renames) for n in kept]
    types = dict(graph.types)
    for src in renames:
        types.pop(src, None)
    return graph.copy(nodes=nodes, types=types), removed


def dead_code(graph: Graph, protected: set[str]) -> Graph:
    """``graph`` without nodes and constants nothing protected depends on; types pruned too."""
    live = set(protected)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs if o):
            kept.append(node)
            live.update(i for i in node.inputs if i)
    kept.reverse()
    constants = {k: v for k, v in graph.constants.items() if k in live}
    defined = set(graph.inputs) | set(constants) | {o for n in kept for o in n.outputs if o}
    types = {k: v for k, v in graph.types.items() if k in defined}
    return graph.copy(nodes=kept, constants=constants, types=types)


def contiguous(value: np.ndarray) -> np.ndarray:
    """``value`` as a C-contiguous array, keeping 0-d arrays 0-d (``np.ascontiguousarray`` does not)."""
    value = np.asarray(value)
    return value if value.flags.c_contiguous else value.copy(order="C")


def const_type(value: np.ndarray) -> TensorType:
    """The ``TensorType`` of a numpy constant."""
    from ember.ir.dtype import DType

    return TensorType(DType.from_numpy(value.dtype), tuple(int(d) for d in value.shape))


def static_dims(shape: Sequence[Dim]) -> tuple[int, ...] | None:
    """``shape`` as ints when every dim is known, else ``None`` (some dim is a symbol)."""
    dims = tuple(d for d in shape if isinstance(d, int))
    return dims if len(dims) == len(shape) else None


def scalar_value(value: np.ndarray | None) -> float | None:
    """The single value of a constant with one element (any shape), else ``None``."""
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def is_scalar(value: np.ndarray | None, target: float, rtol: float = 1e-6) -> bool:
    """Whether ``value`` is a one-element constant close to ``target``."""
    v = scalar_value(value)
    return v is not None and abs(v - target) <= rtol * max(1.0, abs(target))


def all_equal(value: np.ndarray | None, target: float) -> bool:
    """Whether every element of the constant ``value`` equals ``target``."""
    return value is not None and value.size > 0 and bool(np.all(value == target))

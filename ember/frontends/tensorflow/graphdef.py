"""Frozen TensorFlow graphs (GraphDef): reading one, and choosing its inputs and outputs.

By default the inputs are the ``Placeholder`` nodes the outputs are computed from, and the
output is the one sink (a node nothing reads) computed from a placeholder; several such sinks
are ambiguous and listed in the error. ``inputs=[...]``/``outputs=[...]`` name them instead,
as nodes (``"x"``, meaning ``"x:0"``) or tensors (``"split:1"``); an input that is not a
placeholder cuts the graph there (a new placeholder takes its place). Ember's graph names each
input and output after its node (``"x"``), or its tensor when that is not the node's first
output (``"split:1"``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from ember.errors import ModelLoadError
from ember.frontends.graph_builder import ShapeMap
from ember.frontends.tensorflow.functions import check_shape_names
from ember.frontends.tensorflow.traced import Traced

#: Ops that are not the data a model computes (never default outputs).
_NOT_OUTPUTS = frozenset({"Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "Assert", "SaveV2",
                          "RestoreV2", "Save", "Restore", "SaveSlices", "MergeV2Checkpoints",
                          "VariableV2", "Variable", "VarHandleOp", "VarIsInitializedOp",
                          "AssignVariableOp", "Assign", "Print", "PrintV2", "ShardedFilename"})
#: Ops that hold state: a graph still reading them is not frozen.
_VARIABLES = frozenset({"VariableV2", "Variable", "VarHandleOp", "ReadVariableOp"})


def tensor(name: str) -> str:
    """``"x"`` -> ``"x:0"``; ``"x:1"`` stays."""
    name = name.lstrip("^")
    return name if ":" in name else f"{name}:0"


def node_of(name: str) -> str:
    return name.lstrip("^").split(":")[0]


def user_name(t: str) -> str:
    """The name Ember's graph gives tensor ``t``: its node's, unless it is not output 0."""
    return t[:-2] if t.endswith(":0") else t


def read(tf: Any, source: Any, label: str) -> Any:
    """The GraphDef in ``source``: a ``tf.compat.v1.GraphDef``, serialized bytes, or a path to a
    binary ``.pb`` or text ``.pbtxt`` file."""
    graph_def_type = tf.compat.v1.GraphDef
    if isinstance(source, graph_def_type):
        return source
    from google.protobuf import message, text_format

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ModelLoadError(f"TensorFlow graph file {label} does not exist (or is not a file); "
                                 f"check the path")
        data = path.read_bytes()
        if path.suffix.lower() == ".pbtxt":
            graph_def = graph_def_type()
            try:
                text_format.Parse(data.decode("utf-8"), graph_def)
            except (text_format.ParseError, UnicodeDecodeError) as e:
                raise ModelLoadError(f"{label} is not a text-format TensorFlow GraphDef ({e}); "
                                     f"re-export it with tf.io.write_graph(..., as_text=True)") from None
            return graph_def
    graph_def = graph_def_type()
    try:
        graph_def.ParseFromString(data)
    except (message.DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{label} is not a TensorFlow GraphDef ({type(e).__name__}: {e}); the file "
                             f"is truncated or not a frozen graph. Re-export it with "
                             f"tf.io.write_graph(graph_def, folder, name, as_text=False)") from None
    if not graph_def.node:
        raise ModelLoadError(f"{label} parsed as a TensorFlow GraphDef with no nodes; it is not a "
                             f"frozen graph (or it is empty)")
    return graph_def


@dataclass
class _Graph:
    """A GraphDef with TensorFlow's view of it (tensor types) and its edges."""

    graph_def: Any
    tf_graph: Any
    nodes: dict[str, Any]
    read: set[str]

    def op(self, name: str) -> str:
        return str(self.nodes[name].op)

    def upstream(self, names: Iterable[str], stop: frozenset[str] = frozenset()) -> list[str]:
        """Nodes ``names`` depend on (themselves included), in graph order, not walking past
        ``stop``."""
        seen: set[str] = set()
        todo = [n for n in names]
        while todo:
            n = todo.pop()
            if n in seen or n not in self.nodes:
                continue
            seen.add(n)
            if n not in stop:
                todo.extend(node_of(i) for i in self.nodes[n].input)
        return [n.name for n in self.graph_def.node if n.name in seen]

    def describe(self, t: str) -> str:
        """``'name' (Op, float32 [?, 10])`` for messages."""
        try:
            ten = self.tf_graph.get_tensor_by_name(t)
            dims = ten.shape.as_list() if ten.shape.rank is not None else None
            shape = "unknown rank" if dims is None else "[" + ", ".join("?" if d is None else str(d)
                                                                       for d in dims) + "]"
            kind = f"{ten.dtype.name} {shape}"
        except (KeyError, ValueError):
            kind = "?"
        return f"'{user_name(t)}' ({self.op(node_of(t))}, {kind})"


def _analyse(tf: Any, graph_def: Any, label: str) -> _Graph:
    tf_graph = tf.Graph()
    try:
        with tf_graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
    except (ValueError, TypeError, KeyError) as e:
        raise ModelLoadError(f"TensorFlow cannot import the graph of {label} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:400]}); the graph is damaged, or uses ops "
                             f"of a TensorFlow add-on that is not installed") from None
    nodes = {n.name: n for n in graph_def.node}
    read = {node_of(i) for n in graph_def.node for i in n.input}
    return _Graph(graph_def, tf_graph, nodes, read)


def _check_names(g: _Graph, given: Sequence[str], what: str, candidates: list[str], label: str) -> None:
    for name in given:
        t = tensor(name)
        if node_of(t) not in g.nodes:
            raise ModelLoadError(
                f"{label} has no node {node_of(t)!r} (from {what}={list(given)!r}); its "
                f"{what} candidates are {', '.join(candidates) or 'none'}")
        try:
            g.tf_graph.get_tensor_by_name(t)
        except (KeyError, ValueError):
            raise ModelLoadError(f"{label}: node {node_of(t)!r} has no output {t!r} (from "
                                 f"{what}={list(given)!r})") from None


def _placeholders(g: _Graph) -> list[str]:
    return [n.name for n in g.graph_def.node if n.op == "Placeholder"]


def _default_outputs(g: _Graph, inputs: Optional[list[str]], label: str) -> list[str]:
    feeds = set(node_of(t) for t in inputs) if inputs else set(_placeholders(g))
    sinks = [n.name for n in g.graph_def.node if n.name not in g.read and n.op not in _NOT_OUTPUTS]
    fed = [s for s in sinks if feeds & set(g.upstream([s], frozenset(feeds)))]
    if len(fed) == 1:
        return [tensor(fed[0])]
    listed = ", ".join(g.describe(tensor(s)) for s in (fed or sinks)[:20])
    more = f" and {len(fed or sinks) - 20} more" if len(fed or sinks) > 20 else ""
    if not fed:
        raise ModelLoadError(
            f"{label}: no node that nothing reads is computed from an input, so Ember cannot tell the "
            f"graph's outputs (its unread nodes: {listed or 'none'}{more}); name them: outputs=['...']")
    names = [user_name(tensor(s)) for s in fed]
    raise ModelLoadError(
        f"{label} has {len(fed)} possible outputs (nodes that nothing reads, computed from the inputs): "
        f"{listed}{more}. Name the ones you want: outputs={names!r} takes all of them")


def select(tf: Any, graph_def: Any, label: str, inputs: Optional[Sequence[str]],
           outputs: Optional[Sequence[str]], shapes: Optional[ShapeMap]) -> Traced:
    """The frozen graph with its inputs and outputs chosen (see the module's docstring)."""
    g = _analyse(tf, graph_def, label)
    placeholders = _placeholders(g)
    if inputs is not None:
        _check_names(g, inputs, "inputs", [repr(p) for p in placeholders], label)
    sinks = [n.name for n in g.graph_def.node if n.name not in g.read and n.op not in _NOT_OUTPUTS]
    if outputs is not None:
        _check_names(g, outputs, "outputs", [repr(s) for s in sinks], label)
    in_tensors = [tensor(n) for n in inputs] if inputs is not None else None
    out_tensors = [tensor(n) for n in outputs] if outputs else _default_outputs(g, in_tensors, label)
    cut = frozenset(node_of(t) for t in in_tensors or [])
    needed = g.upstream([node_of(t) for t in out_tensors], cut)
    if in_tensors is None:
        in_tensors = [tensor(n) for n in needed if g.op(n) == "Placeholder"]
    stateful = [n for n in needed if g.op(n) in _VARIABLES and n not in cut]
    if stateful:
        raise ModelLoadError(
            f"{label} is not frozen: it reads {len(stateful)} variable(s) ({', '.join(stateful[:5])}). "
            f"Freeze it first (convert_variables_to_constants_v2 on a concrete function) or pass the "
            f"SavedModel folder instead")
    if not in_tensors:
        raise ModelLoadError(f"{label}: the outputs {[user_name(t) for t in out_tensors]} are computed from "
                             f"no Placeholder, so the model has nothing to feed; name its inputs: inputs=['...']")
    names = {t: user_name(t) for t in in_tensors + out_tensors}
    check_shape_names(shapes, [names[t] for t in in_tensors], label)
    graph_def, in_tensors, names = _cut(tf, g, in_tensors, names)
    by_name = {names[t]: t for t in in_tensors}
    override = {}
    for n, dims in (shapes or {}).items():
        override[by_name[n]] = [d if isinstance(d, int) and not isinstance(d, bool) else -1 for d in dims]
    _check_ranks(g, [t for t in in_tensors if names[t] not in (shapes or {})], names, label)
    return Traced(graph_def, in_tensors, out_tensors, names, label, "frozen graph", "tensorflow",
                  shape_override=override)


def _check_ranks(g: _Graph, tensors: list[str], names: dict[str, str], label: str) -> None:
    for t in tensors:
        try:
            rank = g.tf_graph.get_tensor_by_name(t).shape.rank
        except (KeyError, ValueError):
            continue  # a placeholder made by the cut: its source tensor was checked
        if rank is None:
            raise ModelLoadError(f"{label}: input {names[t]!r} has an unknown rank; give its shape: "
                                 f"shapes={{{names[t]!r}: (...)}}")


def _cut(tf: Any, g: _Graph, in_tensors: list[str],
         names: dict[str, str]) -> tuple[Any, list[str], dict[str, str]]:
    """The graph with a new Placeholder for every input that is not one, its readers rewired."""
    if all(g.op(node_of(t)) == "Placeholder" and t.endswith(":0") for t in in_tensors):
        return g.graph_def, in_tensors, names
    graph_def = type(g.graph_def)()
    graph_def.CopyFrom(g.graph_def)
    taken = set(g.nodes)
    replaced: dict[str, str] = {}
    new_inputs = []
    for t in in_tensors:
        if g.op(node_of(t)) == "Placeholder" and t.endswith(":0"):
            new_inputs.append(t)
            continue
        src = g.tf_graph.get_tensor_by_name(t)
        name = f"{node_of(t)}__ember_input_{t.split(':')[1]}"
        while name in taken:
            name += "_"
        taken.add(name)
        node = graph_def.node.add(name=name, op="Placeholder")
        node.attr["dtype"].type = src.dtype.as_datatype_enum
        if src.shape.rank is not None:
            node.attr["shape"].shape.CopyFrom(src.shape.as_proto())
        replaced[t] = f"{name}:0"
        new_inputs.append(f"{name}:0")
        names = {k: v for k, v in names.items() if k != t} | {f"{name}:0": names[t]}
    for n in graph_def.node:
        for i, inp in enumerate(n.input):
            if not inp.startswith("^") and tensor(inp) in replaced:
                n.input[i] = replaced[tensor(inp)]
    return graph_def, new_inputs, names

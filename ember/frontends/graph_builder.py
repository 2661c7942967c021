"""``GraphBuilder``: building an Ember IR graph node by node, for any frontend.

A frontend reads its own format (ONNX protobuf, a Caffe prototxt, a traced torch graph, ...)
and writes the IR through these helpers: inputs (with the caller's shape overrides checked
against the file's), constants, nodes under fresh unique names, and a verified ``Graph`` at the
end. Each node's output types are inferred as it is added, so a converter can look at the types
of everything before it (the ONNX frontend needs them to turn ``auto_pad`` into pads, say).
What is specific to one format (attribute parsing, opset dispatch, the format's element types)
stays in that frontend's package.

>>> import numpy as np
>>> from ember.ir import DType, OpType
>>> b = GraphBuilder("example")
>>> _ = b.add_input("x", DType.FLOAT32, (1, 4))
>>> w = b.add_constant("w", np.ones((4, 2), np.float32))
>>> _ = b.add_node(OpType.MATMUL, ("x", w), ("y",), name="mm")
>>> b.finish("g", ["y"]).types["y"].shape
(1, 2)
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from ember.errors import GraphError, ModelLoadError, ShapeError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node, SourceInfo
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType, format_shape
from ember.ops.common import factorize, make_dim
from ember.ops.infer import constant_type, infer_graph, infer_node_types
from ember.ops.verify import verify_graph

#: Input shape overrides as callers give them: ``{"input": (1, 3, 224, 224)}``; dims may be
#: symbolic strings.
ShapeMap = Mapping[str, Sequence[Dim]]


def symbolic_dim(text: str) -> Dim:
    """A file's symbolic dim in Ember's canonical form, written once, at import.

    Products are normalized (``"batch * 2"`` -> ``"batch*2"``, ``"2*batch"`` -> ``"batch*2"``) so
    that shape inference can match them; a plain number becomes an int.

    >>> symbolic_dim("2 * batch"), symbolic_dim("seq")
    ('batch*2', 'seq')
    """
    return make_dim(*factorize(text))


class GraphBuilder:
    """The IR under construction: types, constants, build-time shape values and nodes.

    ``types`` holds every tensor defined so far; ``values`` the build-time values of small shape
    tensors (see ``ember.ops.shape_values``), which converters may read like constants; ``used``
    the tensors some node or graph output reads (a frontend fills it before converting, to know
    which optional outputs matter).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.types: dict[str, TensorType] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.used: set[str] = set()
        self._names: set[str] = set()
        self._node_names: set[str] = set()

    # ---- reading ------------------------------------------------------------------------
    def type(self, name: str) -> TensorType:
        """The type of a tensor defined so far; GraphError naming it otherwise."""
        try:
            return self.types[name]
        except KeyError:
            raise GraphError(f"{self.source}: tensor {name!r} is used before it is defined") from None

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant tensor, else None ("" - an omitted input - gives None)."""
        return self.constants.get(name) if name else None

    def value(self, name: str) -> Optional[np.ndarray]:
        """A constant, or the build-time value of a shape tensor (see ember.ops.shape_values)."""
        if not name:
            return None
        return self.constants[name] if name in self.constants else self.values.get(name)

    def const_ints(self, name: str) -> Optional[tuple[int, ...]]:
        value = self.const(name)
        return None if value is None else tuple(int(v) for v in value.reshape(-1))

    def const_floats(self, name: str) -> Optional[tuple[float, ...]]:
        value = self.const(name)
        return None if value is None else tuple(float(v) for v in value.reshape(-1))

    def all_const(self, names: Iterable[str]) -> bool:
        """True when every present (non-empty) name is a constant."""
        return all(self.const(n) is not None for n in names if n)

    def is_used(self, name: str) -> bool:
        return bool(name) and name in self.used

    # ---- names --------------------------------------------------------------------------
    def reserve(self, names: Iterable[str]) -> None:
        """Marks tensor names the source file uses, so ``fresh`` never hands them out."""
        self._names.update(n for n in names if n)

    def fresh(self, base: str) -> str:
        """A tensor name not used yet: ``base``, else ``base_1``, ``base_2``, ..."""
        name = _unused(base, lambda n: n in self._names or n in self.types)
        self._names.add(name)
        return name

    def _node_name(self, base: str) -> str:
        name = _unused(base, self._node_names.__contains__)
        self._node_names.add(name)
        return name

    # ---- writing ------------------------------------------------------------------------
    def add_input(self, name: str, dtype: DType, dims: Optional[Sequence[Dim]],
                  given: Optional[Sequence[Dim]] = None) -> TensorType:
        """Declares a graph input; returns its type.

        ``dims`` is the file's shape (None when the file gives not even a rank); ``given`` is the
        caller's override, which must keep the rank and every fixed dim of the file's shape.
        """
        if given is not None:
            shape = self._override(name, dims, tuple(given))
        elif dims is None:
            raise ShapeError(f"{self.source}: input {name!r} has no shape (not even a rank); pass "
                             f"shapes={{{name!r}: (...)}} to ember.frontends.load / --shapes to "
                             f"ember build")
        else:
            shape = tuple(dims)
        t = TensorType(dtype, shape)
        self.inputs.append(name)
        self.types[name] = t
        self._names.add(name)
        return t

    def _override(self, name: str, dims: Optional[Sequence[Dim]], given: tuple[Dim, ...]) -> tuple[Dim, ...]:
        if dims is None:
            return given
        if len(given) != len(dims):
            raise ShapeError(f"shape {format_shape(given)} given for input {name!r} has rank "
                             f"{len(given)}, but {self.source} declares rank {len(dims)} "
                             f"({format_shape(dims)}); give {len(dims)} dims")
        for i, (m, g) in enumerate(zip(dims, given)):
            if isinstance(m, int) and isinstance(g, int) and m != g:
                raise ShapeError(f"shape {format_shape(given)} given for input {name!r} conflicts "
                                 f"with the model's fixed dim {i} = {m} ({format_shape(dims)})")
        return given

    def check_shapes(self, shapes: ShapeMap) -> None:
        """ShapeError when ``shapes`` names tensors that are not graph inputs (call after the
        inputs are added)."""
        unknown = sorted(set(shapes) - set(self.inputs))
        if unknown:
            raise ShapeError(f"shapes given for {unknown}, which are not inputs of {self.source}; "
                             f"its inputs are {self.inputs}")

    def add_constant(self, name: str, value: np.ndarray) -> str:
        """Stores ``value`` (C-contiguous) as the constant ``name``; returns the name."""
        value = np.require(value, requirements="C")
        self.constants[name] = value
        self.types[name] = constant_type(value)
        self._names.add(name)
        return name

    def add_scalar(self, base: str, value: float | int | bool, dtype: DType) -> str:
        """A new rank-0 constant of ``dtype`` under a fresh name derived from ``base``."""
        return self.add_constant(self.fresh(base), np.array(value, dtype=dtype.to_numpy()))

    def add_node(self, op: OpType, inputs: Sequence[str], outputs: Sequence[str], attrs: Any = None,
                 *, name: str, origin: Sequence[str] = ()) -> Node:
        """Appends a node (named ``name``, or ``name_1``... when taken) and infers its outputs'
        types at once; ``origin`` names the source nodes it stands for."""
        node = Node(self._node_name(name), op, tuple(inputs), tuple(outputs), attrs,
                    origin=tuple(origin))
        out_types = infer_node_types(node, self.types, self.constants, self.values)
        for t, out in zip(out_types, node.outputs):
            if out:
                self.types[out] = t
        self.nodes.append(node)
        return node

    # ---- finishing ----------------------------------------------------------------------
    def finish(self, name: str, outputs: Sequence[str], *, opset: int = 0,
               source_info: Optional[SourceInfo] = None) -> Graph:
        """The verified Graph: constants nobody reads are dropped, every type re-inferred.
        ``source_info``: what the frontend knew of the source (format, producer, node count)."""
        for o in outputs:
            if o not in self.types:
                raise ModelLoadError(f"{self.source}: graph output {o!r} is not produced by any "
                                     f"node, input or initializer; the model is malformed")
        used = {i for n in self.nodes for i in n.inputs if i} | set(outputs)
        constants = {k: v for k, v in self.constants.items() if k in used and k not in self.inputs}
        graph = Graph(name=name, nodes=list(self.nodes), inputs=list(self.inputs),
                      outputs=list(outputs), types=dict(self.types), constants=constants,
                      opset=opset, source=self.source,
                      source_info=source_info if source_info is not None else SourceInfo())
        graph = infer_graph(graph)
        verify_graph(graph)
        return graph


def _unused(base: str, taken: Callable[[str], bool]) -> str:
    """``base``, else the first of ``base_1``, ``base_2``, ... that ``taken`` says is free."""
    name, k = base, 0
    while taken(name):
        k += 1
        name = f"{base}_{k}"
    return name

"""State of one import: the IR being built, constants, types, and helpers for handlers."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ember.errors import GraphError, ModelLoadError, UnsupportedOpError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.infer import constant_type, infer_node_types

#: ONNX TensorProto element types Ember has, mapped once here.
ONNX_DTYPES: dict[int, DType] = {
    onnx.TensorProto.FLOAT: DType.FLOAT32, onnx.TensorProto.FLOAT16: DType.FLOAT16,
    onnx.TensorProto.BFLOAT16: DType.BFLOAT16, onnx.TensorProto.DOUBLE: DType.FLOAT64,
    onnx.TensorProto.INT8: DType.INT8, onnx.TensorProto.UINT8: DType.UINT8,
    onnx.TensorProto.INT16: DType.INT16, onnx.TensorProto.INT32: DType.INT32,
    onnx.TensorProto.INT64: DType.INT64, onnx.TensorProto.BOOL: DType.BOOL,
}


def onnx_dtype(code: int, what: str) -> DType:
    """The DType of an ONNX element-type code; UnsupportedOpError naming ``what`` otherwise."""
    try:
        return ONNX_DTYPES[code]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
        have = ", ".join(d.value for d in ONNX_DTYPES.values())
        raise UnsupportedOpError(f"{what} has element type {name}, which Ember does not support "
                                 f"(supported: {have})") from None


def tensor_to_array(t: onnx.TensorProto, what: str) -> np.ndarray:
    """A TensorProto as a numpy array with an Ember dtype (bfloat16 is not representable)."""
    dtype = onnx_dtype(t.data_type, what)
    if dtype is DType.BFLOAT16:
        raise UnsupportedOpError(f"{what} is a bfloat16 constant; Ember keeps constants in numpy, "
                                 f"which has no bfloat16. Convert the model's weights to float32")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:  # onnx raises several kinds for corrupt payloads
        raise ModelLoadError(f"{what}: cannot decode tensor data ({e}); the file may be corrupt") from None
    return np.require(arr.astype(dtype.to_numpy(), copy=False), requirements="C")


def decode_attribute(a: onnx.AttributeProto, where: str) -> Any:
    """An attribute's Python value: strings decoded, tensors as numpy arrays, lists as tuples."""
    if a.type == onnx.AttributeProto.TENSOR:
        return tensor_to_array(a.t, f"attribute {a.name!r} of {where}")
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS,
                  onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS,
                  onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS):
        return a  # handlers that accept these decode them themselves
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return tuple(v.decode("utf-8") if isinstance(v, bytes) else v for v in value)
    return value


@dataclass
class OnnxNode:
    """One ONNX node as handlers see it; ``inputs``/``outputs`` use "" for omitted ones."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    opset: int

    def input(self, i: int) -> str:
        return self.inputs[i] if i < len(self.inputs) else ""

    def output(self, i: int) -> str:
        return self.outputs[i] if i < len(self.outputs) else ""

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    @property
    def label(self) -> str:
        return f"node {self.name!r} ({self.op_type}, opset {self.opset})"


@dataclass
class ImportContext:
    """What handlers read (types, constants) and write (IR nodes) during one import."""

    source: str
    opset: int
    opsets: dict[str, int] = field(default_factory=dict)  # domain -> version
    types: dict[str, TensorType] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # build-time shape values
    nodes: list[Node] = field(default_factory=list)
    used: set[str] = field(default_factory=set)  # tensors read by a node or a graph output
    _names: set[str] = field(default_factory=set)
    _node_names: set[str] = field(default_factory=set)

    # ---- reading --------------------------------------------------------------------
    def type(self, name: str) -> TensorType:
        try:
            return self.types[name]
        except KeyError:
            raise GraphError(f"{self.source}: tensor {name!r} is used before it is defined") from None

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant tensor (initializer or Constant node), else None."""
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

    def all_const(self, names: Sequence[str]) -> bool:
        """True when every present (non-empty) name is a constant."""
        return all(self.const(n) is not None for n in names if n)

    def is_used(self, name: str) -> bool:
        return bool(name) and name in self.used

    # ---- writing --------------------------------------------------------------------
    def add_constant(self, name: str, value: np.ndarray) -> str:
        value = np.require(value, requirements="C")
        self.constants[name] = value
        self.types[name] = constant_type(value)
        self._names.add(name)
        return name

    def fresh(self, base: str) -> str:
        """A tensor or node name not used yet."""
        name, k = base, 0
        while name in self._names or name in self.types:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def reserve(self, names: Sequence[str]) -> None:
        self._names.update(n for n in names if n)

    def emit(self, src: OnnxNode, op: OpType, inputs: Sequence[str], outputs: Sequence[str],
             attrs: Any = None, suffix: str = "") -> Node:
        """Adds an IR node made from ``src`` and infers its output types right away."""
        base = src.name + (f"/{suffix}" if suffix else "")
        name, k = base, 0
        while name in self._node_names:
            k += 1
            name = f"{base}_{k}"
        self._node_names.add(name)
        node = Node(name, op, tuple(inputs), tuple(outputs), attrs, origin=(src.name,))
        for t, name in zip(infer_node_types(node, self.types, self.constants, self.values), node.outputs):
            if name:
                self.types[name] = t
        self.nodes.append(node)
        return node

    def temp(self, src: OnnxNode, what: str) -> str:
        """A fresh name for an intermediate tensor a handler creates."""
        return self.fresh(f"{src.name}/{what}")

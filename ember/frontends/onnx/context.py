"""What ONNX handlers work with: ``OnnxNode`` (one node, attributes decoded), ``ImportContext``
(the graph being built, on the frontend-neutral ``GraphBuilder``), and ONNX's element types and
tensors as Ember's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ember.errors import ModelLoadError, UnsupportedOpError
from ember.frontends.graph_builder import GraphBuilder
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType

#: ONNX TensorProto element types Ember has, mapped once here.
ONNX_DTYPES: dict[int, DType] = {
    onnx.TensorProto.FLOAT: DType.FLOAT32, onnx.TensorProto.FLOAT16: DType.FLOAT16,
    onnx.TensorProto.BFLOAT16: DType.BFLOAT16, onnx.TensorProto.DOUBLE: DType.FLOAT64,
    onnx.TensorProto.INT8: DType.INT8, onnx.TensorProto.UINT8: DType.UINT8,
    onnx.TensorProto.INT16: DType.INT16,
    onnx.TensorProto.UINT16: DType.UINT16, onnx.TensorProto.INT32: DType.INT32,
    onnx.TensorProto.INT64: DType.INT64, onnx.TensorProto.BOOL: DType.BOOL,
    onnx.TensorProto.UINT32: DType.UINT32, onnx.TensorProto.UINT64: DType.UINT64,
    onnx.TensorProto.FLOAT8E4M3FN: DType.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ: DType.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2: DType.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ: DType.FLOAT8E5M2FNUZ,
}


def onnx_dtype(code: int, what: str) -> DType:
    """The DType of an ONNX element-type code; UnsupportedOpError naming ``what`` otherwise."""
    try:
        return ONNX_DTYPES[code]
    except KeyError:
        known = code in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(code) if known else str(code)
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


class ImportContext(GraphBuilder):
    """One ONNX import: the frontend-neutral ``GraphBuilder`` plus the model's opsets and the
    helpers handlers use to emit IR nodes made from an ONNX node (named after it)."""

    def __init__(self, source: str, opset: int, opsets: Optional[Mapping[str, int]] = None) -> None:
        super().__init__(source)
        self.opset = opset
        self.opsets: dict[str, int] = dict(opsets or {})  # domain -> version
        self.graph_outputs: set[str] = set()  # the model's outputs (the If handler reads them)

    def emit(self, src: OnnxNode, op: OpType, inputs: Sequence[str], outputs: Sequence[str],
             attrs: Any = None, suffix: str = "") -> Node:
        """Adds an IR node made from ``src`` (named after it, ``/suffix`` for the second and
        later nodes of one ONNX node) and infers its output types right away."""
        name = src.name + (f"/{suffix}" if suffix else "")
        return self.add_node(op, inputs, outputs, attrs, name=name, origin=(src.name,))

    def temp(self, src: OnnxNode, what: str) -> str:
        """A fresh name for an intermediate tensor a handler creates."""
        return self.fresh(f"{src.name}/{what}")

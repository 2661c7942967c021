"""Ember's graph IR. Never imports onnx or torch."""
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node, SourceInfo
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType, format_shape, parse_shape

__all__ = ["DType", "Dim", "Graph", "Node", "OpType", "SourceInfo", "TensorType", "format_shape", "parse_shape"]

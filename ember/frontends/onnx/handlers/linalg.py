"""Gemm, MatMul and Einsum."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import direct, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import EinsumAttrs, GemmAttrs


@onnx_op("Gemm", since=7)
def import_gemm(ctx: ImportContext, n: OnnxNode) -> None:
    """Gemm with ONNX defaults (alpha = beta = 1, no transposes); C optional from opset 11."""
    attrs = GemmAttrs(alpha=float(n.attr("alpha", 1.0)), beta=float(n.attr("beta", 1.0)),
                      trans_a=bool(n.attr("transA", 0)), trans_b=bool(n.attr("transB", 0)))
    inputs = n.inputs[:3] if n.input(2) else n.inputs[:2]
    ctx.emit(n, OpType.GEMM, inputs, n.outputs[:1], attrs)


onnx_op("MatMul", since=1)(direct(OpType.MATMUL, nin=2))


@onnx_op("Einsum", since=12)
def import_einsum(ctx: ImportContext, n: OnnxNode) -> None:
    equation = n.attr("equation")
    if not equation:
        raise reject("equation is missing (it is required)")
    ctx.emit(n, OpType.EINSUM, n.inputs, n.outputs[:1], EinsumAttrs(equation=str(equation)))

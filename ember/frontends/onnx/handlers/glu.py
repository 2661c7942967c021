"""Gated linear units: SwiGLU (opset 28), imported as its function body's ops."""
from __future__ import annotations

from ember.errors import ShapeError
from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType


@onnx_op("SwiGLU", since=28)
def import_swiglu(ctx: ImportContext, n: OnnxNode) -> None:
    """SwiGLU(A, B) = Swish_alpha(A) * B = A * Sigmoid(alpha * A) * B, A and B of one shape.

    ONNX's function body is exactly ``Mul(Swish(A), B)``; the four elementwise nodes are what
    Swish imports as plus the Mul, and the elementwise fusion pass makes them one kernel.
    """
    a, b = n.input(0), n.input(1)
    ta, tb = ctx.type(a), ctx.type(b)
    clash = ta.rank != tb.rank or any(isinstance(x, int) and isinstance(y, int) and x != y
                                      for x, y in zip(ta.shape, tb.shape))
    if clash or ta.dtype is not tb.dtype:
        raise ShapeError(f"{n.label}: SwiGLU needs A and B of one type and one shape (it does not "
                         f"broadcast), got A {a!r} {ta} and B {b!r} {tb}")
    if not ta.dtype.is_float:
        raise ShapeError(f"{n.label}: SwiGLU needs float inputs, got A {a!r} {ta}")
    scaled, sig, gate = ctx.temp(n, "scaled"), ctx.temp(n, "sigmoid"), ctx.temp(n, "swish")
    alpha = ctx.add_scalar(f"{n.name}/alpha", float(n.attr("alpha", 1.0)), ta.dtype)
    ctx.emit(n, OpType.MUL, (a, alpha), (scaled,), suffix="scale")
    ctx.emit(n, OpType.SIGMOID, (scaled,), (sig,), suffix="sigmoid")
    ctx.emit(n, OpType.MUL, (a, sig), (gate,), suffix="swish")
    ctx.emit(n, OpType.MUL, (gate, b), n.outputs[:1], suffix="mul")

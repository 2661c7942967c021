"""ONNX ops imported as a few IR nodes of ops Ember already has (no kernel of their own):
CastLike, Size, Sum, Mean, GlobalMaxPool, LpNormalization, Shrink."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import binary_chain, reject
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ops.attrs import CastAttrs, ReduceAttrs, ShapeAttrs


@onnx_op("CastLike", since=15)
def import_cast_like(ctx: ImportContext, n: OnnxNode) -> None:
    """Cast to the element type of input 1 (known at import)."""
    to = ctx.type(n.input(1)).dtype
    ctx.emit(n, OpType.CAST, n.inputs[:1], n.outputs[:1], CastAttrs(to=to, saturate=bool(n.attr("saturate", 1))))


@onnx_op("Size", since=1)
def import_size(ctx: ImportContext, n: OnnxNode) -> None:
    """Size(x) = ReduceProd(Shape(x)) as an int64 scalar."""
    shape = ctx.temp(n, "shape")
    ctx.emit(n, OpType.SHAPE, n.inputs[:1], (shape,), ShapeAttrs(), suffix="shape")
    ctx.emit(n, OpType.REDUCE_PROD, (shape,), n.outputs[:1], ReduceAttrs(axes=(0,), keepdims=False))


@onnx_op("Sum", since=6)
def import_sum(ctx: ImportContext, n: OnnxNode) -> None:
    """Sum of any number of inputs (broadcast): a chain of Adds."""
    binary_chain(ctx, n, OpType.ADD, n.output(0))


@onnx_op("Mean", since=6)
def import_mean(ctx: ImportContext, n: OnnxNode) -> None:
    """Mean of any number of inputs: their Sum divided by the count."""
    total = ctx.temp(n, "sum")
    count = binary_chain(ctx, n, OpType.ADD, total)
    divisor = ctx.add_scalar(f"{n.name}/count", count, ctx.type(total).dtype)
    ctx.emit(n, OpType.DIV, (total, divisor), n.outputs[:1], suffix="mean")


@onnx_op("GlobalMaxPool", since=1)
def import_global_max_pool(ctx: ImportContext, n: OnnxNode) -> None:
    """The max over every spatial axis, keeping them as size 1."""
    rank = ctx.type(n.input(0)).rank
    if rank < 3:
        raise reject(f"its input has rank {rank}; GlobalMaxPool needs [N, C, spatial...]")
    ctx.emit(n, OpType.REDUCE_MAX, n.inputs[:1], n.outputs[:1],
             ReduceAttrs(axes=tuple(range(2, rank)), keepdims=True))


@onnx_op("LpNormalization", since=1)
def import_lp_normalization(ctx: ImportContext, n: OnnxNode) -> None:
    """x / ||x||_p along ``axis`` (p = 1 or 2); 0 where the norm is 0 (the spec's rule)."""
    p, axis = int(n.attr("p", 2)), int(n.attr("axis", -1))
    if p not in (1, 2):
        raise reject(f"p={p} is not 1 or 2")
    x = n.input(0)
    norm, is_zero, quotient = ctx.temp(n, "norm"), ctx.temp(n, "is_zero"), ctx.temp(n, "quotient")
    zero = ctx.add_scalar(f"{n.name}/zero", 0.0, ctx.type(x).dtype)
    op = OpType.REDUCE_L2 if p == 2 else OpType.REDUCE_L1
    ctx.emit(n, op, (x,), (norm,), ReduceAttrs(axes=(axis,), keepdims=True), suffix="norm")
    ctx.emit(n, OpType.EQUAL, (norm, zero), (is_zero,), suffix="is_zero")
    ctx.emit(n, OpType.DIV, (x, norm), (quotient,), suffix="div")
    ctx.emit(n, OpType.WHERE, (is_zero, zero, quotient), n.outputs[:1], suffix="where")


@onnx_op("Shrink", since=9)
def import_shrink(ctx: ImportContext, n: OnnxNode) -> None:
    """x + bias where x < -lambd, x - bias where x > lambd, else 0."""
    x = n.input(0)
    dtype = ctx.type(x).dtype
    lambd, bias = float(n.attr("lambd", 0.5)), float(n.attr("bias", 0.0))
    c = {k: ctx.add_scalar(f"{n.name}/{k}", v, dtype) for k, v in
         (("neg_lambd", -lambd), ("lambd", lambd), ("bias", bias), ("zero", 0.0))}
    low, high, plus, minus, inner = (ctx.temp(n, w) for w in ("low", "high", "plus", "minus", "inner"))
    ctx.emit(n, OpType.LESS, (x, c["neg_lambd"]), (low,), suffix="low")
    ctx.emit(n, OpType.GREATER, (x, c["lambd"]), (high,), suffix="high")
    ctx.emit(n, OpType.ADD, (x, c["bias"]), (plus,), suffix="plus")
    ctx.emit(n, OpType.SUB, (x, c["bias"]), (minus,), suffix="minus")
    ctx.emit(n, OpType.WHERE, (high, minus, c["zero"]), (inner,), suffix="inner")
    ctx.emit(n, OpType.WHERE, (low, plus, inner), n.outputs[:1], suffix="where")


@onnx_op("Swish", since=24)
def import_swish(ctx: ImportContext, n: OnnxNode) -> None:
    """Swish(x) = x * Sigmoid(alpha * x)."""
    x = n.input(0)
    dtype = ctx.type(x).dtype
    scaled, sig = ctx.temp(n, "scaled"), ctx.temp(n, "sigmoid")
    alpha = ctx.add_scalar(f"{n.name}/alpha", float(n.attr("alpha", 1.0)), dtype)
    ctx.emit(n, OpType.MUL, (x, alpha), (scaled,), suffix="scale")
    ctx.emit(n, OpType.SIGMOID, (scaled,), (sig,), suffix="sigmoid")
    ctx.emit(n, OpType.MUL, (x, sig), n.outputs[:1], suffix="mul")


@onnx_op("MeanVarianceNormalization", since=9)
def import_mvn(ctx: ImportContext, n: OnnxNode) -> None:
    """(x - E[x]) / (sqrt(E[(x - E[x])^2]) + 1e-9) over ``axes`` (default N, H, W), as ONNX's
    function body computes it."""
    x = n.input(0)
    rank, dtype = ctx.type(x).rank, ctx.type(x).dtype
    axes = tuple(int(a) % rank for a in n.attr("axes", (0, 2, 3)))
    mean, diff, sq, var, std, den = (ctx.temp(n, w) for w in ("mean", "diff", "sq", "var", "std", "den"))
    red = ReduceAttrs(axes=axes, keepdims=True)
    ctx.emit(n, OpType.REDUCE_MEAN, (x,), (mean,), red, suffix="mean")
    ctx.emit(n, OpType.SUB, (x, mean), (diff,), suffix="sub")
    ctx.emit(n, OpType.MUL, (diff, diff), (sq,), suffix="square")
    ctx.emit(n, OpType.REDUCE_MEAN, (sq,), (var,), red, suffix="var")
    ctx.emit(n, OpType.SQRT, (var,), (std,), suffix="sqrt")
    eps = ctx.add_scalar(f"{n.name}/epsilon", 1e-9, dtype)
    ctx.emit(n, OpType.ADD, (std, eps), (den,), suffix="eps")
    ctx.emit(n, OpType.DIV, (diff, den), n.outputs[:1], suffix="div")

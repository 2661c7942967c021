"""Helpers of the com.microsoft pack: the registration decorator and small lowering pieces."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ir.types import Dim
from ember.ops.attrs import AxesAttrs, CastAttrs, ReduceAttrs, ShapeAttrs
from ember.ops.plugin import LowerFn, Lowering, PluginAttrs, PluginSpec, register_plugin

MS = "com.microsoft"
PACK = "ember.frontends.contrib_ms"


def contrib(op_type: str, domain: str = MS, version: int = 1) -> Callable[[LowerFn], LowerFn]:
    """Registers a lowering as the plugin serving ``op_type`` of ``domain``."""

    def deco(fn: LowerFn) -> LowerFn:
        register_plugin(PluginSpec(op_type, domain, version, PACK, lower=fn, doc=fn.__doc__ or ""))
        return fn

    return deco


def out(lo: Lowering, i: int) -> list[str] | int:
    """``outputs=`` for a node writing the plugin's output ``i`` (a fresh name when the node does
    not name that output)."""
    name = lo.outputs[i] if i < len(lo.outputs) else ""
    return [name] if name else 1


def need(lo: Lowering, i: int, what: str) -> str:
    name = lo.input(i)
    if not name:
        raise lo.reject(f"its required input {i} ({what}) is missing")
    return name


def dim_of(lo: Lowering, x: str, axis: int) -> Dim:
    return lo.type(x).shape[axis]


def int_const(lo: Lowering, values: list[int] | tuple[int, ...], what: str) -> str:
    return lo.constant(np.array(values, dtype=np.int64), what)


def dim_scalar(lo: Lowering, x: str, axis: int, what: str) -> str:
    """A rank-0 int64 tensor holding ``x``'s dim ``axis`` (a constant when static)."""
    t = lo.type(x)
    axis = axis % t.rank
    d = t.shape[axis]
    if isinstance(d, int):
        return lo.scalar(d, DType.INT64, what)
    (shape,) = lo.op(OpType.SHAPE, [x], ShapeAttrs(start=axis, end=axis + 1), suffix=f"{what}_shape")
    (value,) = lo.op(OpType.SQUEEZE, [shape], AxesAttrs(axes=(0,)), suffix=f"{what}")
    return value


def positions(lo: Lowering, x: str, axis: int, what: str, offset: Optional[str] = None) -> str:
    """``arange(dim)`` of ``x``'s dim ``axis`` as int64 (plus the scalar ``offset``)."""
    t = lo.type(x)
    d = t.shape[axis % t.rank]
    if isinstance(d, int) and offset is None:
        return lo.constant(np.arange(d, dtype=np.int64), what)
    zero, one = lo.scalar(0, DType.INT64, f"{what}_start"), lo.scalar(1, DType.INT64, f"{what}_step")
    (r,) = lo.op(OpType.RANGE, [zero, dim_scalar(lo, x, axis, f"{what}_len"), one], None, suffix=what)
    if offset is not None:
        (r,) = lo.op(OpType.ADD, [r, offset], None, suffix=f"{what}_offset")
    return r


def cast(lo: Lowering, x: str, dtype: DType, what: str) -> str:
    if lo.type(x).dtype is dtype:
        return x
    (y,) = lo.op(OpType.CAST, [x], CastAttrs(to=dtype), suffix=what)
    return y


def norm_stats(lo: Lowering, x: str, eps: float, axis: int, mean_out: str, inv_std_out: str,
               rms: bool = False) -> None:
    """The Mean (LayerNorm only) and 1/sqrt(var + eps) outputs, in float32, over [axis, rank)."""
    t = lo.type(x)
    axes = tuple(range(axis % t.rank, t.rank))
    xf = cast(lo, x, DType.FLOAT32, "x_f32")
    red = ReduceAttrs(axes=axes, keepdims=True)
    if rms:
        (sq,) = lo.op(OpType.MUL, [xf, xf], None, suffix="square")
        (var,) = lo.op(OpType.REDUCE_MEAN, [sq], red, suffix="mean_square")
    else:
        (mean,) = lo.op(OpType.REDUCE_MEAN, [xf], red, outputs=[mean_out] if mean_out else 1, suffix="mean")
        (centered,) = lo.op(OpType.SUB, [xf, mean], None, suffix="centered")
        (sq,) = lo.op(OpType.MUL, [centered, centered], None, suffix="square")
        (var,) = lo.op(OpType.REDUCE_MEAN, [sq], red, suffix="var")
    if inv_std_out:
        (shifted,) = lo.op(OpType.ADD, [var, lo.scalar(eps, DType.FLOAT32, "epsilon")], None, suffix="var_eps")
        (std,) = lo.op(OpType.SQRT, [shifted], None, suffix="std")
        lo.op(OpType.RECIPROCAL, [std], None, outputs=[inv_std_out], suffix="inv_std")


def float_attr(a: PluginAttrs, name: str, default: float) -> float:
    return float(a.get(name, default))


def int_attr(a: PluginAttrs, name: str, default: int) -> int:
    return int(a.get(name, default))

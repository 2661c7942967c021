"""Matrix products and convolution: FusedMatMul, FusedConv, MatMulIntegerToFloat,
DynamicQuantizeMatMul and QGemm."""
from __future__ import annotations

from typing import Optional

from ember.frontends.contrib_ms.common import contrib, float_attr, int_attr, need, out
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AutoPad,
    CastAttrs,
    ClipAttrs,
    ConvAttrs,
    HardSigmoidAttrs,
    LeakyReluAttrs,
    QuantizeAttrs,
    TransposeAttrs,
)
from ember.ops.conv import resolve_pads
from ember.ops.plugin import Lowering, PluginAttrs


def _perm(rank: int, trans: bool, trans_batch: bool) -> Optional[tuple[int, ...]]:
    """FusedMatMul's operand permutation: ``transBatch`` moves dim 0 behind the batch dims
    (to rank - 2), ``trans`` swaps the last two."""
    if rank < 2:
        return None
    perm = list(range(rank))
    if trans_batch and rank > 2:
        perm = list(range(1, rank - 1)) + [0, rank - 1]
    if trans:
        perm[-1], perm[-2] = perm[-2], perm[-1]
    return None if perm == list(range(rank)) else tuple(perm)


def _transposed(lo: Lowering, x: str, perm: Optional[tuple[int, ...]], what: str) -> str:
    if perm is None:
        return x
    (t,) = lo.op(OpType.TRANSPOSE, [x], TransposeAttrs(perm=perm), suffix=f"{what}_t")
    return t


@contrib("FusedMatMul")
def fused_matmul(lo: Lowering, a: PluginAttrs) -> None:
    """alpha * op(A) @ op(B), op: transBatch then trans (numpy matmul broadcasting)."""
    x, y = need(lo, 0, "A"), need(lo, 1, "B")
    xa = _transposed(lo, x, _perm(lo.type(x).rank, bool(int_attr(a, "transA", 0)),
                                 bool(int_attr(a, "transBatchA", 0))), "a")
    yb = _transposed(lo, y, _perm(lo.type(y).rank, bool(int_attr(a, "transB", 0)),
                                 bool(int_attr(a, "transBatchB", 0))), "b")
    alpha = float_attr(a, "alpha", 1.0)
    if alpha == 1.0:
        lo.op(OpType.MATMUL, [xa, yb], None, outputs=out(lo, 0), suffix="matmul")
        return
    (prod,) = lo.op(OpType.MATMUL, [xa, yb], None, suffix="matmul")
    lo.op(OpType.MUL, [prod, lo.scalar(alpha, lo.type(prod).dtype, "alpha")], None, outputs=out(lo, 0), suffix="alpha")


_ACTIVATIONS = ("", "Relu", "Tanh", "Sigmoid", "LeakyRelu", "Clip", "HardSigmoid")


@contrib("FusedConv")
def fused_conv(lo: Lowering, a: PluginAttrs) -> None:
    """activation(Conv(X, W, B) + Z), activation one of Relu, Tanh, Sigmoid, LeakyRelu (alpha),
    Clip (min, max), HardSigmoid (alpha, beta) with ``activation_params``."""
    x, w, b, z = need(lo, 0, "X"), need(lo, 1, "W"), lo.input(2), lo.input(3)
    act = str(a.get("activation", "") or "")
    if act not in _ACTIVATIONS:
        raise lo.reject(f"activation {act!r} is not one of {', '.join(repr(s) for s in _ACTIVATIONS[1:])}")
    params = tuple(float(p) for p in a.get("activation_params", ()) or ())
    wt, xt = lo.type(w), lo.type(x)
    kernel = tuple(int(k) for k in a.get("kernel_shape", ()) or ())
    if not kernel:
        if not all(isinstance(d, int) for d in wt.shape[2:]):
            raise lo.reject(f"no kernel_shape and a weight {wt} with symbolic spatial dims")
        kernel = tuple(int(d) for d in wt.shape[2:])
    k = len(kernel)
    strides = tuple(int(s) for s in a.get("strides", ()) or ()) or (1,) * k
    dilations = tuple(int(s) for s in a.get("dilations", ()) or ()) or (1,) * k
    pads = tuple(int(s) for s in a.get("pads", ()) or ()) or (0,) * (2 * k)
    try:
        auto = AutoPad(str(a.get("auto_pad", "NOTSET") or "NOTSET"))
    except ValueError:
        raise lo.reject(f"auto_pad={a.get('auto_pad')!r} is not one of "
                       + ", ".join(p.value for p in AutoPad)) from None
    spatial = xt.shape[2:]
    if auto is not AutoPad.NOTSET and (auto is AutoPad.VALID or all(isinstance(d, int) for d in spatial)):
        pads = resolve_pads(auto, spatial, kernel, strides, dilations, pads)  # type: ignore[arg-type]
        auto = AutoPad.NOTSET
    attrs = ConvAttrs(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                      group=int_attr(a, "group", 1), auto_pad=auto)
    last = not z and not act
    (y,) = lo.op(OpType.CONV, [x, w] + ([b] if b else []), attrs, outputs=out(lo, 0) if last else 1, suffix="conv")
    if z:
        (y,) = lo.op(OpType.ADD, [y, z], None, outputs=out(lo, 0) if not act else 1, suffix="sum")
    if not act:
        return
    if act in ("Relu", "Tanh", "Sigmoid"):
        lo.op({"Relu": OpType.RELU, "Tanh": OpType.TANH, "Sigmoid": OpType.SIGMOID}[act], [y], None,
             outputs=out(lo, 0), suffix=act.lower())
    elif act == "LeakyRelu":
        lo.op(OpType.LEAKY_RELU, [y], LeakyReluAttrs(alpha=params[0] if params else 0.01), outputs=out(lo, 0),
             suffix="leaky_relu")
    elif act == "HardSigmoid":
        alpha = params[0] if len(params) > 0 else 0.2
        beta = params[1] if len(params) > 1 else 0.5
        lo.op(OpType.HARD_SIGMOID, [y], HardSigmoidAttrs(alpha=alpha, beta=beta), outputs=out(lo, 0),
             suffix="hard_sigmoid")
    else:
        if len(params) != 2:
            raise lo.reject(f"activation Clip needs activation_params (min, max), got {params}")
        lo.op(OpType.CLIP, [y], ClipAttrs(min=params[0], max=params[1]), outputs=out(lo, 0), suffix="clip")


def _scaled(lo: Lowering, acc: str, scales: list[str], bias: str, output: list[str] | int,
            alpha: float = 1.0) -> str:
    """float(acc) * scale_0 * scale_1 [* alpha] [+ bias] into ``output``."""
    (y,) = lo.op(OpType.CAST, [acc], CastAttrs(to=DType.FLOAT32), suffix="acc_f32")
    (s,) = lo.op(OpType.MUL, scales, None, suffix="scales")
    if alpha != 1.0:
        (s,) = lo.op(OpType.MUL, [s, lo.scalar(alpha, DType.FLOAT32, "alpha")], None, suffix="alpha")
    (y,) = lo.op(OpType.MUL, [y, s], None, outputs=output if not bias else 1, suffix="scale")
    if bias:
        (y,) = lo.op(OpType.ADD, [y, bias], None, outputs=output, suffix="bias")
    return y


def _float_scale(lo: Lowering, name: str, what: str) -> str:
    if lo.type(name).dtype is not DType.FLOAT32:
        raise lo.reject(f"{what} is {lo.type(name).dtype.value}; only float32 scales are supported")
    return name


@contrib("MatMulIntegerToFloat")
def matmul_integer_to_float(lo: Lowering, a: PluginAttrs) -> None:
    """(A - a_zero_point) @ (B - b_zero_point) * a_scale * b_scale + bias, in float32."""
    x, y = need(lo, 0, "A"), need(lo, 1, "B")
    a_scale = _float_scale(lo, need(lo, 2, "a_scale"), "a_scale")
    b_scale = _float_scale(lo, need(lo, 3, "b_scale"), "b_scale")
    (acc,) = lo.op(OpType.MATMUL_INTEGER, [x, y, lo.input(4), lo.input(5)], None, suffix="matmul_integer")
    _scaled(lo, acc, [a_scale, b_scale], lo.input(6), out(lo, 0))


@contrib("DynamicQuantizeMatMul")
def dynamic_quantize_matmul(lo: Lowering, a: PluginAttrs) -> None:
    """A quantized to uint8 as DynamicQuantizeLinear does, then MatMulIntegerToFloat."""
    x, y = need(lo, 0, "A"), need(lo, 1, "B")
    b_scale = _float_scale(lo, need(lo, 2, "b_scale"), "b_scale")
    xq, x_scale, x_zp = lo.op(OpType.DYNAMIC_QUANTIZE_LINEAR, [x], None, outputs=3, suffix="quantize_a")
    (acc,) = lo.op(OpType.MATMUL_INTEGER, [xq, y, x_zp, lo.input(3)], None, suffix="matmul_integer")
    _scaled(lo, acc, [x_scale, b_scale], lo.input(4), out(lo, 0))


@contrib("QGemm")
def qgemm(lo: Lowering, a: PluginAttrs) -> None:
    """alpha * a_scale * b_scale * ((A' - a_zp) @ (B' - b_zp) + C), A' / B' transposed as asked;
    quantized to (y_scale, y_zero_point) when those are given, else float32."""
    x, x_scale, x_zp = need(lo, 0, "A"), need(lo, 1, "a_scale"), need(lo, 2, "a_zero_point")
    y, y_scale_b, y_zp = need(lo, 3, "B"), need(lo, 4, "b_scale"), lo.input(5)
    c, out_scale, out_zp = lo.input(6), lo.input(7), lo.input(8)
    for t, what in ((x, "A"), (y, "B")):
        if lo.type(t).rank != 2:
            raise lo.reject(f"{what} has rank {lo.type(t).rank}; QGemm takes 2-D A and B")
    xa = _transposed(lo, x, (1, 0) if int_attr(a, "transA", 0) else None, "a")
    yb = _transposed(lo, y, (1, 0) if int_attr(a, "transB", 0) else None, "b")
    (acc,) = lo.op(OpType.MATMUL_INTEGER, [xa, yb, x_zp, y_zp], None, suffix="matmul_integer")
    if c:
        if lo.type(c).dtype is not DType.INT32:
            raise lo.reject(f"C is {lo.type(c).dtype.value}; QGemm's C is int32")
        (acc,) = lo.op(OpType.ADD, [acc, c], None, suffix="c")
    alpha = float_attr(a, "alpha", 1.0)
    scales = [_float_scale(lo, x_scale, "a_scale"), _float_scale(lo, y_scale_b, "b_scale")]
    if not out_scale:
        _scaled(lo, acc, scales, "", out(lo, 0), alpha)
        return
    yf = _scaled(lo, acc, scales, "", 1, alpha)
    inputs = [yf, out_scale] + ([out_zp] if out_zp else [])
    lo.op(OpType.QUANTIZE_LINEAR, inputs, QuantizeAttrs(axis=1), outputs=out(lo, 0), suffix="quantize_y")

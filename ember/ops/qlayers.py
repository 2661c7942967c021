"""INT8 layers made by the optimizer (``ember.passes.int8``): QConv and QGemm.

Their shapes are those of the FusedConv / FusedGemm they replace; the output type is float32, or
the 8-bit type of ``attrs.out`` when the layer writes its output quantized for the INT8 layers
that read it. Input 0 is float32 (the kernel quantizes it) or already 8-bit as ``attrs.x`` says.
"""
from __future__ import annotations

from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import FusedConvAttrs, FusedGemmAttrs, QConvAttrs, QGemmAttrs, QuantParams
from ember.ops.common import Consts, Types, input_at, need, require
from ember.ops.fused import infer_fused_conv, infer_fused_gemm
from ember.ops.registry import register_op

#: The float type of an INT8 layer's float operands.
FLOAT = DType.FLOAT32


def _check_input(t: TensorType | None, q: QuantParams | None, what: str) -> None:
    if t is None:
        return
    allowed = (FLOAT,) if q is None else (FLOAT, q.dtype)
    require(t.dtype in allowed, f"{what} is {t.dtype}; expected {' or '.join(str(d) for d in allowed)}")


def _as_float(t: TensorType | None) -> TensorType | None:
    return None if t is None else TensorType(FLOAT, t.shape)


def _output(out: TensorType, q: QuantParams | None) -> list[TensorType]:
    return [TensorType(FLOAT if q is None else q.dtype, out.shape)]


@register_op(OpType.QCONV, attrs=QConvAttrs)
def infer_qconv(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """QConv(x, w, b?, residual?): FusedConv's shape; float32 or ``out``'s 8-bit output."""
    a: QConvAttrs = node.attrs
    x = need(input_at(in_types, 0), "X")
    _check_input(x, a.x, "QConv input X")
    _check_input(input_at(in_types, 3), a.residual, "QConv residual")
    require(len(a.w_scales) >= 1, "QConv has no weight scales")
    fused = Node(node.name, OpType.FUSED_CONV, node.inputs, node.outputs,
                 FusedConvAttrs(a.conv, a.activation, a.act_params, a.has_residual))
    types = [_as_float(t) for t in in_types]
    out = infer_fused_conv(fused, types, consts)[0]
    require(len(a.w_scales) == out.shape[1], f"QConv has {len(a.w_scales)} weight scales for "
            f"{out.shape[1]} output channels")
    return _output(out, a.out)


@register_op(OpType.QGEMM, attrs=QGemmAttrs)
def infer_qgemm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """QGemm(a, b, c?): FusedGemm's shape; float32 or ``out``'s 8-bit output."""
    a: QGemmAttrs = node.attrs
    x = need(input_at(in_types, 0), "A")
    _check_input(x, a.x, "QGemm input A")
    fused = Node(node.name, OpType.FUSED_GEMM, node.inputs, node.outputs,
                 FusedGemmAttrs(a.gemm, a.activation, a.act_params))
    out = infer_fused_gemm(fused, [_as_float(t) for t in in_types], consts)[0]
    require(len(a.w_scales) == out.shape[-1], f"QGemm has {len(a.w_scales)} weight scales for "
            f"{out.shape[-1]} output columns")
    return _output(out, a.out)

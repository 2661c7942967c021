"""Conv, ConvTranspose, BatchNormalization."""
from __future__ import annotations

from ember.frontends.onnx.context import ImportContext, OnnxNode
from ember.frontends.onnx.handlers.common import ints, reject, reject_used_outputs, strip_trailing_empty
from ember.frontends.onnx.registry import onnx_op
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import (
    AutoPad,
    BatchNormAttrs,
    CausalConvAttrs,
    Col2ImAttrs,
    ConvAttrs,
    ConvTransposeAttrs,
    DeformConvAttrs,
)
from ember.ops.conv import resolve_pads


def auto_pad(n: OnnxNode) -> AutoPad:
    value = n.attr("auto_pad", "NOTSET") or "NOTSET"
    try:
        return AutoPad(value)
    except ValueError:
        raise reject(f"auto_pad={value!r} is not one of "
                     + ", ".join(a.value for a in AutoPad)) from None


def window(n: OnnxNode, kernel: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(strides, dilations, pads) of a conv/pool node, with ONNX defaults, checked for length."""
    k = len(kernel)
    strides = ints(n, "strides", (1,) * k)
    dilations = ints(n, "dilations", (1,) * k)
    pads = ints(n, "pads", (0,) * (2 * k))
    for name, v, want in (("strides", strides, k), ("dilations", dilations, k), ("pads", pads, 2 * k)):
        if len(v) != want:
            raise reject(f"{name} {v} must have {want} entries for a {k}-D kernel")
    return strides, dilations, pads


Ints = tuple[int, ...]


def resolved_padding(n: OnnxNode, x: TensorType, kernel: Ints, strides: Ints, dilations: Ints,
                     pads: Ints) -> tuple[Ints, AutoPad]:
    """Turns auto_pad into explicit pads where the spatial input sizes are static."""
    ap = auto_pad(n)
    spatial = x.shape[2:]
    if ap is AutoPad.NOTSET:
        return pads, ap
    if ap is AutoPad.VALID or all(isinstance(d, int) for d in spatial):
        return resolve_pads(ap, spatial, kernel, strides, dilations, pads), AutoPad.NOTSET  # type: ignore[arg-type]
    if all(s == 1 for s in strides):  # SAME with stride 1 does not depend on the input size
        return resolve_pads(ap, [1] * len(kernel), kernel, strides, dilations, pads), AutoPad.NOTSET
    return (0,) * (2 * len(kernel)), ap


def _kernel(n: OnnxNode, w: TensorType, what: str) -> tuple[int, ...]:
    kernel = ints(n, "kernel_shape")
    if kernel is None:
        if not all(isinstance(d, int) for d in w.shape[2:]):
            raise reject(f"it has no kernel_shape and its weight {w} has symbolic spatial dims")
        kernel = tuple(int(d) for d in w.shape[2:])
    return kernel


@onnx_op("Conv", since=1)
def import_conv(ctx: ImportContext, n: OnnxNode) -> None:
    x, w = ctx.type(n.input(0)), ctx.type(n.input(1))
    kernel = _kernel(n, w, "Conv")
    strides, dilations, pads = window(n, kernel)
    pads, ap = resolved_padding(n, x, kernel, strides, dilations, pads)
    attrs = ConvAttrs(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                      group=int(n.attr("group", 1)), auto_pad=ap)
    inputs = n.inputs[:3] if n.input(2) else n.inputs[:2]
    ctx.emit(n, OpType.CONV, inputs, n.outputs[:1], attrs)


@onnx_op("ConvTranspose", since=1)
def import_conv_transpose(ctx: ImportContext, n: OnnxNode) -> None:
    """Keeps ``output_shape`` / SAME auto_pad; ``ember.ops.conv.conv_transpose_pads`` resolves them."""
    w = ctx.type(n.input(1))
    kernel = _kernel(n, w, "ConvTranspose")
    strides, dilations, pads = window(n, kernel)
    ap = auto_pad(n)
    if ap is AutoPad.VALID:
        pads, ap = (0,) * (2 * len(kernel)), AutoPad.NOTSET
    output_padding = ints(n, "output_padding", (0,) * len(kernel))
    output_shape = ints(n, "output_shape")
    if output_shape is not None and len(output_shape) not in (len(kernel), len(kernel) + 2):
        raise reject(f"output_shape {output_shape} must list the {len(kernel)} spatial dims")
    attrs = ConvTransposeAttrs(
        kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
        output_padding=output_padding, group=int(n.attr("group", 1)), auto_pad=ap,
        output_shape=None if output_shape is None else output_shape[-len(kernel):])
    inputs = n.inputs[:3] if n.input(2) else n.inputs[:2]
    ctx.emit(n, OpType.CONV_TRANSPOSE, inputs, n.outputs[:1], attrs)


@onnx_op("BatchNormalization", since=1)
@onnx_op("BatchNormalization", since=7)
def import_batch_norm(ctx: ImportContext, n: OnnxNode) -> None:
    """Inference-mode BatchNormalization; training outputs and modes are rejected (before opset 7:
    ``is_test=0``, which normalizes with the batch's own statistics)."""
    if ctx.opset < 7 and not int(n.attr("is_test", 0)):
        raise reject("is_test=0 (training mode: the batch's own statistics) is not supported; export the "
                     "model in eval() mode")
    if int(n.attr("spatial", 1)) != 1:
        raise reject("spatial=0 (per-activation statistics) is not supported")
    if int(n.attr("training_mode", 0)):
        raise reject("training_mode=1 is not supported; export the model in eval() mode")
    reject_used_outputs(ctx, n, 1, "training-mode statistics")
    ctx.emit(n, OpType.BATCH_NORM, n.inputs[:5], n.outputs[:1],
             BatchNormAttrs(epsilon=float(n.attr("epsilon", 1e-5))))


@onnx_op("CausalConvWithState", since=27)
def import_causal_conv_with_state(ctx: ImportContext, n: OnnxNode) -> None:
    """CausalConvWithState 27: depthwise causal conv over (past_state ++ input), SiLU optional."""
    activation = str(n.attr("activation", "none"))
    if activation not in ("none", "silu", "swish"):
        raise reject(f"activation={activation!r} (ONNX allows 'none', 'silu', 'swish')")
    ctx.emit(n, OpType.CAUSAL_CONV_WITH_STATE, strip_trailing_empty(n.inputs[:4]), n.outputs[:2],
             CausalConvAttrs(silu=activation != "none"))


@onnx_op("Col2Im", since=18)
def import_col2im(ctx: ImportContext, n: OnnxNode) -> None:
    ctx.emit(n, OpType.COL2IM, n.inputs[:3], n.outputs[:1],
             Col2ImAttrs(strides=ints(n, "strides") or (), dilations=ints(n, "dilations") or (),
                         pads=ints(n, "pads") or ()))


@onnx_op("DeformConv", since=19)
def import_deform_conv(ctx: ImportContext, n: OnnxNode) -> None:
    """DeformConv 19/22 on 2-D inputs (ONNX's reference implements 2-D only)."""
    w = ctx.type(n.input(1))
    if w.rank != 4:
        raise reject(f"a {w.rank - 2}-D kernel; Ember runs 2-D DeformConv only")
    kernel = ints(n, "kernel_shape") or tuple(int(d) for d in w.shape[2:])
    conv = ConvAttrs(kernel_shape=kernel, strides=ints(n, "strides") or (1, 1), pads=ints(n, "pads") or (0, 0, 0, 0),
                     dilations=ints(n, "dilations") or (1, 1), group=int(n.attr("group", 1)))
    ctx.emit(n, OpType.DEFORM_CONV, strip_trailing_empty(n.inputs[:5]), n.outputs[:1],
             DeformConvAttrs(conv=conv, offset_group=int(n.attr("offset_group", 1))))

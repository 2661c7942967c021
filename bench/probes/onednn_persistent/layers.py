"""Ember layers as persistent oneDNN primitives: the adapter the probe swaps into a built engine.

``persistent_kernel(ext, node, ctx)`` makes, for a ``Conv`` / ``FusedConv`` (float32) or ``QConv``
(INT8) node with constant weights and a static input shape, a kernel with Ember's contract
(``run(inputs) -> [output]``) that executes one ``Conv`` of the extension, created here, once:
same weights (INT8: quantized with Ember's own ``quantize_weight`` and the layer's scales, the
input zero point folded into the bias where Ember folds it), same geometry, same epilogue.
``swap_convolutions(engine, ext)`` returns a new engine on the same plan whose convolution steps
run these kernels; every other layer is Ember's own. ``None`` / unchanged where a layer has
something the probe does not cover (3-D convolutions, a dynamic shape, an epilogue oneDNN does
not fuse): that layer keeps Ember's kernel, and the swap reports which.

NaN: oneDNN's relu / clip post-ops turn NaN into 0 where ONNX keeps it (issue 17; Ember applies
them after the call since). ``nan_exact=True`` does the same here (the conv without the post-op,
then ``clamp_`` / ``relu_`` in place), ``False`` fuses them (the fast form, valid when the
input is finite, as Ember's half layers decide with ``finite_or_exact``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch

from ember.backends.base import CompileContext
from ember.backends.cpu.kernels.conv import conv_geometry
from ember.backends.cpu.kernels.qlayers import dequantize, quantize, quantize_weight
from ember.backends.layout import NCHW, planned_format
from ember.errors import BuildError, EmberError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, AutoPad, ConvAttrs, FusedConvAttrs, QConvAttrs
from ember.runtime.engine import Engine

Kernel = Callable[[list], list]
CL = torch.channels_last
_DT = {DType.UINT8: "u8", DType.INT8: "s8"}
_TORCH = {DType.UINT8: torch.uint8, DType.INT8: torch.int8}


@dataclass
class Swap:
    """What ``swap_convolutions`` did: the layers it replaced and those it kept, with why."""

    engine: Engine
    replaced: dict[str, str] = field(default_factory=dict)  # layer -> oneDNN implementation
    kept: dict[str, str] = field(default_factory=dict)  # layer -> reason


def _static_shape(node: Node, ctx: CompileContext) -> Optional[tuple[int, ...]]:
    t = ctx.graph.types.get(node.inputs[0])
    if t is None or not all(isinstance(d, int) for d in t.shape):
        return None
    return tuple(int(d) for d in t.shape)


def _epilogue(act: Activation, params: tuple[float, ...]) -> Optional[tuple[str, float, float]]:
    if act is Activation.NONE:
        return ("none", 0.0, 0.0)
    if act is Activation.RELU:
        return ("relu", 0.0, 0.0)
    if act is Activation.CLIP and len(params) == 2:
        return ("clip", float(params[0]), float(params[1]))
    return None


def _after(kind: str, lo: float, hi: float) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    if kind == "relu":
        return torch.relu_
    if kind == "clip":
        return lambda t: t.clamp_(lo, hi)
    return None


def _padded(a: ConvAttrs) -> bool:
    return any(a.pads or ()) or a.auto_pad not in (AutoPad.NOTSET, AutoPad.VALID)


def persistent_kernel(ext: Any, node: Node, ctx: CompileContext,
                      nan_exact: bool = True) -> tuple[Optional[Kernel], str]:
    """(kernel, oneDNN implementation) for ``node``, or (None, why not)."""
    if node.op not in (OpType.CONV, OpType.FUSED_CONV, OpType.QCONV):
        return None, f"{node.op} is not a convolution"
    w = ctx.const(node.input(1))
    if w is None or w.dim() != 4:
        return None, "weight is not a constant 4-D tensor"
    shape = _static_shape(node, ctx)
    if shape is None or len(shape) != 4:
        return None, "input shape is not static 4-D"
    if node.op is OpType.QCONV:
        return _int8(ext, node, ctx, w, shape)
    a = node.attrs
    conv_a, act, params, residual = ((a.conv, a.activation, tuple(a.act_params), a.has_residual)
                                     if isinstance(a, FusedConvAttrs) else (a, Activation.NONE, (), False))
    ep = _epilogue(act, params)
    if ep is None:
        return None, f"epilogue {act} not covered"
    if w.dtype != torch.float32:
        return None, f"weight dtype {w.dtype}"
    geo = conv_geometry(conv_a, shape, tuple(w.shape))
    kind, lo, hi = ep
    fused = ("none", 0.0, 0.0) if nan_exact else ep
    post = _after(kind, lo, hi) if nan_exact else None
    b = ctx.const(node.input(2))
    conv = ext.Conv(w.contiguous(), None if b is None else b.reshape(-1).float().contiguous(), list(shape),
                    list(geo.strides), list(geo.begins), list(geo.ends), list(geo.dilations), conv_a.group,
                    activation=fused[0], alpha=fused[1], beta=fused[2], residual=residual)
    out_shape = tuple(conv.dst_desc.dims)
    to_nchw = planned_format(ctx, node.outputs[0]) is NCHW
    name = node.name

    def run(inputs: list) -> list:
        x = inputs[0]
        if x.dtype != torch.float32 or tuple(x.shape) != shape:
            raise EmberError(f"layer {name!r}: the persistent primitive was made for float32 {list(shape)}, "
                             f"got {x.dtype} {list(x.shape)}; rebuild the engine for this shape")
        if not x.is_contiguous(memory_format=CL):
            x = x.contiguous(memory_format=CL)
        out = torch.empty(out_shape, memory_format=CL)
        if residual:
            r = inputs[3]
            if r.dtype != torch.float32:
                r = r.float()
            conv.run(x, out, r if r.is_contiguous(memory_format=CL) else r.contiguous(memory_format=CL))
        else:
            conv.run(x, out)
        if post is not None:
            post(out)
        return [out.contiguous() if to_nchw else out]

    return run, conv.impl


def _int8(ext: Any, node: Node, ctx: CompileContext, w: torch.Tensor, shape: tuple[int, ...]
          ) -> tuple[Optional[Kernel], str]:
    """A QConv as Ember's ``qlayers._qconv`` computes it, through a persistent primitive."""
    a: QConvAttrs = node.attrs
    ep = _epilogue(a.activation, tuple(a.act_params))
    if ep is None or (ep[0] == "clip" and a.has_residual):
        return None, f"INT8 epilogue {a.activation} not covered"
    w_scales = torch.tensor(a.w_scales, dtype=torch.float32)
    qw = quantize_weight(w.to(torch.float32), w_scales, 0)
    b = ctx.const(node.input(2))
    bias = b.reshape(-1).to(torch.float32) if b is not None else None
    xp = a.x
    x_zp = xp.zero_point
    if x_zp and not _padded(a.conv):  # as Ember: sum (q - zp) w = sum q w - zp sum w, folded into the bias
        comp = (x_zp * xp.scale) * w_scales.double() * qw.double().sum(dim=(1, 2, 3))
        bias = ((bias.double() if bias is not None else 0.0) - comp).to(torch.float32)
        x_zp = 0
    out = a.out
    res_p = a.residual
    if a.has_residual and out is not None and res_p is None:
        raise BuildError(f"INT8 layer {node.name!r} writes an 8-bit output and has no residual scale")
    geo = conv_geometry(a.conv, shape, tuple(w.shape))
    kind, lo, hi = ep
    dst = "f32" if out is None else _DT[out.dtype]
    acc_p = res_p if out is not None else None  # 8-bit sum into an 8-bit output, else float32
    conv = ext.Conv(qw, bias, list(shape), list(geo.strides), list(geo.begins), list(geo.ends),
                    list(geo.dilations), a.conv.group, activation=kind, alpha=lo, beta=hi,
                    residual=a.has_residual, src_dtype=_DT[xp.dtype], dst_dtype=dst,
                    src_scale=xp.scale, src_zp=x_zp, w_scales=w_scales,
                    dst_scale=1.0 if out is None else out.scale, dst_zp=0 if out is None else out.zero_point,
                    residual_scale=1.0 if acc_p is None else acc_p.scale,
                    residual_zp=0 if acc_p is None else acc_p.zero_point,
                    residual_dtype="" if acc_p is None else _DT[acc_p.dtype])
    out_shape = tuple(conv.dst_desc.dims)
    out_dtype = torch.float32 if out is None else _TORCH[out.dtype]
    x_dtype = _TORCH[xp.dtype]
    to_nchw = out is None and planned_format(ctx, node.outputs[0]) is NCHW
    residual = a.has_residual
    name = node.name

    def run(inputs: list) -> list:
        x = inputs[0]
        if tuple(x.shape) != shape:
            raise EmberError(f"layer {name!r}: the persistent primitive was made for {list(shape)}, got "
                             f"{list(x.shape)}; rebuild the engine for this shape")
        if x.dtype != x_dtype:
            x = quantize(x, xp, torch.empty(x.shape, dtype=torch.float32, memory_format=CL))
        elif not x.is_contiguous(memory_format=CL):
            x = x.contiguous(memory_format=CL)
        y = torch.empty(out_shape, dtype=out_dtype, memory_format=CL)
        if residual:
            r = inputs[3]
            if acc_p is None:
                if r.dtype != torch.float32:
                    if res_p is None:
                        raise EmberError(f"INT8 layer {name!r}: an 8-bit residual without its quantization")
                    r = dequantize(r, res_p)
            elif r.dtype == torch.float32:
                r = quantize(r, acc_p, torch.empty(r.shape, dtype=torch.float32, memory_format=CL))
            conv.run(x, y, r if r.is_contiguous(memory_format=CL) else r.contiguous(memory_format=CL))
        else:
            conv.run(x, y)
        return [y.contiguous() if to_nchw else y]

    return run, conv.impl


def swap_convolutions(engine: Engine, ext: Any, nan_exact: bool = True) -> Swap:
    """A new engine on ``engine``'s plan whose convolution layers run persistent primitives."""
    plan = engine.plan
    new = Engine(plan)
    program = new.compile()
    swap = Swap(new)
    steps = list(program.steps)  # type: ignore[attr-defined]
    constants = program.constants  # type: ignore[attr-defined]
    for i, (node, layer) in enumerate(zip(plan.graph.nodes, plan.layers)):
        if node.op not in (OpType.CONV, OpType.FUSED_CONV, OpType.QCONV):
            continue
        if steps[i].special:
            swap.kept[node.name] = "writes into a Concat slice"
            continue
        ctx = CompileContext(plan.graph, constants, torch.device("cpu"), layer.tactic, layer.precision,
                             plan.records, plan.config)
        kernel, info = persistent_kernel(ext, node, ctx, nan_exact)
        if kernel is None:
            swap.kept[node.name] = info
            continue
        steps[i] = replace(steps[i], kernel=kernel)
        swap.replaced[node.name] = info
    program.steps = tuple(steps)  # type: ignore[attr-defined]
    return swap

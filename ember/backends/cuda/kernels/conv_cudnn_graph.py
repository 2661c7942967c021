"""FusedConv / Conv as one cuDNN graph (``cudnn_graph`` tactic): conv + bias (+ residual)
(+ ReLU / clip) through the cuDNN frontend (``ember.backends.cuda.libs.cudnn_graph``).

It runs the same cuDNN engines as ``cudnn_fused`` (``torch.cudnn_convolution_relu``), but writes
its result wherever it is told (``WriteInto``): its place in the context's arena, or a strided
channel slice of a Concat's buffer. It also covers what ``cudnn_fused`` cannot: no activation,
clip (ReLU6), grouped convolutions. 2-D, half precision (fp16/bf16) only; it applies where the
cuDNN frontend is installed. A geometry cuDNN has no engine for fails when timed and is never
chosen.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ember.backends.activations import ACTIVATIONS
from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cuda.device import cast_float, compute_dtype
from ember.backends.cuda.kernels.conv import (
    ConvGeom,
    clip_bounds,
    conv_attrs,
    conv_bias,
    conv_format,
    conv_weight,
    prepare_input,
    register_padded,
)
from ember.backends.cuda.libs import cudnn_graph
from ember.backends.cuda.libs.triton_ops import pool_output_size
from ember.backends.cuda.registry import register_cuda_kernel
from ember.backends.layout import to_format
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, ConvAttrs, FusedConvAttrs
from ember.plan.records import Records

Tensor = torch.Tensor


def _graph_act(act: Activation) -> Optional[str]:
    """The cuDNN graph's pointwise step for ``act`` (``ActivationRow.cudnn_graph``), ``None``
    where the graph has none (the tactic does not apply)."""
    return ACTIVATIONS[act].cudnn_graph


def _applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    a = node.attrs
    conv = a.conv if isinstance(a, FusedConvAttrs) else a
    act = a.activation if isinstance(a, FusedConvAttrs) else Activation.NONE
    if not isinstance(conv, ConvAttrs) or len(conv.kernel_shape) != 2 or _graph_act(act) is None:
        return False
    if graph is not None and node.input(1) not in graph.constants:
        return False
    return cudnn_graph.available()


@register_cuda_kernel(OpType.FUSED_CONV, "cudnn_graph", rank=12, when=_applies)
@register_cuda_kernel(OpType.CONV, "cudnn_graph", rank=12, when=_applies)
def conv_cudnn_graph(node: Node, ctx: CompileContext) -> Kernel:
    """conv + bias (+ residual) (+ ReLU / clip) as one cuDNN graph, into any output."""
    conv, act, params, has_res = conv_attrs(node)
    if ctx.precision not in ("fp16", "bf16", "fp8"):  # an FP8 layer on a float tactic computes fp16
        raise ValueError(f"node {node.name!r}: the cudnn_graph tactic runs fp16/bf16 layers, not "
                         f"{ctx.precision}; choose another tactic for this layer")
    dtype = compute_dtype(ctx.precision)
    geom = ConvGeom(conv, node, ctx.graph)
    fmt = conv_format(node, ctx)
    w, b = conv_weight(ctx, node, dtype, fmt), conv_bias(ctx, node, dtype)
    bias = None if b is None else b.view(1, -1, 1, 1)
    kind = _graph_act(act)
    if kind is None:
        raise BuildError(f"node {node.name!r}: the cudnn_graph tactic has no step for activation "
                         f"{act.name}; choose another tactic for this layer")
    clip = clip_bounds(params) if act is Activation.CLIP else (None, None)
    stride, dilation = list(geom.stride), list(geom.dilation)

    def reference(x: Tensor, padding, z: Optional[Tensor]):
        def compute(out: Tensor) -> Tensor:
            y = F.conv2d(x.float(), w.float(), None if b is None else b.float(), stride, padding,
                         dilation, geom.groups)
            if z is not None:
                y = y + z.float()
            if kind == "relu":
                y = y.relu()
            elif kind == "clip":
                y = y.clamp(*clip)
            return y

        return compute

    def convolve(inputs, x: Tensor, padding, out: Tensor) -> None:
        z = to_format(cast_float(inputs[3], dtype), fmt) if has_res else None
        try:
            graph = cudnn_graph.conv_graph(x, w, bias, z, out, list(padding), stride, dilation, kind, clip,
                                           check=reference(x, list(padding), z))
        except BuildError as e:
            raise BuildError(f"node {node.name!r} (cudnn_graph tactic): {e}; rebuild the engine on this "
                             f"machine so the builder picks a tactic that runs here") from e
        tensors = {"x": x, "w": w, "out": out}
        if bias is not None:
            tensors["bias"] = bias
        if z is not None:
            tensors["z"] = z
        graph.run(tensors)

    def write(inputs, out: Tensor) -> bool:
        if not accepts(out) or inputs[0] is None or inputs[0].dim() != 4:
            return False
        x, padding = prepare_input(inputs[0], geom, dtype, fmt)
        convolve(inputs, x, padding, out)
        return True

    def accepts(out: Tensor) -> bool:  # any strides cuDNN can describe; channels-last: C fastest
        if out.dim() != 4 or out.dtype != dtype:
            return False
        return out.stride()[1] == 1 if fmt is torch.channels_last else True

    def run(inputs) -> list:
        x, padding = prepare_input(inputs[0], geom, dtype, fmt)  # explicit pads already applied
        size = [pool_output_size(x.shape[2 + i], w.shape[2 + i], geom.stride[i], padding[i], padding[i],
                                 geom.dilation[i], False) for i in range(2)]
        out = torch.empty((x.shape[0], w.shape[0], *size), dtype=dtype, device=x.device, memory_format=fmt)
        convolve(inputs, x, padding, out)
        return [out]

    return with_write_into(run, WriteInto(write, accepts))


register_padded(OpType.FUSED_CONV, "cudnn_graph_cpad8", 16, _applies, conv_cudnn_graph)
register_padded(OpType.CONV, "cudnn_graph_cpad8", 16, _applies, conv_cudnn_graph)

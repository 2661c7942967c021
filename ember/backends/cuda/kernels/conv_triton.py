"""Conv / FusedConv on Ember's Triton implicit-GEMM convolution (``ember.backends.cuda.libs.triton_conv``):
one tactic per tile configuration, ``triton_igemm_<BMxBNxBK>``.

What it is for: it writes its result through any output strides, so the producer of a Concat
input computes straight into its channel slice of the Concat's buffer (``WriteInto``: concat
elimination, ``ember.backends.concat_exec``), where cuDNN (through PyTorch) can only write packed
outputs and pays a copy; and it fuses bias + residual + any epilogue activation in one pass,
where cuDNN fuses only ReLU.

Where it is offered (``when``): 2-D, ungrouped convolutions with a constant 4-D weight whose
output may be channels-last (the kernel indexes channels as the fastest dim for its stores and
loads; it is correct for any strides, just not fast), and only where it can save a memory pass:
the output is a planned in-place Concat input (``concat_slices``), or the epilogue is one cuDNN
cannot fuse (an activation other than ReLU, or a residual without ReLU). Elsewhere cuDNN's own
kernels are faster and timing the Triton variants would only lengthen the build. The tactic timer
(``tuning.py``) times a Concat producer into its slice (or + the copy into it), so the choice
between cuDNN + copy and this kernel is made on what the engine will really run.

The output is in the layer's planned format (``conv_format``), the weight packed once at compile
time, the input read in whatever strides and float dtype it arrives (cast in registers).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.common import arg, auto_pads, split_pads
from ember.backends.cuda.device import compute_dtype
from ember.backends.cuda.kernels.conv import conv_format
from ember.backends.cuda.libs.triton_conv import CONFIGS, PackedWeight, TileConfig
from ember.backends.cuda.registry import register_cuda_kernel
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import Activation, ConvAttrs, FusedConvAttrs
from ember.plan.records import Records

TACTIC_PREFIX = "triton_igemm_"


def conv_parts(node: Node) -> tuple[Optional[ConvAttrs], Activation, tuple[float, ...], bool]:
    """A Conv / FusedConv's (conv attributes, activation, its parameters, whether it adds a residual)."""
    a = node.attrs
    if isinstance(a, FusedConvAttrs):
        return a.conv, a.activation, tuple(a.act_params), a.has_residual
    return (a if isinstance(a, ConvAttrs) else None), Activation.NONE, (), False


def _saves_a_pass(node: Node, graph: Graph, records: Optional[Records]) -> bool:
    """The output is a planned in-place Concat input, or the epilogue is one cuDNN cannot fuse."""
    from ember.backends.concat_exec import planned_slice

    _, act, _, has_res = conv_parts(node)
    if act not in (Activation.NONE, Activation.RELU) or (has_res and act is Activation.NONE):
        return True
    return records is not None and planned_slice(graph, records, node.outputs[0]) is not None


def triton_conv_fits(node: Node, graph: Optional[Graph]) -> bool:
    """Whether the Triton convolution (fp16 or FP8) can compute ``node``: a 2-D ungrouped
    convolution with a constant 4-D weight and an activation its epilogue computes."""
    from ember.backends.cuda.libs.triton_ops import EPILOGUE_ACTIVATIONS

    conv, act, _, _ = conv_parts(node)
    if conv is None or graph is None or len(conv.kernel_shape) != 2 or conv.group != 1:
        return False
    w = graph.constants.get(node.input(1))
    return act in EPILOGUE_ACTIVATIONS and w is not None and w.ndim == 4


def triton_conv_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """``when`` of the ``triton_igemm_*`` tactics (module docstring)."""
    return graph is not None and triton_conv_fits(node, graph) and _saves_a_pass(node, graph, records)


class ConvPads:
    """The conv's (top, left, bottom, right) pads, ``auto_pad`` resolved per input size (the
    last size asked is remembered: an engine sees one shape after another, rarely a new one)."""

    def __init__(self, conv: ConvAttrs, stride: tuple[int, int], dilation: tuple[int, int]) -> None:
        self.conv, self.stride, self.dilation = conv, stride, dilation
        self._last: Optional[tuple[tuple[int, int], tuple[int, ...]]] = None

    def __call__(self, h: int, w: int) -> tuple[int, ...]:
        if self._last is not None and self._last[0] == (h, w):
            return self._last[1]
        c = self.conv
        begins, ends = split_pads(auto_pads(c.auto_pad, c.pads, (h, w), c.kernel_shape, self.stride,
                                            self.dilation))
        pads = (int(begins[0]), int(begins[1]), int(ends[0]), int(ends[1]))
        self._last = ((h, w), pads)
        return pads


def conv_kernel(run: Kernel, compute: Callable[..., object], accepts: Callable[[torch.Tensor], bool],
                out_shape: Callable[[torch.Tensor], tuple[int, int, int, int]]) -> Kernel:
    """``run`` with the ability to write its 4-D output into a given tensor (the arena, a Concat's
    slice) that ``accepts`` it and has the output's shape: ``compute(inputs, dest)`` (the
    convolution tactics that write through any strides: Triton's, INT8 Triton and cuDNN)."""

    def write(inputs, dest: torch.Tensor) -> bool:
        x = inputs[0]
        if not accepts(dest) or x is None or x.dim() != 4 or tuple(dest.shape) != out_shape(x):
            return False
        compute(inputs, dest)
        return True

    return with_write_into(run, WriteInto(write, accepts))


def triton_conv_kernel(node: Node, ctx: CompileContext, packed: PackedWeight, out_dtype: torch.dtype,
                       config: TileConfig, fp8: Optional[tuple[float, torch.Tensor]] = None) -> Kernel:
    """The kernel of a Conv / FusedConv on ``libs.triton_conv`` with its weight ``packed``: the
    output in the layer's planned format and ``out_dtype``, or written into a given view
    (``conv_kernel``); ``fp8``: the FP8 mode's scales (``kernels/conv_fp8.py``)."""
    from ember.backends.cuda.libs import triton_conv as T

    conv, act, params, has_res = conv_parts(node)
    if conv is None:
        raise BuildError(f"node {node.name!r} ({node.op}) is no convolution; choose another tactic")
    b = ctx.const(node.input(2))
    bias = None if b is None else b.detach().to(torch.float32).contiguous()  # fp32 epilogue
    stride = tuple(int(s) for s in (conv.strides or (1, 1)))
    dilation = tuple(int(d) for d in (conv.dilations or (1, 1)))
    pads = ConvPads(conv, stride, dilation)
    fmt = conv_format(node, ctx)
    prec = ctx.precision

    def out_shape(x: torch.Tensor) -> tuple[int, int, int, int]:
        n, _, h, wd = x.shape
        oh, ow = T.output_hw(h, wd, (packed.kh, packed.kw), stride, pads(h, wd), dilation)
        return (n, packed.cout, oh, ow)

    def compute(inputs, out: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        return T.conv2d(x, packed, bias, arg(inputs, 3) if has_res else None, stride=stride,
                        pads=pads(x.shape[2], x.shape[3]), dilation=dilation, act=act,
                        act_params=params, precision=prec, config=config, out=out, fp8=fp8)

    def run(inputs) -> list:
        x = inputs[0]
        return [compute(inputs, torch.empty(out_shape(x), dtype=out_dtype, device=x.device, memory_format=fmt))]

    def accepts(out: torch.Tensor) -> bool:
        # any strides; any float dtype (the epilogue rounds once, to the view's dtype)
        return out.dim() == 4 and out.is_floating_point()

    return conv_kernel(run, compute, accepts, out_shape)


def triton_conv_weight(node: Node, ctx: CompileContext) -> torch.Tensor:
    """The constant 4-D weight of a 2-D ungrouped convolution the Triton kernel computes; a
    ``BuildError`` naming the layer and what to do otherwise."""
    conv = conv_parts(node)[0]
    if conv is None or len(conv.kernel_shape) != 2 or conv.group != 1:
        raise BuildError(f"node {node.name!r}: the Triton convolution does 2-D ungrouped "
                         f"convolutions only; choose a cudnn tactic")
    w = ctx.const(node.inputs[1])
    if w is None or w.dim() != 4:
        raise BuildError(f"node {node.name!r}: the Triton convolution needs a constant 4-D weight "
                         f"(input {node.inputs[1]!r}); fold it or choose a cudnn tactic")
    return w


def _factory(config: TileConfig):
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        from ember.backends.cuda.libs import triton_conv as T

        dtype = compute_dtype(ctx.precision)
        return triton_conv_kernel(node, ctx, T.pack_weight(triton_conv_weight(node, ctx), dtype), dtype, config)

    factory.__name__ = f"conv_triton_{config.name}"
    factory.__doc__ = (f"Triton implicit-GEMM convolution, {config.block_m}x{config.block_n}x"
                       f"{config.block_k} tiles, fused epilogue, writes into strided views.")
    return factory


#: tactic name -> kernel factory (registered below for Conv and FusedConv; tests and benchmarks
#: call a factory directly, e.g. under ``TRITON_INTERPRET=1`` where the registry offers no Triton)
FACTORIES: dict[str, Callable[[Node, CompileContext], Kernel]] = {
    TACTIC_PREFIX + cfg.name: _factory(cfg) for cfg in CONFIGS}

for _rank, (_name, _f) in enumerate(FACTORIES.items(), start=40):
    for _op in (OpType.CONV, OpType.FUSED_CONV):
        register_cuda_kernel(_op, _name, rank=_rank, when=triton_conv_applies, channels_last_only=True,
                             needs_triton=True)(_f)

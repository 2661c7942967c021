"""Pooling kernels: MaxPool, AveragePool, GlobalAveragePool, and LRN.

ONNX and PyTorch agree on pooling only for symmetric pads no larger than half the kernel; the
general path here pads explicitly and computes ONNX's own output sizes and divisors, so
asymmetric pads, ceil_mode, dilations and both count_include_pad settings follow the spec.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cpu.kernels.chain_steps import pool_link
from ember.backends.cpu.kernels.common import Inputs, Tensor, arg, auto_pads, split_pads, torch_pad_arg
from ember.backends.cpu.registry import register_kernel
from ember.backends.layout import planned_format, to_format
from ember.errors import UnsupportedOpError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import AutoPad, LpPoolAttrs, LRNAttrs, PoolAttrs

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class PoolGeometry:
    """One pooling window layout resolved for a concrete input."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begins: list[int]
    ends: list[int]
    ceil: bool
    ins: list[int]
    outs: list[int]

    @property
    def extents(self) -> list[int]:
        return [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]

    def end_pads_for_floor(self) -> list[int]:
        """End padding that makes floor-mode pooling produce exactly ``outs`` windows."""
        return [max((o - 1) * s + ext - i - b, 0)
                for o, s, ext, i, b in zip(self.outs, self.strides, self.extents, self.ins, self.begins)]


def _out_len(size: int, k_ext: int, s: int, b: int, e: int, ceil: bool) -> int:
    span = size + b + e - k_ext
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= size + b:
        out -= 1  # a window may not start inside the end padding (ONNX >= 19, PyTorch)
    return max(out, 0)


def pool_geometry(a: PoolAttrs, x_shape: Sequence[int]) -> PoolGeometry:
    n = len(a.kernel_shape)
    kernel = list(a.kernel_shape)
    strides = list(a.strides) if a.strides else [1] * n
    dilations = list(a.dilations) if a.dilations else [1] * n
    ins = [int(v) for v in x_shape[2:]]
    pads = auto_pads(a.auto_pad, a.pads, ins, kernel, strides, dilations)
    begins, ends = split_pads(pads)
    ceil = a.ceil_mode and a.auto_pad is AutoPad.NOTSET
    outs = [_out_len(i, (k - 1) * d + 1, s, b, e, ceil)
            for i, k, s, d, b, e in zip(ins, kernel, strides, dilations, begins, ends)]
    return PoolGeometry(kernel, strides, dilations, begins, ends, ceil, ins, outs)


def _torch_native(g: PoolGeometry, allow_dilation: bool) -> bool:
    """Whether PyTorch's own padding reproduces ONNX's windows for this geometry."""
    if g.begins != g.ends or any(2 * b > k for b, k in zip(g.begins, g.kernel)):
        return False
    if not allow_dilation and any(d != 1 for d in g.dilations):
        return False
    torch_outs = [_out_len(i, ext, s, b, b, g.ceil)
                  for i, ext, s, b in zip(g.ins, g.extents, g.strides, g.begins)]
    return torch_outs == g.outs


def _lowest(dtype: torch.dtype) -> float | int:
    return -math.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def max_pool(x: Tensor, a: PoolAttrs) -> Tensor:
    """ONNX MaxPool: pads behave as -inf, so the pad never wins."""
    g = pool_geometry(a, x.shape)
    n = len(g.kernel)
    if x.dtype in (torch.uint8, torch.int8) and n == 2 and _torch_native(g, allow_dilation=True) \
            and x.device.type == "cpu":
        # 8-bit activations between INT8 layers: PyTorch pools them in NCHW only (channels-last
        # uint8 fails a size check), and a maximum is exact in any type
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 else None
        y = F.max_pool2d(x.contiguous(), g.kernel, g.strides, g.begins, g.dilations, g.ceil)
        return y.contiguous(memory_format=fmt) if fmt is not None else y
    if not x.is_floating_point():  # (CUDA pools floats only; float32 holds 8- and 16-bit ints exactly)
        wide = torch.float32 if x.element_size() <= 2 and x.device.type != "cpu" else torch.float64
        return max_pool(x.to(wide), a).to(x.dtype)
    if _torch_native(g, allow_dilation=True):
        return _MAX_POOL[n](x, g.kernel, g.strides, g.begins, g.dilations, g.ceil)
    xp = F.pad(x, torch_pad_arg(g.begins, g.end_pads_for_floor()), value=_lowest(x.dtype))
    return _MAX_POOL[n](xp, g.kernel, g.strides, 0, g.dilations, False)


def _counts(g: PoolGeometry, include_pad: bool) -> list[list[int]]:
    """Per spatial dim, the number of window taps that count toward each output's divisor."""
    result = []
    for i, k, s, d, b, e, o in zip(g.ins, g.kernel, g.strides, g.dilations, g.begins, g.ends, g.outs):
        lo, hi = (-b, i + e) if include_pad else (0, i)
        result.append([sum(1 for j in range(k) if lo <= w * s - b + j * d < hi) for w in range(o)])
    return result


def _window_scale(g: PoolGeometry, include_pad: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``prod(kernel) / divisor`` for every output position (turns a full-window mean into ONNX's)."""
    scale = torch.ones((), dtype=torch.float64)
    for dim_counts in _counts(g, include_pad):
        c = torch.tensor(dim_counts, dtype=torch.float64)
        scale = scale.unsqueeze(-1) * c if scale.dim() else c
    return (math.prod(g.kernel) / scale.clamp(min=1)).to(device, dtype)


def average_pool(x: Tensor, a: PoolAttrs, cache: dict) -> Tensor:
    """ONNX AveragePool with either count_include_pad, ceil_mode, asymmetric pads, dilations."""
    g = pool_geometry(a, x.shape)
    n = len(g.kernel)
    if _torch_native(g, allow_dilation=False):
        return _AVG_POOL[n](x, g.kernel, g.strides, g.begins, g.ceil, a.count_include_pad)
    xp = F.pad(x, torch_pad_arg(g.begins, g.end_pads_for_floor()))
    if all(d == 1 for d in g.dilations):
        mean = _AVG_POOL[n](xp, g.kernel, g.strides, 0, False, True)
    else:
        c = x.shape[1]
        ones = torch.full((c, 1, *g.kernel), 1.0 / math.prod(g.kernel), dtype=x.dtype, device=x.device)
        mean = _CONV[n](xp, ones, None, g.strides, 0, g.dilations, c)
    key = (tuple(x.shape[2:]), x.dtype, x.device)
    scale = cache.get(key)
    if scale is None:
        scale = cache[key] = _window_scale(g, a.count_include_pad, x.dtype, x.device)
    return mean * scale


def dense_like(out: Tensor, x: Tensor) -> bool:
    """Whether ``out`` is laid out exactly as a fresh pooling output of ``x`` would be (dense in
    ``x``'s memory format). PyTorch's pooling ``out=`` kernels write such an ``out`` directly and
    any other one through a temporary and a copy (measured: ``clone`` + ``copy_`` in the trace),
    so only these are written in place."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return out.is_contiguous(memory_format=torch.channels_last)
    return out.is_contiguous()


def _pool_write_into(a: PoolAttrs, kind: str) -> WriteInto:
    """Max/average 2-D pooling straight into ``out`` (aten's ``.out`` kernels), for float inputs
    whose geometry PyTorch pools natively and an ``out`` laid out as its own output would be.
    The layout plan's format for the output does not apply here: the output *is* the slice of
    the Concat's buffer, stored in the buffer's format (the plan converts it for the Concat)."""

    def write(inputs: Inputs, out: Tensor) -> bool:
        x = inputs[0]
        if x is None or x.dim() != 4 or not x.is_floating_point() or x.dtype != out.dtype \
                or x.device != out.device or not dense_like(out, x):
            return False
        g = pool_geometry(a, x.shape)
        if list(out.shape) != [x.shape[0], x.shape[1], *g.outs]:
            return False
        if kind == "max":
            if not _torch_native(g, allow_dilation=True):
                return False
            idx = torch.empty(0, dtype=torch.long, device=x.device)
            torch.ops.aten.max_pool2d_with_indices.out(x, g.kernel, g.strides, g.begins, g.dilations,
                                                       g.ceil, out=out, indices=idx)
            return True
        if not _torch_native(g, allow_dilation=False):
            return False
        torch.ops.aten.avg_pool2d.out(x, g.kernel, g.strides, g.begins, g.ceil, a.count_include_pad,
                                      None, out=out)
        return True

    return WriteInto(write, lambda out: out.dim() == 4 and out.is_floating_point())


def _pool_format(node: Node, ctx: CompileContext) -> torch.memory_format | None:
    """The format the layout plan stores a float pooling output in (the pooling then reads its
    input in that format and writes it so); ``None``: no plan, follow the input."""
    t = ctx.graph.types.get(node.inputs[0]) if ctx.graph is not None else None
    return planned_format(ctx, node.outputs[0]) if t is not None and t.dtype.is_float else None


def max_pool_with_indices(x: Tensor, a: PoolAttrs) -> tuple[Tensor, Tensor]:
    """ONNX MaxPool and its Indices: each maximum's flat position in ``x`` (over N, C and the
    spatial axes, row-major; storage_order 1: the spatial axes column-major)."""
    g = pool_geometry(a, x.shape)
    n = len(g.kernel)
    work = x if x.is_floating_point() else x.double()
    xp = F.pad(work, torch_pad_arg(g.begins, g.end_pads_for_floor()), value=-math.inf)
    y, idx = _MAX_POOL[n](xp, g.kernel, g.strides, 0, g.dilations, False, True)
    padded, ins = list(xp.shape[2:]), list(g.ins)
    coords, rest = [], idx
    for d in reversed(range(n)):  # unravel the padded plane index, back to x's coordinates
        coords.append(rest.remainder(padded[d]) - g.begins[d])
        rest = rest.div(padded[d], rounding_mode="floor")
    coords.reverse()
    flat = torch.zeros_like(idx)
    dims = range(n) if a.storage_order == 0 else reversed(range(n))
    for d in dims:
        flat = flat * ins[d] + coords[d]
    plane = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1],
                                                                          *([1] * n))
    return y.to(x.dtype), flat + plane * math.prod(ins)


NativeMaker = Callable[[Any, Tensor, str], object]


def _per_shape_native(make: NativeMaker, kinds: Sequence[torch.dtype]) -> Callable[[Tensor], object]:
    """A primitive of Ember's oneDNN extension (``ember.backends.cpu.native``) per input shape:
    ``make(ext, x, kind)`` for a 4-D channels-last CPU tensor of one of ``kinds`` (``kind``: its
    oneDNN name), made at the first run of each shape and kept. ``None`` (the caller computes
    otherwise) for any other tensor, where the extension is switched off or unavailable, and for
    a shape oneDNN refuses (remembered, so it is asked once)."""
    from ember.backends.cpu import native

    enabled = native.enabled()
    made: dict[tuple, object] = {}

    def get(x: Tensor) -> object:
        kind = native.dtype_name(x.dtype) if x.dtype in kinds else None
        if (not enabled or kind is None or x.dim() != 4 or x.device.type != "cpu" or x.numel() == 0
                or not x.is_contiguous(memory_format=torch.channels_last)):
            return None
        key = (tuple(x.shape), kind)
        if key not in made:
            ext = native.extension()
            made[key] = None
            if ext is not None:
                try:
                    made[key] = make(ext, x, kind)
                except (RuntimeError, ValueError):  # a shape or parameters oneDNN refuses
                    pass
        return made[key]

    return get


def _native_max_pool(node: Node, ctx: CompileContext, a: PoolAttrs):
    """A 2-D MaxPool's oneDNN primitive per input shape, with its output shape: for the 8-bit
    activations between INT8 layers always (PyTorch pools those only in NCHW: ResNet-50 INT8's
    MaxPool took 3.6 of its 9.8 ms at batch 1), for float ones in runs whose inputs are all finite
    (``finite``) and a layer no non-finite value can reach (``half.finite_safe``; oneDNN's maximum
    drops NaN where ONNX keeps it). 3-6x PyTorch's channels-last float pooling on GoogLeNet's and
    ResNet-50's layers at batch 8, bitwise the same maxima. ``None`` where it cannot apply."""
    from ember.backends.cpu.half import finite_safe

    if len(a.kernel_shape) != 2 or ctx.graph is None:
        return None
    safe = finite_safe(node, ctx.graph)

    def make(ext: Any, x: Tensor, kind: str) -> object:
        g = pool_geometry(a, x.shape)
        # oneDNN's output size is the floor one: the end pad that gives ONNX's (ceil) size
        ends = [(o - 1) * st + e - i - b for o, st, e, i, b in zip(g.outs, g.strides, g.extents, g.ins, g.begins)]
        if min(g.outs) <= 0 or min(ends) < 0 or any(b >= e for b, e in zip(g.begins, g.extents)):
            return None
        shape = (x.shape[0], x.shape[1], *g.outs)
        return ext.MaxPool(list(x.shape), list(shape), g.kernel, g.strides, g.dilations, g.begins, ends, kind), shape

    get = _per_shape_native(make, (torch.float32, torch.bfloat16, torch.uint8, torch.int8))

    def prim(x: Tensor, finite: bool = True) -> object:
        return None if x.is_floating_point() and not (safe and finite) else get(x)

    return prim


@register_kernel(OpType.MAX_POOL)
def max_pool_kernel(node: Node, ctx: CompileContext) -> Kernel:
    from ember.backends.cpu.half import inputs_finite

    a: PoolAttrs = node.attrs
    if len([o for o in node.outputs if o]) > 1:
        return lambda inputs: list(max_pool_with_indices(inputs[0].contiguous(), a))
    fmt = _pool_format(node, ctx)
    native_prim = _native_max_pool(node, ctx, a)

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        found = native_prim(x, inputs_finite()) if native_prim is not None else None
        if found is not None:
            prim, shape = found  # type: ignore[misc]
            out = torch.empty(shape, dtype=x.dtype, memory_format=torch.channels_last)
            prim.run(x, out)
            return [to_format(out, fmt)]
        return [to_format(max_pool(to_format(x, fmt), a), fmt)]

    return with_write_into(run, _pool_write_into(a, "max") if len(a.kernel_shape) == 2 else None)


@register_kernel(OpType.AVERAGE_POOL)
def average_pool_kernel(node: Node, ctx: CompileContext) -> Kernel:
    a: PoolAttrs = node.attrs
    cache: dict = {}
    fmt = _pool_format(node, ctx)

    def run(inputs: Inputs) -> list:
        return [to_format(average_pool(to_format(inputs[0], fmt), a, cache), fmt)]

    return with_write_into(run, _pool_write_into(a, "avg") if len(a.kernel_shape) == 2 else None)


def lp_pool(x: Tensor, a: LpPoolAttrs) -> Tensor:
    """ONNX LpPool: ``(sum |x|^p over the window) ^ (1/p)``; pads add zeros to the sum."""
    g = pool_geometry(a.pool, x.shape)
    n = len(g.kernel)
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    xp = F.pad(work.abs().pow(a.p), torch_pad_arg(g.begins, g.end_pads_for_floor()))
    c = x.shape[1]
    ones = torch.ones((c, 1, *g.kernel), dtype=work.dtype, device=x.device)
    total = _CONV[n](xp, ones, None, g.strides, 0, g.dilations, c)
    return total.pow(1.0 / a.p).to(x.dtype)


@register_kernel(OpType.LP_POOL)
def lp_pool_kernel(node: Node, ctx: CompileContext) -> Kernel:
    a: LpPoolAttrs = node.attrs
    return lambda inputs: [lp_pool(inputs[0], a)]


@register_kernel(OpType.GLOBAL_AVERAGE_POOL)
def global_average_pool(node: Node, ctx: CompileContext) -> Kernel:
    def run(inputs: Inputs) -> list:
        x = inputs[0]
        return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]

    link = pool_link(node, ctx)
    if link is not None:  # a squeeze-excite block's squeeze may run inside a chain
        run.chain_link = link  # type: ignore[attr-defined]
    return run


def lrn(x: Tensor, a: LRNAttrs) -> Tensor:
    """ONNX LRN: ``x / (bias + alpha / size * sum(x^2 over the channel window)) ** beta``.

    The window of channel c spans ``[c - floor((size-1)/2), c + ceil((size-1)/2)]`` (PyTorch's
    ``local_response_norm`` centres even sizes the other way, so it is not used). The window sum
    is ``size - 1`` shifted slice additions along the channel axis: no padding, no layout change
    (channels-last input stays channels-last), and much faster than a pooling call over a
    length-C axis.
    """
    sq = x * x
    acc = sq.clone()
    c = x.shape[1]
    front = (a.size - 1) // 2
    for d in range(-front, a.size - front):
        if d == 0 or abs(d) >= c:
            continue
        if d > 0:
            acc[:, :c - d] += sq[:, d:]
        else:
            acc[:, -d:] += sq[:, :c + d]
    return acc.mul_(a.alpha / a.size).add_(a.bias).pow_(-a.beta).mul_(x)


@register_kernel(OpType.LRN)
def lrn_kernel(node: Node, ctx: CompileContext) -> Kernel:
    """LRN: on a channels-last float32 / bfloat16 CPU tensor with an odd window, oneDNN's LRN
    primitive through Ember's extension (made once per shape; one pass over the tensor: on
    GoogLeNet's 192x56x56 LRN at batch 8, 1.6 against 13.1 ms in float32, 20.8 ms in bf16);
    otherwise ``lrn``'s tensor operations. Both are the ONNX formula, NaN and infinities as it
    gives them."""
    a: LRNAttrs = node.attrs
    native_lrn = None if a.size % 2 == 0 else _per_shape_native(  # oneDNN centres an even window otherwise
        lambda ext, x, kind: ext.Lrn(list(x.shape), a.size, a.alpha, a.beta, a.bias, kind),
        (torch.float32, torch.bfloat16))

    def run(inputs: Inputs) -> list:
        x = inputs[0]
        prim = native_lrn(x) if native_lrn is not None else None
        if prim is None:
            return [lrn(x, a)]
        out = torch.empty_like(x, memory_format=torch.channels_last)
        prim.run(x, out)  # type: ignore[attr-defined]
        return [out]

    return run


@register_kernel(OpType.MAX_UNPOOL)
def max_unpool(node: Node, ctx: CompileContext) -> Kernel:
    """MaxUnpool: zeros of the output shape with X's values at the flat indices I."""
    a = node.attrs

    def run(inputs: Inputs) -> list:
        x, idx, shape_t = inputs[0], inputs[1], arg(inputs, 2)
        n = len(a.kernel_shape)
        strides = list(a.strides) or [1] * n
        pads = list(a.pads) or [0] * (2 * n)
        shape = [x.shape[0], x.shape[1]] + [(x.shape[2 + i] - 1) * strides[i] + a.kernel_shape[i]
                                            - pads[i] - pads[i + n] for i in range(n)]
        if shape_t is not None and shape_t.numel():
            given = [int(v) for v in shape_t.reshape(-1).tolist()]
            if given != shape:
                raise UnsupportedOpError(
                    f"MaxUnpool {node.name!r} with output_shape {given} other than the inferred "
                    f"{shape} is not supported: ONNX's reference places the indices in the "
                    f"inferred shape and pads it, ONNX Runtime indexes the given shape")
        out = x.new_zeros(math.prod(shape))
        out[idx.reshape(-1).long()] = x.reshape(-1)
        return [out.reshape(shape)]

    return run

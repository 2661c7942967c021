"""Conv, ConvTranspose and BatchNormalization: shape inference and padding resolution.

``resolve_pads`` and ``conv_transpose_pads`` turn ``auto_pad`` / ``output_shape`` into
explicit pads for static input sizes; backends call them so they only ever see explicit pads.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember.errors import ShapeError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ir.types import Dim, TensorType
from ember.ops.attrs import (
    AutoPad,
    BatchNormAttrs,
    CausalConvAttrs,
    Col2ImAttrs,
    ConvAttrs,
    ConvTransposeAttrs,
    DeformConvAttrs,
)
from ember.ops.common import affine_dim, input_at, need, require, same_dtype
from ember.ops.registry import register_op

Types = Sequence[Optional[TensorType]]
Consts = Sequence[Optional[np.ndarray]]


def resolve_pads(auto_pad: AutoPad, in_spatial: Sequence[int], kernel: Sequence[int],
                 strides: Sequence[int], dilations: Sequence[int],
                 pads: Sequence[int]) -> tuple[int, ...]:
    """Explicit ``(begins..., ends...)`` pads of a conv/pool window for static input sizes."""
    n = len(kernel)
    if auto_pad is AutoPad.NOTSET:
        return tuple(pads) if pads else (0,) * (2 * n)
    if auto_pad is AutoPad.VALID:
        return (0,) * (2 * n)
    begins, ends = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(small if auto_pad is AutoPad.SAME_UPPER else big)
        ends.append(big if auto_pad is AutoPad.SAME_UPPER else small)
    return tuple(begins + ends)


def window_out_dims(in_spatial: Sequence[Dim], kernel: Sequence[int], strides: Sequence[int],
                    dilations: Sequence[int], pads: Sequence[int], auto_pad: AutoPad,
                    ceil_mode: bool = False) -> tuple[Dim, ...]:
    """Output spatial dims of a sliding window (conv or pool), symbolic when inputs are."""
    n = len(kernel)
    out: list[Dim] = []
    for i, (size, k, s, d) in enumerate(zip(in_spatial, kernel, strides, dilations)):
        if auto_pad in (AutoPad.SAME_UPPER, AutoPad.SAME_LOWER):
            out.append(-(-size // s) if isinstance(size, int) else (size if s == 1 else f"ceil({size}/{s})"))
            continue
        total = 0 if auto_pad is AutoPad.VALID else (pads[i] + pads[i + n] if pads else 0)
        span = (k - 1) * d + 1
        dim = affine_dim(size, total - span, s, ceil=ceil_mode)
        if ceil_mode and isinstance(dim, int) and isinstance(size, int):
            begin = 0 if auto_pad is AutoPad.VALID or not pads else pads[i]
            if (dim - 1) * s >= size + begin:  # last window would start in the end padding
                dim -= 1
        if isinstance(dim, int) and dim <= 0:
            raise ShapeError(f"window of size {span} (kernel {k}, dilation {d}) does not fit "
                             f"input size {size} with pads {total} on spatial axis {i}")
        out.append(dim)
    return tuple(out)


def _check_window(x: TensorType, attrs: ConvAttrs | ConvTransposeAttrs, what: str) -> int:
    n = len(attrs.kernel_shape)
    require(x.rank == n + 2, f"{what} with a {n}-D kernel needs a rank-{n + 2} input, got {x}")
    for name in ("strides", "dilations"):
        require(len(getattr(attrs, name)) == n, f"{what} {name} {getattr(attrs, name)} must have {n} entries")
    require(not attrs.pads or len(attrs.pads) == 2 * n, f"{what} pads {attrs.pads} must have {2 * n} entries")
    return n


@register_op(OpType.CONV, attrs=ConvAttrs)
def infer_conv(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Conv(x[N, C, *S], w[M, C/group, *K], b[M]?) -> [N, M, *S']."""
    a: ConvAttrs = node.attrs
    x, w = need(in_types[0], "X"), need(in_types[1] if len(in_types) > 1 else None, "W")
    n = _check_window(x, a, "Conv")
    same_dtype([x, w], "Conv X and W")
    require(w.rank == n + 2, f"Conv weight {w} must have rank {n + 2}")
    require(tuple(w.shape[2:]) == tuple(a.kernel_shape),
            f"Conv weight {w} does not match kernel_shape {a.kernel_shape}")
    c = x.shape[1]
    if isinstance(c, int) and isinstance(w.shape[1], int):
        require(c == w.shape[1] * a.group,
                f"Conv input has {c} channels but weight {w} with group={a.group} expects "
                f"{w.shape[1] * a.group}")
    spatial = window_out_dims(x.shape[2:], a.kernel_shape, a.strides, a.dilations, a.pads, a.auto_pad)
    return [TensorType(x.dtype, (x.shape[0], w.shape[0], *spatial))]


def conv_transpose_pads(a: ConvTransposeAttrs,
                        in_spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Explicit (pads, output_padding) of a ConvTranspose for static input sizes.

    With ``output_shape`` or SAME auto_pad the total padding follows from the wanted output
    size; it is split the way ONNX Runtime does (SAME_UPPER puts the odd pixel at the start).
    """
    n = len(a.kernel_shape)
    if a.output_shape is None and a.auto_pad in (AutoPad.NOTSET, AutoPad.VALID):
        pads = a.pads if a.auto_pad is AutoPad.NOTSET and a.pads else (0,) * (2 * n)
        return tuple(pads), tuple(a.output_padding)
    targets = (a.output_shape[-n:] if a.output_shape is not None
               else [size * s for size, s in zip(in_spatial, a.strides)])
    begins, ends = [], []
    for size, k, s, d, op, want in zip(in_spatial, a.kernel_shape, a.strides, a.dilations,
                                       a.output_padding, targets):
        total = s * (size - 1) + op + (k - 1) * d + 1 - want
        if total < 0:
            raise ShapeError(f"ConvTranspose output_shape {tuple(targets)} is larger than the "
                             f"kernel can produce from input sizes {tuple(in_spatial)}")
        if a.auto_pad is AutoPad.SAME_UPPER:
            begins.append(total - total // 2)
            ends.append(total // 2)
        else:
            begins.append(total // 2)
            ends.append(total - total // 2)
    return tuple(begins + ends), tuple(a.output_padding)


@register_op(OpType.CONV_TRANSPOSE, attrs=ConvTransposeAttrs)
def infer_conv_transpose(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """ConvTranspose(x[N, C, *S], w[C, M/group, *K], b?) -> [N, M, *S']."""
    a: ConvTransposeAttrs = node.attrs
    x, w = need(in_types[0], "X"), need(in_types[1] if len(in_types) > 1 else None, "W")
    n = _check_window(x, a, "ConvTranspose")
    same_dtype([x, w], "ConvTranspose X and W")
    require(w.rank == n + 2, f"ConvTranspose weight {w} must have rank {n + 2}")
    require(len(a.output_padding) == n,
            f"ConvTranspose output_padding {a.output_padding} must have {n} entries")
    cout: Dim = w.shape[1] * a.group if isinstance(w.shape[1], int) else w.shape[1]
    if a.output_shape is not None:
        return [TensorType(x.dtype, (x.shape[0], cout, *a.output_shape[-n:]))]
    spatial: list[Dim] = []
    for i, (size, k, s, d, op) in enumerate(zip(x.shape[2:], a.kernel_shape, a.strides,
                                                a.dilations, a.output_padding)):
        if a.auto_pad in (AutoPad.SAME_UPPER, AutoPad.SAME_LOWER):
            spatial.append(size * s if isinstance(size, int) else (size if s == 1 else f"{size}*{s}"))
            continue
        pad = (a.pads[i] + a.pads[i + n]) if a.pads and a.auto_pad is AutoPad.NOTSET else 0
        extra = op + (k - 1) * d + 1 - pad - s
        if isinstance(size, int):
            spatial.append(s * size + extra)
        else:
            base = size if s == 1 else f"{size}*{s}"
            spatial.append(f"({base}{extra:+d})" if extra else base)
    return [TensorType(x.dtype, (x.shape[0], cout, *spatial))]


@register_op(OpType.BATCH_NORM, attrs=BatchNormAttrs)
def infer_batch_norm(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """BatchNormalization(x[N, C, ...], scale, bias, mean, var) in inference mode -> x's type."""
    require(len(in_types) == 5, f"BatchNormalization takes 5 inputs, got {len(in_types)}")
    x = need(in_types[0], "X")
    require(x.rank >= 2, f"BatchNormalization input must have rank >= 2, got {x}")
    for t, name in zip(in_types[1:], ("scale", "B", "input_mean", "input_var")):
        t = need(t, name)
        require(t.rank == 1, f"BatchNormalization {name} must be 1-D, got {t}")
        if isinstance(t.shape[0], int) and isinstance(x.shape[1], int):
            require(t.shape[0] == x.shape[1],
                    f"BatchNormalization {name} has {t.shape[0]} entries for {x.shape[1]} channels")
    return [x]


@register_op(OpType.CAUSAL_CONV_WITH_STATE, attrs=CausalConvAttrs)
def infer_causal_conv(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """CausalConvWithState(input[B, C, L], weight[C, 1, k], bias[C]?, past_state[B, C, k-1]?)
    -> (output[B, C, L], present_state[B, C, k-1])."""
    x, w = need(input_at(in_types, 0), "input"), need(input_at(in_types, 1), "weight")
    require(x.rank == 3 and w.rank == 3,
            f"CausalConvWithState needs a 3-D input and a 3-D (channels, 1, k) weight, got {x}, {w}")
    require(x.dtype.is_float, f"CausalConvWithState needs a floating-point input, got {x}")
    k = w.shape[2]
    state = (x.shape[0], x.shape[1], k - 1 if isinstance(k, int) else f"{k}-1")
    return [x, TensorType(x.dtype, state)]


@register_op(OpType.COL2IM, attrs=Col2ImAttrs)
def infer_col2im(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """Col2Im(input[N, C * prod(block), L], image_shape[r], block_shape[r]) -> [N, C, *image]."""
    x = need(input_at(in_types, 0), "input")
    image = need(input_at(in_types, 1), "image_shape")
    require(x.rank == 3, f"Col2Im needs a 3-D input [N, C * prod(block), L], got {x}")
    require(image.rank == 1 and isinstance(image.shape[0], int), f"Col2Im image_shape must be 1-D, got {image}")
    r = int(image.shape[0])
    img_v, block_v = (consts[i] if i < len(consts) else None for i in (1, 2))
    if img_v is None or block_v is None:
        c: Dim = f"{node.outputs[0]}#c"
        spatial: tuple[Dim, ...] = tuple(f"{node.outputs[0]}#{i}" for i in range(r))
        return [x.with_shape((x.shape[0], c, *spatial))]
    block = int(np.prod([int(v) for v in np.asarray(block_v).reshape(-1)]))
    cb = x.shape[1]
    require(not isinstance(cb, int) or cb % block == 0,
            f"Col2Im input channels {cb} are not a multiple of the block size {block}")
    c = cb // block if isinstance(cb, int) else f"{cb}/{block}"
    return [x.with_shape((x.shape[0], c, *(int(v) for v in np.asarray(img_v).reshape(-1))))]


@register_op(OpType.DEFORM_CONV, attrs=DeformConvAttrs)
def infer_deform_conv(node: Node, in_types: Types, consts: Consts) -> list[TensorType]:
    """DeformConv(X[N, C, H, W], W[OC, C/group, kh, kw], offset[N, G*kh*kw*2, oh, ow], B?, mask?)
    -> [N, OC, oh, ow]."""
    x, w = need(input_at(in_types, 0), "X"), need(input_at(in_types, 1), "W")
    offset = need(input_at(in_types, 2), "offset")
    require(x.rank == 4 and w.rank == 4 and offset.rank == 4,
            f"DeformConv supports 2-D convolutions (4-D X, W, offset), got {x}, {w}, {offset}")
    require(x.dtype.is_float, f"DeformConv needs a floating-point input, got {x}")
    return [x.with_shape((x.shape[0], w.shape[0], offset.shape[2], offset.shape[3]))]

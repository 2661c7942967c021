"""Ember's Triton kernels, as plain tensor functions (the ``@triton.jit`` code lives in ``triton_jit``,
imported only when a kernel is first used, so this module imports on machines without Triton).

- ``bias_act_(y, bias, residual, act, params)``: in place on ``y``, one pass: ``y + bias``
  (per channel / column) ``+ residual``, then the activation. For the epilogues cuDNN/cuBLAS have
  no fused form of (ReLU6 = Clip(0, 6), exact GELU, SiLU, hard-swish, linear residual adds).
  ``y`` keeps its memory format (an NCHW ``y`` takes its bias in a separate add first).
- ``layer_norm(x, w, b, eps, residual=, rows_per_program=)``: over the last axis (of
  ``x + residual``), a tile of rows per program, fp32 statistics.
- ``softmax_lastdim(x)``: over the last axis, one row per program, fp32 math.
- ``max_pool2d_nhwc(x, ...)``: 2-D max pooling, channels-last, any pads / dilation / ceil mode.
- ``lrn(x, size, alpha, beta, bias)``: ONNX LRN on a 4-D tensor in one pass (channels-last tiles
  of pixels x all channels; the channel window summed in registers, fp32).

``max_pool2d_nhwc`` and ``lrn`` read and write channels-last only: their tactics do not apply
where the layout plan (``ember.backends.layout``) stores the output NCHW.

``layer_norm``, ``softmax_lastdim`` and ``max_pool2d_nhwc`` take an optional ``out``: the kernel
stores into it instead of a fresh tensor (a kernel's ``write_into``, ``ember.backends.base``).
The kernels index their output as packed (row-major, resp. channels-last), so ``out`` must be
exactly that: ``fits`` is the test (``ValueError`` otherwise, before anything is launched).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ember.backends.activations import ACTIVATIONS
from ember.ops.attrs import Activation, activation_params

#: The ``ACT`` code of each activation the kernels' ``activate`` implements (``triton_jit``), from
#: the activation table (``ActivationRow.triton``).
ACT_CODES: dict[Activation, int] = {a: row.triton for a, row in ACTIVATIONS.items() if row.triton is not None}
#: Activations the Triton epilogue implements.
EPILOGUE_ACTIVATIONS = frozenset(ACT_CODES)

_INF = 3.0e38


def epilogue_params(act: Activation, params: Sequence[float]) -> tuple[float, float]:
    """The two scalar parameters the kernels' ``activate`` takes for ``act`` (defaults filled in;
    infinite clip bounds as the largest float32 the kernel can take)."""
    p = [min(max(v, -_INF), _INF) for v in activation_params(act, params)]
    return (p + [0.0, 0.0])[0], (p + [0.0, 0.0])[1]


def _rows_view_ok(y: torch.Tensor) -> bool:
    """``y``'s memory is ``[rows, channels]`` with channels contiguous (2-D/3-D row-major, or
    4-D channels-last)."""
    if y.dim() == 4:
        return y.is_contiguous(memory_format=torch.channels_last)
    return y.is_contiguous()


def _nchw(y: torch.Tensor) -> bool:
    """A 4-D ``y`` packed NCHW (and not also channels-last, as N x C x 1 x 1 is)."""
    return y.dim() == 4 and y.is_contiguous() and not y.is_contiguous(memory_format=torch.channels_last)


def bias_act_(y: torch.Tensor, bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
              act: Activation, params: Sequence[float]) -> torch.Tensor:
    """``act(y + bias + residual)`` written into ``y`` (returned); ``bias`` indexes the channel
    axis (dim 1 of a 4-D tensor, else the last). A channels-last or row-major ``y`` takes all of
    it in one pass; an NCHW ``y`` keeps its format: the kernel indexes the bias by the fastest
    dim, so the bias is added first and the pass does residual and activation. Any other ``y``
    is computed in a channels-last / row-major copy, which is returned."""
    from ember.backends.cuda.libs import triton_jit as K

    if _nchw(y):
        fmt = torch.contiguous_format
        if bias is not None:
            y.add_(bias.view(1, -1, 1, 1))
            bias = None
    elif not _rows_view_ok(y):
        fmt = torch.channels_last if y.dim() == 4 else torch.contiguous_format
        y = y.contiguous(memory_format=fmt)
    else:
        fmt = torch.channels_last if y.dim() == 4 else torch.contiguous_format
    n = y.shape[1] if y.dim() == 4 else y.shape[-1]
    if residual is not None and residual.stride() != y.stride():
        residual = residual.contiguous(memory_format=fmt)
    p0, p1 = epilogue_params(act, params)
    total = y.numel()
    block = 2048
    grid = (triton_cdiv(total, block),)
    K.bias_act_kernel[grid](
        y, bias if bias is not None else y, residual if residual is not None else y, total, n,
        p0, p1, HAS_BIAS=bias is not None, HAS_RES=residual is not None, ACT=ACT_CODES[act],
        BLOCK=block, num_warps=8)
    return y


def fits(out: torch.Tensor, shape: Sequence[int], dtype: torch.dtype,
         fmt: torch.memory_format = torch.contiguous_format) -> bool:
    """Whether ``out`` can take a result of ``shape`` and ``dtype`` from a kernel that stores its
    output packed in ``fmt``: same shape and dtype, and packed in ``fmt`` (any offset; strides of
    size-1 dims do not matter, no element is addressed through them). Works on meta tensors."""
    return tuple(out.shape) == tuple(shape) and out.dtype == dtype and out.is_contiguous(memory_format=fmt)


def _output(out: Optional[torch.Tensor], like: torch.Tensor, shape: Sequence[int],
            fmt: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """A fresh output like ``like`` (``shape``, packed in ``fmt``), or ``out`` checked by ``fits``."""
    if out is None:
        return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=fmt)
    if not fits(out, shape, like.dtype, fmt) or out.device != like.device:
        raise ValueError(f"out ({tuple(out.shape)}, {out.dtype}, strides {out.stride()}, {out.device}) cannot "
                         f"take a packed {fmt} result of shape {tuple(shape)}, {like.dtype} on {like.device}")
    return out


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def layer_norm(x: torch.Tensor, w: Optional[torch.Tensor], b: Optional[torch.Tensor], eps: float,
               out: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
               rows_per_program: int = 1) -> torch.Tensor:
    """LayerNorm over the last axis of ``x`` (of ``x + residual`` when given: the sum formed in
    fp32; fp32 statistics; output in ``x``'s dtype), into ``out`` when given (contiguous, ``x``'s
    shape and dtype). ``rows_per_program`` (a power of two): rows one Triton program normalizes
    (several short rows per program fill its warps better)."""
    from ember.backends.cuda.libs import triton_jit as K

    y = _output(out, x, x.shape)
    x = x.contiguous()
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"layer_norm: residual {tuple(residual.shape)} {residual.dtype} does not match "
                             f"the input {tuple(x.shape)} {x.dtype}")
        residual = residual.contiguous()
    n = x.shape[-1]
    rows = x.numel() // n
    block = _next_pow2(n)
    per = rows_per_program
    warps = 4 if block * per <= 1024 else 8
    K.layer_norm_kernel[(triton_cdiv(rows, per),)](
        x, residual if residual is not None else x, y, w if w is not None else x, b if b is not None else x,
        rows, n, float(eps), HAS_R=residual is not None, HAS_W=w is not None, HAS_B=b is not None,
        ROWS=per, BLOCK=block, num_warps=warps)
    return y


def softmax_lastdim(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Softmax over the last axis of ``x`` (fp32 math; output in ``x``'s dtype), into ``out``
    when given (contiguous, ``x``'s shape and dtype)."""
    from ember.backends.cuda.libs import triton_jit as K

    y = _output(out, x, x.shape)
    x = x.contiguous()
    n = x.shape[-1]
    rows = x.numel() // n
    block = _next_pow2(n)
    K.softmax_kernel[(rows,)](x, y, n, BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return y


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float,
        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ONNX LRN over dim 1 of a 4-D ``x``; output channels-last in ``x``'s dtype (into ``out``
    when given: packed channels-last, ``x``'s shape and dtype)."""
    from ember.backends.cuda.libs import triton_jit as K

    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    y = _output(out, x, x.shape, torch.channels_last)
    pixels = n * h * w
    block_c = _next_pow2(c)
    block_p = max(1, min(64, 4096 // block_c))
    before = (size - 1) // 2
    K.lrn_kernel[(triton_cdiv(pixels, block_p),)](
        x, y, pixels, c, float(alpha) / size, float(beta), float(bias), BEFORE=before,
        AFTER=size - 1 - before, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return y


def pool_output_size(size: int, k: int, s: int, pb: int, pe: int, d: int, ceil: bool) -> int:
    """Output length of a pooling window over ``size`` (ONNX/PyTorch rule: with ``ceil`` the last
    window must still start inside the input or its leading padding)."""
    span = (k - 1) * d + 1
    num = size + pb + pe - span
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + pb:
        out -= 1
    return max(out, 0)


def max_pool2d_shape(shape: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                     begins: Sequence[int], ends: Sequence[int], dilations: Sequence[int],
                     ceil: bool) -> tuple[int, int, int, int]:
    """The output shape of ``max_pool2d_nhwc`` on an input of ``shape``."""
    n, c, h, w = shape
    oh = pool_output_size(h, kernel[0], strides[0], begins[0], ends[0], dilations[0], ceil)
    ow = pool_output_size(w, kernel[1], strides[1], begins[1], ends[1], dilations[1], ceil)
    return n, c, oh, ow


def max_pool2d_nhwc(x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int],
                    begins: Sequence[int], ends: Sequence[int], dilations: Sequence[int],
                    ceil: bool, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Max pooling of a 4-D tensor in channels-last order; output channels-last (into ``out``
    when given: packed channels-last, of the output's shape and ``x``'s dtype)."""
    from ember.backends.cuda.libs import triton_jit as K

    shape = max_pool2d_shape(x.shape, kernel, strides, begins, ends, dilations, ceil)
    y = _output(out, x, shape, torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    oh, ow = shape[2], shape[3]
    pixels = n * oh * ow
    if pixels == 0 or c == 0:
        return y
    block_c = min(_next_pow2(c), 128)
    block_p = max(1, 4096 // block_c)
    grid = (triton_cdiv(pixels, block_p), triton_cdiv(c, block_c))
    K.maxpool_nhwc_kernel[grid](x, y, h, w, c, oh, ow, pixels, strides[0], strides[1], begins[0],
                                begins[1], dilations[0], dilations[1], KH=kernel[0], KW=kernel[1],
                                UNROLL=kernel[0] * kernel[1] <= 64, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return y

"""Ember's Triton INT8 implicit-GEMM convolution and GEMM: 8-bit activations, per-output-channel
int8 weights, int32 accumulation on the tensor cores, and the whole epilogue fused (dequantize,
bias, residual, activation, requantize), written through any output strides.

One kernel serves both INT8 layers of the plan (``QConvAttrs`` / ``QGemmAttrs``): a GEMM
``[M, K] @ [K, N]`` is the 1x1 convolution of an NHWC image of one row of ``M`` pixels with ``K``
channels (``gemm`` views it so). The implicit GEMM walks the reduction as
``conv2d_nhwc_kernel`` of ``triton_conv`` does (taps outer, input channels inner, one flat loop).

Numbers, as the CPU's oneDNN INT8 layers compute them (``ember.backends.cpu.kernels.qlayers``):

- **Input.** 8-bit activations are stored uint8 with a zero point (``QuantParams``: ``real =
  (q - zp) * scale``; the plan stores them so for both devices). Tensor cores multiply signed
  int8, so each loaded byte is moved to ``q - 128`` (exact), and the difference is put back once
  per output channel: ``sum (q - zp) w = sum (q - 128) w + (128 - zp) * sum w``, the second term a
  constant of the layer (``QPackedWeight.corr``). Zero padding is real 0, the zero point: masked
  taps load ``zp``. A float input (the first INT8 layer after float ones) is quantized in
  registers as it is loaded: ``floor(x / scale + zp + 0.5)`` clamped to ``[0, 255]`` (rounding
  half up, as the CPU path), with SmoothQuant's per-input-channel divisor folded into the
  multiplier where the layer has one.
- **Accumulation** in int32 (``tl.dot`` of int8 operands); the weight is quantized once, at
  compile time, with the layer's symmetric per-output-channel scales (``[-127, 127]``).
- **Epilogue** in fp32: ``act((acc + corr) * x_scale * w_scale + bias + residual)``, the residual
  read through its own strides as float, or as 8 bits with its own scale and zero point; then
  either requantized to the output's scale and zero point (uint8, rounding half up) or rounded
  once to the output's float dtype. Activations are those of ``triton_jit.activate``.

Tile sizes come from ``CONFIGS``, each a separate tactic of the CUDA INT8 layers
(``kernels/qlayers.py``) timed by Ember's tactic timer. ``BLOCK_K`` is at least 32 (the int8
tensor-core step) and ``BLOCK_N`` at least 16; both shrink to the layer's channel counts.

**TMA on Hopper.** Where an operand is a matrix the Tensor Memory Accelerator can address (a
16-byte-aligned base, 16-byte-aligned row pitch, channels packed; ``tma_operands`` decides), the
kernel moves it with host TMA descriptors instead of per-thread pointers: the weight always, the
input of a stride-1 unpadded 1x1 convolution or GEMM (and, with ``shifted_boxes``, of any stride-1
convolution whose output grid is its input's), the residual and the output when their pixels
form rows of one pitch (a Concat's aligned slice included: the bulk store clips at the slice's
channel count). The output tile is then written from shared memory by one bulk store instead of
per-thread 1-2 byte stores from the tensor cores' accumulator layout: on the H100 this took
ResNet-50's eight batch-256 1x1 shapes from 0.050-0.397 ms to 0.033-0.270 ms, 1.2-1.5x
(``bench/probes/cuda_int8_epilogue_store.py``). Out-of-bounds boxes read zeros (weights past the
reduction are zero, so a zero in the input's channel tail is harmless) and stores are clipped.

This module imports without Triton; the launchers need it (or ``TRITON_INTERPRET=1`` on CPU
tensors, which is how CI checks the numerics).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ember.backends.cpu.kernels.qlayers import quantize_weight
from ember.backends.cuda.libs import launch, triton_modules
from ember.backends.cuda.libs.triton_conv import TileConfig, output_hw
from ember.ops.attrs import Activation

triton, tl = triton_modules()  # None where Triton cannot run here; the launchers need it

#: The INT8 variants offered as tactics: large tiles for batch 128+ (M in the hundreds of
#: thousands; BERT's GEMMs and ResNet-50's 3x3 layers take 128x128), a narrow 128x64 tile with four
#: warps for the memory-bound 1x1 layers with a short reduction (on the H100, ResNet-50's batch-256
#: "expand" layers 64->256, 128->512, 256->1024 with TMA operands: 0.270, 0.160, 0.093 ms, against
#: 0.505, 0.278, 0.152 ms for the eight-warp 128x64 tile with pointer stores it replaced;
#: ``bench/results/gpu-int8-epilogue-probe-2026-12-06-session15.json``), small row tiles for
#: batch 1. Four, as each is timed per layer at build time.
CONFIGS: tuple[TileConfig, ...] = (
    TileConfig(128, 128, 64, 4, 4),
    TileConfig(128, 128, 128, 8, 3),
    TileConfig(128, 64, 128, 4, 3),
    TileConfig(32, 64, 128, 4, 3),
)

#: ``mode`` codes of the residual operand (``RES``) and of the input (``X_MODE``)
RES_NONE, RES_FLOAT, RES_8BIT = 0, 1, 2
X_UINT8, X_INT8, X_FLOAT = 0, 1, 2


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, (int(n) - 1).bit_length()))


@dataclass(frozen=True)
class QPackedWeight:
    """An INT8 layer's weight as the GEMM's B matrix, stored transposed: ``[Cout, KH*KW*Cin]``
    (int8, the reduction contiguous, rows padded with zeros to a multiple of 16), with the
    per-output-channel constants of the epilogue: ``mult = x_scale * w_scale`` and ``corr =
    (128 - x_zero_point) * sum_k w`` (uint8 or float input) or ``-x_zero_point * sum_k w`` (int8)."""

    data: torch.Tensor
    mult: torch.Tensor  # float32 [Cout]
    corr: torch.Tensor  # int32 [Cout]
    cout: int
    cin: int
    kh: int
    kw: int


def pack_weight(w_oihw: torch.Tensor, w_scales: Sequence[float], x_scale: float, x_zero_point: int,
                device: Optional[torch.device] = None, x_signed: bool = False) -> QPackedWeight:
    """Quantizes a float conv weight ``[Cout, Cin, KH, KW]`` with ``w_scales`` (one per Cout) and
    packs it with the epilogue's constants, once, at compile time. ``x_signed``: the input is
    stored int8 (its zero point signed), else uint8 (or float, quantized to uint8 in the kernel)."""
    if w_oihw.dim() != 4:
        raise ValueError(f"pack_weight: an INT8 convolution weight is 4-D [Cout, Cin, KH, KW]; "
                         f"got shape {tuple(w_oihw.shape)}")
    cout, cin, kh, kw = (int(d) for d in w_oihw.shape)
    if len(w_scales) != cout:
        raise ValueError(f"pack_weight: {len(w_scales)} weight scales for {cout} output channels")
    device = device if device is not None else w_oihw.device
    scales = torch.tensor([float(s) for s in w_scales], dtype=torch.float64)
    q = quantize_weight(w_oihw.detach().cpu(), scales, 0)
    # [Cout, KH*KW*Cin], the reduction contiguous (K-major): Hopper's 8-bit tensor-core MMAs take
    # K-major operands only; rows padded to a multiple of 16 bytes
    kk = kh * kw * cin
    b = torch.zeros((cout, -(-kk // 16) * 16), dtype=torch.int8)
    b[:, :kk] = q.permute(0, 2, 3, 1).reshape(cout, kk)
    colsum = q.to(torch.int64).sum(dim=(1, 2, 3))
    corr = ((-int(x_zero_point) if x_signed else 128 - int(x_zero_point)) * colsum).to(torch.int32)
    mult = (scales * float(x_scale)).to(torch.float32)
    return QPackedWeight(b.to(device), mult.to(device), corr.to(device), cout, cin, kh, kw)


def pack_gemm_weight(w_kn: torch.Tensor, w_scales: Sequence[float], x_scale: float, x_zero_point: int,
                     device: Optional[torch.device] = None, x_signed: bool = False) -> QPackedWeight:
    """``pack_weight`` for a GEMM's ``[K, N]`` weight (a 1x1 convolution's ``[N, K, 1, 1]``)."""
    if w_kn.dim() != 2:
        raise ValueError(f"pack_gemm_weight: a GEMM weight is 2-D [K, N]; got shape {tuple(w_kn.shape)}")
    return pack_weight(w_kn.t()[:, :, None, None], w_scales, x_scale, x_zero_point, device, x_signed)


@dataclass(frozen=True)
class QuantIO:
    """How the kernel reads its input and writes its output. ``x_zero_point``: the input's zero
    point (uint8 storage); ``x_inv``: ``1 / x_scale`` (a float input is quantized with it), or a
    per-input-channel float32 tensor (SmoothQuant: ``1 / (smooth * x_scale)``). ``out_scale`` and
    ``out_zero_point``: the uint8 output's, or ``None`` for a float output. ``res_scale`` and
    ``res_zero_point``: an 8-bit residual's."""

    x_zero_point: int
    x_inv: float | torch.Tensor
    out_scale: Optional[float] = None
    out_zero_point: int = 0
    res_scale: float = 1.0
    res_zero_point: int = 0
    out_signed: bool = False  # a fresh quantized output is int8 (else uint8)

    @property
    def out_dtype(self) -> torch.dtype:
        return torch.int8 if self.out_signed else torch.uint8


def conv2d(x: torch.Tensor, weight: QPackedWeight, bias: Optional[torch.Tensor],
           residual: Optional[torch.Tensor], io: QuantIO, *, stride: Sequence[int], pads: Sequence[int],
           dilation: Sequence[int], act: Activation = Activation.NONE, act_params: Sequence[float] = (),
           config: TileConfig = CONFIGS[0], out: Optional[torch.Tensor] = None,
           out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The INT8 ``act(conv2d(x, w) + bias + residual)`` into ``out`` (any strides), or into a fresh
    channels-last tensor (uint8 if ``io.out_scale`` is set, else ``out_dtype``); returns it.

    ``x``: ``[N, Cin, H, W]`` uint8 (stored as ``io`` says) or float (quantized here), any strides;
    ``bias``: float32 ``[Cout]`` or ``None``; ``residual``: the output's shape, float or uint8
    (``io.res_scale``/``res_zero_point``), any strides; ``pads``: (top, left, bottom, right)."""
    if x.dim() != 4 or x.shape[1] != weight.cin:
        raise ValueError(f"Triton INT8 conv2d: input of shape {tuple(x.shape)} does not match the weight "
                         f"({weight.cout} x {weight.cin} x {weight.kh} x {weight.kw})")
    n, _, h, w = (int(d) for d in x.shape)
    oh, ow = output_hw(h, w, (weight.kh, weight.kw), stride, pads, dilation)
    shape = (n, weight.cout, oh, ow)
    if out is None:
        dtype = io.out_dtype if io.out_scale is not None else out_dtype
        out = torch.empty(shape, dtype=dtype, device=x.device, memory_format=torch.channels_last)
    elif tuple(out.shape) != shape:
        raise ValueError(f"Triton INT8 conv2d: out has shape {tuple(out.shape)}, the convolution gives {shape}")
    if residual is not None and tuple(residual.shape) != shape:
        raise ValueError(f"Triton INT8 conv2d: residual of shape {tuple(residual.shape)} does not match "
                         f"the output {shape}")
    _launch(x, (x.stride(0), x.stride(1), x.stride(2), x.stride(3)), n * oh * ow, h, w, oh, ow, weight, bias,
            residual, None if residual is None else tuple(residual.stride()), out, tuple(out.stride()), io,
            stride, pads, dilation, act, act_params, config)
    return out


def gemm(x: torch.Tensor, weight: QPackedWeight, bias: Optional[torch.Tensor], io: QuantIO, *,
         act: Activation = Activation.NONE, act_params: Sequence[float] = (), config: TileConfig = CONFIGS[0],
         out: Optional[torch.Tensor] = None, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The INT8 ``act(x @ w + bias)`` of ``x`` ``[.., K]`` (uint8 or float, its last dim packed)
    into ``out`` ``[.., N]`` (last dim packed) or a fresh tensor; returns it."""
    k = weight.cin
    if x.shape[-1] != k or weight.kh != 1 or weight.kw != 1:
        raise ValueError(f"Triton INT8 gemm: input of shape {tuple(x.shape)} does not match the weight "
                         f"[K={k}, N={weight.cout}]")
    if x.stride(-1) != 1:
        x = x.contiguous()
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < k):
        x2 = x2.contiguous()
    m = int(x2.shape[0])
    shape = (*lead, weight.cout)
    if out is None:
        dtype = io.out_dtype if io.out_scale is not None else out_dtype
        out = torch.empty(shape, dtype=dtype, device=x.device)
    elif tuple(out.shape) != shape or not out.is_contiguous():
        raise ValueError(f"Triton INT8 gemm: out of shape {tuple(out.shape)} (strides {out.stride()}) "
                         f"is not a contiguous {shape} tensor")
    o2 = out.view(-1, weight.cout)
    # [M, K] as an NHWC image [1, K, 1, M]: channel stride 1, pixel stride K
    _launch(x2, (0, 1, 0, int(x2.stride(0))), m, 1, m, 1, m, weight, bias, None, None, o2,
            (0, 1, 0, int(o2.stride(0))), io, (1, 1), (0, 0, 0, 0), (1, 1), act, act_params, config)
    return out


def quantize_int8(x: torch.Tensor, inv: float | torch.Tensor, zero_point: int,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` (float, its last dim packed) stored int8: ``clamp(floor(x * inv + zp + 0.5), -128,
    127)``, one pass; ``inv`` is ``1 / scale``, or one multiplier per last-dim channel (SmoothQuant's
    ``1 / (s * scale)``). The input of an INT8 layer that arrives in float is quantized so once,
    before the layer's kernel, instead of once per output tile inside it."""
    if triton is None:
        raise RuntimeError("the Triton INT8 kernels need the triton package; choose another tactic")
    if x.stride(-1) != 1:
        x = x.contiguous()
    k = int(x.shape[-1]) if x.dim() else 1
    x2 = x.reshape(-1, k)
    if x2.shape[0] > 1 and x2.stride(0) < k:
        x2 = x2.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    o2 = out.view(-1, k)
    rows = int(x2.shape[0])
    if rows == 0 or k == 0:
        return out
    per_channel = isinstance(inv, torch.Tensor)
    block_k = min(1024, max(16, 1 << (k - 1).bit_length()))
    block_r = max(1, 4096 // block_k)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(k, block_k))
    quantize_kernel[grid](x2, o2, inv if per_channel else x2, rows, k, int(x2.stride(0)), int(o2.stride(0)),
                          0.0 if per_channel else float(inv), float(zero_point),  # type: ignore[arg-type]
                          PER_CHANNEL=per_channel, BLOCK_R=block_r, BLOCK_K=block_k)
    return out


@dataclass(frozen=True)
class TmaOperands:
    """The kernel's operands that go through host TMA descriptors (``None``: through pointers):
    ``a`` the input ``[M, Cin]``, ``b`` the packed weight, ``r`` the residual and ``y`` the output
    ``[M, Cout]``."""

    a: Any = None
    b: Any = None
    r: Any = None
    y: Any = None


def tma_enabled(device: torch.device) -> bool:
    """Whether the kernel may use host TMA descriptors on ``device``: a CUDA GPU of compute
    capability 9.0+ (Hopper) with Triton's ``TensorDescriptor``, or CPU tensors under Triton's
    interpreter (which emulates them; how CI checks this path). ``EMBER_TRITON_TMA=0`` turns it
    off (a probe's baseline)."""
    if os.environ.get("EMBER_TRITON_TMA", "1") == "0" or _descriptor_class() is None:
        return False
    if device.type == "cuda":
        return _sm_major(device.index if device.index is not None else torch.cuda.current_device()) >= 9
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def shifted_boxes() -> bool:
    """Whether a stride-1 KxK convolution whose output grid is its input's also reads its input
    through TMA, each tap as one box of the ``[M, Cin]`` matrix shifted by the tap's offset, with
    the rows whose tap leaves the image (the box wrapped to a neighbouring row) set to the zero
    point in registers. On unless ``EMBER_TRITON_TMA_SHIFT=0``: timed on the H100 (sixteenth
    session, ``bench/probes/cuda_int8_epilogue_store.py --engine-kernel``, batch 256, best tile)
    against the pointer gather, ResNet-50's four stride-1 3x3 layers ran 11-14% faster (0.242 ->
    0.211 ms at 56x56x64, 0.135 -> 0.116 ms at 7x7x512), outputs bitwise equal."""
    return os.environ.get("EMBER_TRITON_TMA_SHIFT", "1") != "0"


@functools.cache
def _descriptor_class() -> Any:
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # Triton older than 3.4
        return None
    return TensorDescriptor


@functools.cache
def _sm_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def row_pitch(grid: tuple[int, int, int], strides: tuple[int, int, int]) -> Optional[int]:
    """The pitch ``p`` (elements) where pixel ``(b, y, x)`` of an ``[n, h, w]`` grid with these
    ``(batch, row, column)`` strides sits at ``(b*h*w + y*w + x) * p``, or ``None`` where the
    pixels form no such single run of rows (a padded or cropped view). Size-1 dims do not count."""
    n, h, w = grid
    sn, sh, sw = strides
    pitch = sw if w > 1 else (sh if h > 1 else sn)
    if (w > 1 and sw != pitch) or (h > 1 and sh != w * pitch) or (n > 1 and sn != h * w * pitch):
        return None
    return pitch


def _matrix(t: torch.Tensor, rows: int, cols: int, pitch: Optional[int], block: list[int]) -> Any:
    """A TMA descriptor of ``t``'s ``[rows, cols]`` matrix (rows ``pitch`` elements apart, columns
    packed), or ``None`` where TMA cannot address it (alignment, pitch)."""
    if pitch is None or rows <= 0 or cols <= 0:
        return None
    size = t.element_size()
    if t.data_ptr() % 16 or (pitch * size) % 16 or pitch < cols or block[-1] * size < 16:
        return None
    return _descriptor_class()(t, [rows, cols], [pitch, 1], block)


@dataclass(frozen=True)
class Tiles:
    """A launch's tile sizes (``config``'s, ``BLOCK_N``/``BLOCK_K`` shrunk to the layer's channel
    counts) and the reduction's shape: ``dense`` (1x1, unpadded), ``even_k`` (whole channel blocks)."""

    block_m: int
    block_n: int
    block_k: int
    dense: bool
    even_k: bool

    @staticmethod
    def of(weight: QPackedWeight, pads: Sequence[int], config: TileConfig) -> Tiles:
        bk = min(config.block_k, _pow2_at_least(weight.cin, 32))
        return Tiles(config.block_m, min(config.block_n, _pow2_at_least(weight.cout, 16)), bk,
                     weight.kh == 1 and weight.kw == 1 and not any(int(p) for p in pads), weight.cin % bk == 0)


def tma_operands(x: torch.Tensor, xs: tuple, m: int, hw: tuple[int, int], ohw: tuple[int, int],
                 weight: QPackedWeight, residual: Optional[torch.Tensor], rs: tuple, out: torch.Tensor,
                 ys: tuple, stride: Sequence[int], tiles: Tiles) -> TmaOperands:
    """Which of the kernel's operands go through TMA descriptors for this launch (module
    docstring), with the descriptors. ``xs``/``rs``/``ys``: (n, c, h, w) strides."""
    if not tma_enabled(x.device):
        return TmaOperands()
    bm, bn, bk, dense, even_k = tiles.block_m, tiles.block_n, tiles.block_k, tiles.dense, tiles.even_k
    cout, cin = weight.cout, weight.cin
    n = m // max(1, ohw[0] * ohw[1])
    a = None
    if ((dense or shifted_boxes()) and tuple(int(s) for s in stride) == (1, 1) and xs[1] == 1
            and tuple(hw) == tuple(ohw)):
        a = _matrix(x, m, cin, row_pitch((n, hw[0], hw[1]), (xs[0], xs[2], xs[3])), [bm, bk])
    # a tap's block must not run into the next tap's weights: whole channel blocks, or one tap
    b = (_matrix(weight.data, cout, int(weight.data.shape[1]), int(weight.data.stride(0)), [bn, bk])
         if even_k or weight.kh * weight.kw == 1 else None)

    def pixels(t: torch.Tensor, s: tuple) -> Any:
        if s[1] != 1:
            return None
        return _matrix(t, m, cout, row_pitch((n, ohw[0], ohw[1]), (s[0], s[2], s[3])), [bm, bn])

    return TmaOperands(a, b, None if residual is None else pixels(residual, rs), pixels(out, ys))


def _launch(x: torch.Tensor, xs: tuple, m: int, h: int, w: int, oh: int, ow: int, weight: QPackedWeight,
            bias: Optional[torch.Tensor], residual: Optional[torch.Tensor], rs: Optional[tuple],
            out: torch.Tensor, ys: tuple, io: QuantIO, stride: Sequence[int], pads: Sequence[int],
            dilation: Sequence[int], act: Activation, act_params: Sequence[float], config: TileConfig) -> None:
    from ember.backends.cuda.libs.triton_ops import ACT_CODES, epilogue_params

    if triton is None:
        raise RuntimeError("the Triton INT8 kernels need the triton package; choose another tactic")
    if m == 0 or weight.cout == 0:
        return
    x_float = x.is_floating_point()
    if not x_float and x.dtype not in (torch.uint8, torch.int8):
        raise ValueError(f"Triton INT8 kernel: an 8-bit input is stored uint8 or int8, not {x.dtype}")
    x_mode = X_FLOAT if x_float else (X_INT8 if x.dtype == torch.int8 else X_UINT8)
    smooth = isinstance(io.x_inv, torch.Tensor)
    if smooth and not x_float:
        raise ValueError("Triton INT8 kernel: a smoothed input must arrive in float")
    out_q = io.out_scale is not None
    if out_q and out.dtype not in (torch.uint8, torch.int8):
        raise ValueError(f"Triton INT8 kernel: a quantized output is stored uint8 or int8, not {out.dtype}")
    if not out_q and not out.is_floating_point():
        raise ValueError(f"Triton INT8 kernel: a float output cannot be {out.dtype}")
    res_mode = RES_NONE if residual is None else (RES_FLOAT if residual.is_floating_point() else RES_8BIT)
    tiles = Tiles.of(weight, pads, config)
    bn, bk = tiles.block_n, tiles.block_k
    p0, p1 = epilogue_params(act, act_params)
    res = residual if residual is not None else out
    rs = rs if rs is not None else ys
    inv_ptr = io.x_inv if smooth else weight.mult  # any pointer when unused
    t = tma_operands(x, xs, m, (h, w), (oh, ow), weight, residual, rs, out, ys, stride, tiles)
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(weight.cout, bn),)
    launch(qconv_nhwc_kernel, grid,
        t.a, t.b, t.r, t.y,
        x, weight.data, weight.mult, weight.corr, bias if bias is not None else weight.mult, res, out, inv_ptr,
        m, h, w, weight.cin, oh, ow, weight.cout,
        xs[0], xs[1], xs[2], xs[3], weight.data.stride(0),
        rs[0], rs[1], rs[2], rs[3], ys[0], ys[1], ys[2], ys[3],
        int(stride[0]), int(stride[1]), int(pads[0]), int(pads[1]), int(dilation[0]), int(dilation[1]),
        float(0.0 if smooth else io.x_inv), float(io.x_zero_point), int(io.x_zero_point),  # type: ignore[arg-type]
        float(io.res_scale), float(io.res_zero_point),
        float(1.0 / io.out_scale) if out_q else 1.0, float(io.out_zero_point),  # type: ignore[operator]
        float(p0), float(p1),
        KH=weight.kh, KW=weight.kw, X_MODE=x_mode, SMOOTH=smooth, HAS_BIAS=bias is not None,
        RES=res_mode, OUT_Q=out_q, OUT_SIGNED=out.dtype == torch.int8, ACT=ACT_CODES[act],
        DENSE=tiles.dense, EVEN_K=tiles.even_k, GROUP_M=8,
        A_TMA=t.a is not None, B_TMA=t.b is not None, R_TMA=t.r is not None, Y_TMA=t.y is not None,
        BLOCK_M=config.block_m, BLOCK_N=bn, BLOCK_K=bk,
        num_warps=config.num_warps, num_stages=config.num_stages)


if triton is not None:
    from ember.backends.cuda.libs.triton_jit import activate, grouped_tile

    @triton.jit(do_not_specialize=["R", "INV", "ZP"])
    def quantize_kernel(x_ptr, y_ptr, inv_ptr, R, K, sxr, syr, INV, ZP,
                        PER_CHANNEL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        """One ``BLOCK_R`` x ``BLOCK_K`` tile of ``quantize_int8``."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask = (rows < R)[:, None] & (cols < K)[None, :]
        r64 = rows.to(tl.int64)
        v = tl.load(x_ptr + r64[:, None] * sxr + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if PER_CHANNEL:
            v = v * tl.load(inv_ptr + cols, mask=cols < K, other=0.0)[None, :]
        else:
            v = v * INV
        q = tl.minimum(tl.maximum(tl.floor(v + (ZP + 0.5)), -128.0), 127.0)
        tl.store(y_ptr + r64[:, None] * syr + cols[None, :], q.to(tl.int8), mask=mask)

    @triton.jit(do_not_specialize=["M", "H", "W", "OH", "OW", "STRIDE_H", "STRIDE_W", "PAD_H",
                                   "PAD_W", "DIL_H", "DIL_W", "X_INV", "X_ZP", "X_ZPI", "R_SCALE", "R_ZP",
                                   "O_INV", "O_ZP"])
    def qconv_nhwc_kernel(
        a_desc, b_desc, r_desc, y_desc,
        x_ptr, w_ptr, mult_ptr, corr_ptr, b_ptr, r_ptr, y_ptr, inv_ptr,
        M, H, W, CIN, OH, OW, COUT,
        sxn, sxc, sxh, sxw, swk,
        srn, src, srh, srw,
        syn, syc, syh, syw,
        STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
        X_INV, X_ZP, X_ZPI, R_SCALE, R_ZP, O_INV, O_ZP,
        P0, P1,
        KH: tl.constexpr, KW: tl.constexpr, X_MODE: tl.constexpr, SMOOTH: tl.constexpr,
        HAS_BIAS: tl.constexpr, RES: tl.constexpr, OUT_Q: tl.constexpr, OUT_SIGNED: tl.constexpr,
        ACT: tl.constexpr, DENSE: tl.constexpr, EVEN_K: tl.constexpr, GROUP_M: tl.constexpr,
        A_TMA: tl.constexpr, B_TMA: tl.constexpr, R_TMA: tl.constexpr, Y_TMA: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """One ``BLOCK_M`` x ``BLOCK_N`` tile of the INT8 layer's output per program (module
        docstring)."""
        pid_m, pid_n = grouped_tile(M, COUT, BLOCK_M, BLOCK_N, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < COUT
        ow = offs_m % OW
        t = offs_m // OW
        oh = t % OH
        nb = (t // OH).to(tl.int64)
        ih0 = oh * STRIDE_H - PAD_H
        iw0 = ow * STRIDE_W - PAD_W
        # the pointers of the first tap's first channel block, built once; each step of the reduction
        # adds one scalar offset (the tap's and the channel block's), as a plain GEMM's pointers move
        rows = tl.where(mask_m, nb * sxn + ih0.to(tl.int64) * sxh + iw0.to(tl.int64) * sxw, 0)
        a_ptrs = x_ptr + rows[:, None] + (offs_k * sxc)[None, :]
        b_ptrs = w_ptr + tl.where(mask_n, offs_n, 0).to(tl.int64)[None, :] * swk + offs_k[:, None]
        c_blocks = tl.cdiv(CIN, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for it in range(0, KH * KW * c_blocks):
            tap = it // c_blocks
            c0 = (it - tap * c_blocks) * BLOCK_K
            kh = tap // KW
            kw = tap - kh * KW
            step = (kh * DIL_H) * sxh + (kw * DIL_W) * sxw + c0 * sxc
            if A_TMA:  # stride 1, output grid = input grid: the tap's rows are one shifted box of [M, Cin]
                raw = a_desc.load([pid_m * BLOCK_M + (kh * DIL_H - PAD_H) * W + (kw * DIL_W - PAD_W), c0])
                if not DENSE:  # rows whose tap leaves the image read a neighbouring row: the zero point
                    ih = ih0 + kh * DIL_H
                    iw = iw0 + kw * DIL_W
                    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    if X_MODE == 2:
                        raw = tl.where(inside[:, None], raw, 0.0).to(raw.dtype)
                    else:
                        raw = tl.where(inside[:, None], raw, X_ZPI).to(raw.dtype)
            elif DENSE and EVEN_K:  # 1x1, no padding, whole channel blocks: no mask (padded rows read row 0)
                raw = tl.load(a_ptrs + step)
            else:
                if DENSE:
                    amask = (c0 + offs_k < CIN)[None, :]
                else:
                    ih = ih0 + kh * DIL_H
                    iw = iw0 + kw * DIL_W
                    inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    amask = inside[:, None] if EVEN_K else inside[:, None] & (c0 + offs_k < CIN)[None, :]
                if X_MODE == 2:
                    raw = tl.load(a_ptrs + step, mask=amask, other=0.0)
                else:  # the zero point: padding is a real 0
                    raw = tl.load(a_ptrs + step, mask=amask, other=X_ZPI)
            if X_MODE == 2:  # float: quantized here, to the uint8 values, then shifted
                v = raw.to(tl.float32)
                if SMOOTH:
                    v = v * tl.load(inv_ptr + c0 + offs_k, mask=c0 + offs_k < CIN, other=0.0)[None, :]
                else:
                    v = v * X_INV
                v = tl.floor(v + (X_ZP + 0.5))
                v = tl.minimum(tl.maximum(v, 0.0), 255.0)
                a = (v - 128.0).to(tl.int8)
            elif X_MODE == 1:  # int8: to the tensor cores as loaded
                a = raw
            else:  # uint8: shifted to int8
                a = (raw.to(tl.int32) - 128).to(tl.int8)
            if B_TMA:
                b = b_desc.load([pid_n * BLOCK_N, tap * CIN + c0]).T
            elif EVEN_K:
                b = tl.load(b_ptrs + (tap * CIN + c0))
            else:
                b = tl.load(b_ptrs + (tap * CIN + c0), mask=(c0 + offs_k < CIN)[:, None], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        acc += tl.load(corr_ptr + offs_n, mask=mask_n, other=0)[None, :]
        y = acc.to(tl.float32) * tl.load(mult_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        cols = offs_n.to(tl.int64)
        if RES != 0:
            if R_TMA:
                r = r_desc.load([pid_m * BLOCK_M, pid_n * BLOCK_N]).to(tl.float32)
            else:
                r_rows = nb * srn + oh.to(tl.int64) * srh + ow.to(tl.int64) * srw
                r = tl.load(r_ptr + r_rows[:, None] + cols[None, :] * src, mask=mask, other=0).to(tl.float32)
            if RES == 2:
                r = (r - R_ZP) * R_SCALE
            y += r
        y = activate(y, P0, P1, ACT)
        if OUT_Q:
            q = tl.floor(y * O_INV + (O_ZP + 0.5))
            if OUT_SIGNED:
                q = tl.minimum(tl.maximum(q, -128.0), 127.0)
            else:
                q = tl.minimum(tl.maximum(q, 0.0), 255.0)
            y = q
        if Y_TMA:  # one bulk store from shared memory, clipped at the matrix's edges
            y_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], y.to(y_ptr.dtype.element_ty))
        else:
            y_ptrs = y_ptr + (nb * syn + oh.to(tl.int64) * syh + ow.to(tl.int64) * syw)[:, None] + cols[None, :] * syc
            tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)

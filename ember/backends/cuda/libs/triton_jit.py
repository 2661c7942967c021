"""The ``@triton.jit`` functions behind ``triton_ops`` and ``triton_conv`` (imported only where
Triton is installed, and only when a kernel is first launched)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def activate(x, P0, P1, ACT: tl.constexpr):
    """The epilogue activation ``ACT`` (a ``triton_ops.ACT_CODES`` value) of fp32 ``x``; ``P0``,
    ``P1`` its parameters (``triton_ops.epilogue_params``). Shared by Ember's Triton kernels."""
    # maximum/minimum propagate NaN (Triton's default returns the other operand): NaN in, NaN out
    if ACT == 1:
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 2:
        x = tl.minimum(tl.maximum(x, P0, propagate_nan=tl.PropagateNan.ALL), P1,
                       propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 3:
        x = tl.where(x >= 0.0, x, x * P0)
    elif ACT == 4:
        x = 1.0 / (1.0 + tl.exp(-x))
    elif ACT == 5:
        x = x / (1.0 + tl.exp(-x))
    elif ACT == 6:
        x = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    elif ACT == 7:
        x = tl.minimum(tl.maximum(x * P0 + P1, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0,
                       propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 8:
        x = 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0
    elif ACT == 9:
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACT == 10:
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        x = 0.5 * x * (1.0 + (2.0 / (1.0 + tl.exp(-2.0 * u)) - 1.0))
    return x


@triton.jit
def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)``: this program's output tile of an ``M`` x ``N`` product, in grouped
    order: ``GROUP_M`` row blocks walk the columns together, so their input rows and the weight
    stay in L2. Shared by the GEMM-shaped kernels."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


@triton.jit
def bias_act_kernel(y_ptr, b_ptr, r_ptr, total, n, P0, P1, HAS_BIAS: tl.constexpr,
                    HAS_RES: tl.constexpr, ACT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    x = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(b_ptr + (offs % n), mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = activate(x, P0, P1, ACT)
    tl.store(y_ptr + offs, x.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def layer_norm_kernel(x_ptr, r_ptr, y_ptr, w_ptr, b_ptr, rows, n, eps, HAS_R: tl.constexpr, HAS_W: tl.constexpr,
                      HAS_B: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """``ROWS`` rows of ``n`` per program (a [ROWS, BLOCK] tile), fp32 statistics."""
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]
    cols = tl.arange(0, BLOCK)[None, :]
    in_row = cols < n
    mask = (row < rows) & in_row
    offs = row * n + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_R:  # the residual sum, in fp32, never stored
        x = x + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / n
    d = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / n
    y = d * (1.0 / tl.sqrt(var + eps))[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=in_row, other=1.0).to(tl.float32)
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=in_row, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n
    x = tl.load(x_ptr + row * n + cols, mask=mask, other=-float("inf")).to(tl.float32)
    m = tl.max(x, axis=0)
    e = tl.where(mask, tl.exp(x - m), 0.0)
    y = e / tl.sum(e, axis=0)
    tl.store(y_ptr + row * n + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lrn_kernel(x_ptr, y_ptr, pixels, C, alpha_over_size, beta, bias, BEFORE: tl.constexpr,
               AFTER: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channels-last LRN: ``y = x / (bias + alpha/size * sum_{c-BEFORE..c+AFTER} x^2)^beta``."""
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    pm = p < pixels
    base = p[:, None] * C
    x = tl.load(x_ptr + base + c[None, :], mask=pm[:, None] & (c[None, :] < C), other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for j in tl.static_range(BEFORE + AFTER + 1):
        cc = c + (j - BEFORE)
        m = pm[:, None] & (cc[None, :] >= 0) & (cc[None, :] < C)
        v = tl.load(x_ptr + base + cc[None, :], mask=m, other=0.0).to(tl.float32)
        acc += v * v
    d = bias + alpha_over_size * acc
    y = x * tl.exp2(-beta * tl.log2(d))
    tl.store(y_ptr + base + c[None, :], y.to(y_ptr.dtype.element_ty), mask=pm[:, None] & (c[None, :] < C))


@triton.jit
def _maxpool_tap(acc, x_ptr, n, ih, iw, c, pm, cm, H, W, C):
    valid = pm & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    off = ((n * H + ih) * W + iw) * C
    v = tl.load(x_ptr + off[:, None] + c[None, :], mask=valid[:, None] & cm[None, :], other=float("-inf"))
    # NaN in the window gives NaN (Triton's default maximum would return the other operand)
    return tl.maximum(acc, v.to(tl.float32), propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def maxpool_nhwc_kernel(x_ptr, y_ptr, H, W, C, OH, OW, pixels_out, SH, SW, PH, PW, DH, DW,
                        KH: tl.constexpr, KW: tl.constexpr, UNROLL: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """2-D max pooling on channels-last tensors: a tile of output pixels x channels per program.
    ``UNROLL``: the window's taps unrolled (small windows); else loops (a 60x80 window unrolled is
    4,800 loads, which Triton takes minutes to compile, then fails)."""
    p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pm = p < pixels_out
    cm = c < C
    ow = p % OW
    t = p // OW
    oh = t % OH
    n = t // OH
    acc = tl.full((BLOCK_P, BLOCK_C), float("-inf"), tl.float32)
    if UNROLL:
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                acc = _maxpool_tap(acc, x_ptr, n, oh * SH - PH + kh * DH, ow * SW - PW + kw * DW, c, pm, cm, H, W, C)
    else:
        for kh in range(KH):
            for kw in range(KW):
                acc = _maxpool_tap(acc, x_ptr, n, oh * SH - PH + kh * DH, ow * SW - PW + kw * DW, c, pm, cm, H, W, C)
    tl.store(y_ptr + p[:, None] * C + c[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=pm[:, None] & cm[None, :])

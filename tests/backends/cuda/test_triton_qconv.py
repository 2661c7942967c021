"""Ember's Triton INT8 convolution / GEMM (``ember.backends.cuda.libs.triton_qconv``) and the CUDA
INT8 layers on it (``kernels/qlayers.py``): the kernel against a float64 evaluation of the same
quantized arithmetic (8-bit inputs with any zero point or float inputs quantized in the kernel,
SmoothQuant divisors, float or 8-bit residuals, every epilogue activation, uint8 or float outputs,
written into a strided slice whose neighbours must stay untouched); on a GPU also against the
CPU's oneDNN INT8 layers on the same plan node.

The numerics run on the GPU (``cuda``) and, where Triton is installed but there is no GPU, under
Triton's interpreter (``TRITON_INTERPRET=1``, in a subprocess: the interpreter is chosen when the
kernel is defined).
"""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ember.ops.attrs import Activation

A = Activation
#: name: (n, cin, h, w, cout, k, stride, pads (t, l, b, r), dilation, act, params,
#:        input ("u8" | "float"), x zero point, residual (None | "float" | "u8"), output ("u8" | "float"))
CONV_CASES = {
    "3x3_u8_relu_q": (2, 19, 9, 7, 21, (3, 3), (2, 1), (1, 1, 0, 1), (1, 1), A.RELU, (), "u8", 100, None, "u8"),
    "1x1_u8_zp128_float_out": (2, 64, 5, 4, 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), A.NONE, (), "u8", 128, None,
                               "float"),
    "7x7_s2_float_in_relu_q": (1, 3, 13, 13, 16, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), A.RELU, (), "float", 128,
                               None, "u8"),
    "3x3_dil2_res_u8_relu_q": (2, 8, 8, 8, 16, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), A.RELU, (), "u8", 0, "u8", "u8"),
    "1x1_res_float_none_float": (1, 33, 6, 6, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), A.NONE, (), "u8", 7,
                                 "float", "float"),
    "3x3_clip_q": (1, 16, 6, 6, 24, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1), A.CLIP, (0.0, 6.0), "u8", 0, None, "u8"),
    "3x3_silu_float": (1, 5, 5, 5, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.SILU, (), "u8", 131, None, "float"),
    "3x3_gelu_res_u8_q": (1, 12, 5, 5, 10, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.GELU_ERF, (), "u8", 128, "u8",
                          "u8"),
    # int8 storage (CUDA's): signed zero points, 8-bit residual and output int8 too
    "3x3_s8_relu_s8": (2, 19, 9, 7, 21, (3, 3), (2, 1), (1, 1, 0, 1), (1, 1), A.RELU, (), "s8", -28, None, "s8"),
    "1x1_s8_res_s8_s8": (1, 40, 6, 6, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), A.RELU, (), "s8", 0, "s8", "s8"),
    "3x3_s8_float_out": (1, 16, 7, 7, 33, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.NONE, (), "s8", 5, "float", "float"),
}
#: name: (leading dims, K, N, act, input ("u8" | "float" | "smooth"), x zero point, output)
GEMM_CASES = {
    "bert_like_smooth_float": ((3, 37), 40, 24, A.NONE, "smooth", 128, "float"),
    "u8_gelu_q": ((50,), 64, 48, A.GELU_ERF, "u8", 112, "u8"),
    "float_relu_q": ((2, 2, 9), 32, 17, A.RELU, "float", 128, "u8"),
    "u8_none_float_k100": ((20,), 100, 33, A.NONE, "u8", 128, "float"),
    "s8_relu_s8": ((40,), 64, 48, A.RELU, "s8", -3, "s8"),
    "s8_none_float": ((2, 21), 96, 20, A.NONE, "s8", 0, "float"),
}
SENTINEL = 77


def _act(y: torch.Tensor, act: Activation, params) -> torch.Tensor:
    if act is A.NONE:
        return y
    if act is A.RELU:
        return torch.relu(y)
    if act is A.CLIP:
        return y.clamp(params[0], params[1])
    if act is A.SILU:
        return F.silu(y)
    if act is A.GELU_ERF:
        return F.gelu(y)
    raise AssertionError(act)


def _quantize_ref(y: torch.Tensor, scale: float, zp: int, signed: bool = False) -> torch.Tensor:
    return torch.floor(y / scale + zp + 0.5).clamp(*((-128, 127) if signed else (0, 255)))


def _compare_q(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """8-bit outputs: the kernel's fp32 epilogue may round an exact tie of the float64 reference
    the other way: at most one step, on a few elements."""
    diff = (got.cpu().double() - want).abs()
    assert float(diff.max()) <= 1, f"{name}: 8-bit output off by {float(diff.max())} steps"
    assert float((diff > 0).double().mean()) <= 0.01, f"{name}: {float((diff > 0).double().mean()):.2%} differ"


def _compare_f(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    tol = 1e-5 if got.dtype == torch.float32 else 2e-3
    a, b = got.cpu().double(), want
    err = float(torch.linalg.vector_norm(a - b) / max(float(torch.linalg.vector_norm(b)), 1e-12))
    assert err <= tol, f"{name}: relative error {err:.2e}"


def check_conv_case(name: str, case, device: str, config_index: int, out_dtype=torch.float32,
                    aligned: bool = False) -> None:
    """One case into a channel slice of a wider channels-last buffer whose other channels must stay
    untouched. ``aligned``: the slice and the buffer's pixel pitch 16-byte aligned and the residual
    channels-last, as TMA can take them (the engine's arena and Concat slices usually are), and the
    kernel's TMA operands checked where TMA runs; else a misaligned slice (pointer stores)."""
    from ember.backends.cuda.libs import triton_qconv as Q

    n, cin, h, w, cout, (kh, kw), stride, pads, dil, act, params, kind, zp, res_kind, out_kind = case
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    sx = 0.04
    if kind in ("u8", "s8"):
        lo = 0 if kind == "u8" else -128
        xq = torch.randint(lo, lo + 256, (n, cin, h, w), generator=gen).to(torch.uint8 if kind == "u8" else torch.int8)
        x = xq
        x_real = (xq.double() - zp) * sx
    else:
        x = torch.randn(n, cin, h, w, generator=gen)
        x_real = (torch.floor(x.double() / sx + zp + 0.5).clamp(0, 255) - zp) * sx
    wt = torch.randn(cout, cin, kh, kw, generator=gen) / math.sqrt(cin * kh * kw)
    ws = (wt.abs().amax(dim=(1, 2, 3)) / 127).tolist()
    bias = torch.randn(cout, generator=gen) * 0.1
    oh, ow = Q.output_hw(h, w, (kh, kw), stride, pads, dil)
    wq = Q.quantize_weight(wt, torch.tensor(ws, dtype=torch.float64), 0).double() * torch.tensor(
        ws, dtype=torch.float64).view(-1, 1, 1, 1)
    ref = F.conv2d(F.pad(x_real, (pads[1], pads[3], pads[0], pads[2])), wq, None, stride, 0, dil)
    ref = ref + bias.double().view(1, -1, 1, 1)
    res = None
    rs, rzp = 0.05, 9
    if res_kind in ("u8", "s8"):
        lo = 0 if res_kind == "u8" else -128
        res = torch.randint(lo, lo + 256, (n, cout, oh, ow), generator=gen).to(
            torch.uint8 if res_kind == "u8" else torch.int8)
        ref = ref + (res.double() - rzp) * rs
    elif res_kind == "float":
        res = torch.randn(n, cout, oh, ow, generator=gen)
        ref = ref + res.double()
    if res is not None and aligned:
        res = res.contiguous(memory_format=torch.channels_last)
    ref = _act(ref, act, params)
    so, zo = 0.03, (20 if out_kind == "u8" else -7)
    q_out = out_kind in ("u8", "s8")
    io = Q.QuantIO(zp, 1.0 / sx, so if q_out else None, zo if q_out else 0, rs, rzp, out_kind == "s8")
    packed = Q.pack_weight(wt, ws, sx, zp, torch.device(device), x_signed=kind == "s8")
    dtype = {"u8": torch.uint8, "s8": torch.int8}.get(out_kind, out_dtype)
    lead = 16 // dtype.itemsize if aligned else 2
    width = -(-(cout + 2 * lead) // lead) * lead if aligned else cout + 5
    buf = torch.full((n, width, oh, ow), SENTINEL, dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last)
    view = buf.narrow(1, lead, cout)
    xd = x.to(device).contiguous(memory_format=torch.channels_last)
    rd = None if res is None else res.to(device)
    config = Q.CONFIGS[config_index]
    got = Q.conv2d(xd, packed, bias.to(device), rd, io, stride=stride, pads=pads, dilation=dil, act=act,
                   act_params=params, config=config, out=view)
    assert got.data_ptr() == view.data_ptr()
    if aligned and Q.tma_enabled(xd.device):
        t = _tma_of(xd, packed, rd, view, stride, pads, dil, config)
        assert t.y is not None, f"{name}: the output should go through TMA"
        assert (t.b is not None) == (Q.Tiles.of(packed, pads, config).even_k or kh * kw == 1), f"{name}: weight"
        assert (t.r is not None) == (rd is not None), f"{name}: the residual should go through TMA"
        same_grid = tuple(stride) == (1, 1) and (oh, ow) == (h, w)
        assert (t.a is not None) == (same_grid and (kh == kw == 1 and not any(pads) or Q.shifted_boxes())), name
    if q_out:
        _compare_q(view, _quantize_ref(ref, so, zo, out_kind == "s8"), name)
    else:
        _compare_f(view, ref, name)
    assert bool((buf[:, :lead] == SENTINEL).all()) and bool((buf[:, lead + cout:] == SENTINEL).all()), \
        f"{name}: the kernel wrote outside its slice"
    fresh = Q.conv2d(x.to(device), packed, bias.to(device), None if res is None else res.to(device), io,
                     stride=stride, pads=pads, dilation=dil, act=act, act_params=params,
                     config=Q.CONFIGS[config_index], out_dtype=out_dtype)
    assert fresh.is_contiguous(memory_format=torch.channels_last) and fresh.dtype == dtype
    assert torch.equal(fresh, view)


def _tma_of(x, packed, residual, out, stride, pads, dilation, config):
    """The TMA operands the kernel's launcher picks for this convolution (as ``_launch`` calls
    ``tma_operands``)."""
    from ember.backends.cuda.libs import triton_qconv as Q

    n, _, h, w = x.shape
    oh, ow = Q.output_hw(h, w, (packed.kh, packed.kw), stride, pads, dilation)
    return Q.tma_operands(x, tuple(x.stride()), n * oh * ow, (h, w), (oh, ow), packed, residual,
                          tuple(residual.stride()) if residual is not None else tuple(out.stride()), out,
                          tuple(out.stride()), stride, Q.Tiles.of(packed, pads, config))


#: cases the TMA operands take (aligned slices, channel counts of whole 16-byte rows)
TMA_CONV_CASES = {
    "1x1_s8_res_s8_s8_tma": (2, 64, 9, 7, 48, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), A.RELU, (), "s8", -5, "s8",
                             "s8"),
    "1x1_s8_k80_float_res_float_tma": (1, 80, 11, 13, 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), A.NONE, (), "s8",
                                       3, "float", "float"),
    "3x3_s8_relu_s8_tma": (2, 32, 8, 9, 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.RELU, (), "s8", -20, None,
                           "s8"),
    "1x1_s2_s8_s8_tma": (2, 32, 10, 10, 64, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), A.NONE, (), "s8", 0, None, "s8"),
    # the shifted-box input (EMBER_TRITON_TMA_SHIFT=1): dilated and asymmetric "same" padding, a
    # channel tail past the tile, a uint8 input with its zero point, a float input
    "3x3_dil2_u8_res_s8_tma": (2, 48, 7, 9, 32, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), A.RELU, (), "u8", 77, "s8",
                               "s8"),
    "3x2_asym_s8_float_tma": (1, 80, 6, 11, 48, (3, 2), (1, 1), (2, 0, 0, 1), (1, 1), A.NONE, (), "s8", -9, None,
                              "float"),
    "5x5_float_in_q_tma": (2, 16, 9, 8, 16, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), A.CLIP, (0.0, 6.0), "float", 128,
                           None, "u8"),
}


def check_gemm_case(name: str, case, device: str, config_index: int) -> None:
    from ember.backends.cuda.libs import triton_qconv as Q

    lead, k, n, act, kind, zp, out_kind = case
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    sx = 0.03
    w = torch.randn(k, n, generator=gen) / math.sqrt(k)
    bias = torch.randn(n, generator=gen) * 0.1
    inv: float | torch.Tensor = 1.0 / sx
    if kind in ("u8", "s8"):
        lo = 0 if kind == "u8" else -128
        xq = torch.randint(lo, lo + 256, (*lead, k), generator=gen).to(torch.uint8 if kind == "u8" else torch.int8)
        x, x_real = xq, (xq.double() - zp) * sx
        w_used = w
    else:
        x = torch.randn(*lead, k, generator=gen) * 2
        s = torch.rand(k, generator=gen).double() + 0.5 if kind == "smooth" else torch.ones(k, dtype=torch.float64)
        w_used = (w.double() * s[:, None]).float()
        if kind == "smooth":
            inv = (1.0 / (s * sx)).float().to(device)
        x_real = (torch.floor(x.double() / (s * sx) + zp + 0.5).clamp(0, 255) - zp) * sx
    ws = (w_used.abs().amax(dim=0) / 127).tolist()
    wq = Q.quantize_weight(w_used.t(), torch.tensor(ws, dtype=torch.float64), 0).double() * torch.tensor(
        ws, dtype=torch.float64)[:, None]
    ref = _act(x_real @ wq.t() + bias.double(), act, ())
    so, zo = 0.05, (30 if out_kind == "u8" else -2)
    q_out = out_kind in ("u8", "s8")
    io = Q.QuantIO(zp, inv, so if q_out else None, zo if q_out else 0, out_signed=out_kind == "s8")
    packed = Q.pack_gemm_weight(w_used, ws, sx, zp, torch.device(device), x_signed=kind == "s8")
    got = Q.gemm(x.to(device), packed, bias.to(device), io, act=act, config=Q.CONFIGS[config_index],
                 out_dtype=torch.float32)
    assert tuple(got.shape) == (*lead, n)
    if q_out:
        assert got.dtype == (torch.uint8 if out_kind == "u8" else torch.int8)
        _compare_q(got, _quantize_ref(ref, so, zo, out_kind == "s8"), name)
    else:
        _compare_f(got, ref, name)


def check_quantize(device: str) -> None:
    """``quantize_int8``: per tensor and per channel (smoothing), rows of any count, a 4-D tensor."""
    from ember.backends.cuda.libs import triton_qconv as Q

    gen = torch.Generator().manual_seed(5)
    for shape, per_channel, zp in (((37, 70), False, 0), ((3, 5, 130), True, -9), ((2, 7, 3, 300), False, 17)):
        x = torch.randn(*shape, generator=gen) * 3
        inv = (torch.rand(shape[-1], generator=gen) + 0.5) * 20 if per_channel else 21.0
        got = Q.quantize_int8(x.to(device), inv.to(device) if per_channel else inv, zp)
        want = torch.floor(x.double() * (inv.double() if per_channel else inv) + zp + 0.5).clamp(-128, 127)
        assert got.dtype == torch.int8 and tuple(got.shape) == shape
        assert torch.equal(got.cpu().double(), want), shape


def check_layers(device: str, factories=None) -> None:
    """The CUDA INT8 layers (``kernels/qlayers.py``) on plan nodes stored int8, as the CUDA build
    makes them, with a float input (quantized once by ``quantize_int8``, smoothing folded in for
    the GEMM): against the float64 evaluation of the same quantized arithmetic."""
    from ember.backends.base import CompileContext
    from ember.backends.cuda.kernels.qlayers import FACTORIES
    from ember.ir import DType, Graph, Node, OpType, TensorType

    factories = factories or FACTORIES
    from ember.ops.attrs import ConvAttrs, GemmAttrs, QConvAttrs, QGemmAttrs, QuantParams
    from ember.ops.infer import infer_graph
    from ember.plan.config import Precision

    rng = np.random.default_rng(11)
    w = (rng.standard_normal((24, 16, 3, 3)) / 12).astype(np.float32)
    ws = tuple(float(v) for v in np.abs(w).max(axis=(1, 2, 3)) / 127)
    xp, op = QuantParams(0.03, -5, DType.INT8), QuantParams(0.02, -128, DType.INT8)
    conv = Node("q", OpType.QCONV, ("x", "w"), ("y",),
                QConvAttrs(ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), xp, ws, Activation.RELU, (), False, op))
    g = infer_graph(Graph("g", [conv], ["x"], ["y"], {"x": TensorType(DType.FLOAT32, (2, 16, 8, 8))}, {"w": w}))
    x = torch.from_numpy(rng.standard_normal((2, 16, 8, 8)).astype(np.float32))
    consts = {"w": torch.from_numpy(w).to(device)}
    xr = (torch.floor(x.double() / 0.03 - 5 + 0.5).clamp(-128, 127) + 5) * 0.03
    wq = torch.round(torch.from_numpy(w).double() / torch.tensor(ws).double().view(-1, 1, 1, 1)).clamp(-127, 127)
    ref = torch.relu(F.conv2d(xr, wq * torch.tensor(ws).double().view(-1, 1, 1, 1), padding=1))
    want = _quantize_ref(ref, 0.02, -128, signed=True)
    for tactic, factory in factories[OpType.QCONV].items():
        kernel = factory(conv, CompileContext(g, consts, torch.device(device), tactic, Precision.INT8))
        got = kernel([x.to(device), consts["w"]])[0]
        assert got.dtype == torch.int8
        _compare_q(got, want, f"layer {tactic}")
    k, n = 48, 20
    wk = (rng.standard_normal((k, n)) / 7).astype(np.float32)
    s = rng.uniform(0.5, 2.0, k)
    wsm = wk * s[:, None]
    ws2 = tuple(float(v) for v in np.abs(wsm).max(axis=0) / 127)
    gemm = Node("m", OpType.QGEMM, ("a", "wk"), ("z",),
                QGemmAttrs(GemmAttrs(), QuantParams(0.05, 0, DType.INT8), ws2, Activation.NONE, (), None,
                           tuple(float(v) for v in s)))
    g2 = infer_graph(Graph("g2", [gemm], ["a"], ["z"], {"a": TensorType(DType.FLOAT32, (3, 9, k))}, {"wk": wk}))
    a = torch.from_numpy(rng.standard_normal((3, 9, k)).astype(np.float32))
    ar = torch.floor(a.double() / (torch.from_numpy(s) * 0.05) + 0.5).clamp(-128, 127) * 0.05
    wq2 = torch.round(torch.from_numpy(wsm).double() / torch.tensor(ws2).double()).clamp(-127, 127)
    ref2 = ar @ (wq2 * torch.tensor(ws2).double())
    consts2 = {"wk": torch.from_numpy(wk).to(device)}
    for tactic, factory in factories[OpType.QGEMM].items():
        kernel = factory(gemm, CompileContext(g2, consts2, torch.device(device), tactic, Precision.INT8))
        got = kernel([a.to(device), consts2["wk"]])[0]
        assert got.dtype == torch.float16 and tuple(got.shape) == (3, 9, n)  # compute_dtype("int8")
        err = float((got.cpu().double() - ref2).norm() / ref2.norm())
        assert err < 2e-3, (tactic, err)


def check_all(device: str) -> None:
    """Every case on ``device``, each with one tile configuration (cycled)."""
    from ember.backends.cuda.libs import triton_qconv as Q

    for i, (name, case) in enumerate(CONV_CASES.items()):
        check_conv_case(name, case, device, i % len(Q.CONFIGS))
    for shift in ("0", "1"):  # the shifted-box input path is read from the environment at each launch
        os.environ["EMBER_TRITON_TMA_SHIFT"] = shift
        try:
            for i, (name, case) in enumerate(TMA_CONV_CASES.items()):
                check_conv_case(name, case, device, i % len(Q.CONFIGS), aligned=True)
        finally:
            os.environ.pop("EMBER_TRITON_TMA_SHIFT", None)
    for i, (name, case) in enumerate(GEMM_CASES.items()):
        check_gemm_case(name, case, device, i % len(Q.CONFIGS))
    check_quantize(device)
    check_layers(device)


_HAS_TRITON = importlib.util.find_spec("triton") is not None
Q_CONFIGS = __import__("ember.backends.cuda.libs.triton_qconv", fromlist=["CONFIGS"]).CONFIGS


@pytest.mark.skipif(not _HAS_TRITON or torch.cuda.is_available(),
                    reason="needs Triton without a GPU (the interpreter); on a GPU the cuda tests run it")
def test_kernel_numerics_under_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = Path(__file__).resolve().parent
    code = f"import sys; sys.path.insert(0, {str(here)!r}); import test_triton_qconv as t; t.check_all('cpu')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.cuda
@pytest.mark.parametrize("config_index", range(len(Q_CONFIGS)))
@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv_on_cuda(name, config_index):
    check_conv_case(name, CONV_CASES[name], "cuda", config_index)
    check_conv_case(name, CONV_CASES[name], "cuda", config_index, out_dtype=torch.float16)


@pytest.mark.cuda
@pytest.mark.parametrize("config_index", range(len(Q_CONFIGS)))
@pytest.mark.parametrize("name", sorted(TMA_CONV_CASES))
@pytest.mark.parametrize("shift", ["0", "1"])
def test_conv_through_tma_on_cuda(name, config_index, shift, monkeypatch):
    monkeypatch.setenv("EMBER_TRITON_TMA_SHIFT", shift)
    check_conv_case(name, TMA_CONV_CASES[name], "cuda", config_index, aligned=True)
    check_conv_case(name, TMA_CONV_CASES[name], "cuda", config_index, out_dtype=torch.float16, aligned=True)


@pytest.mark.cuda
@pytest.mark.parametrize("config_index", range(len(Q_CONFIGS)))
@pytest.mark.parametrize("name", sorted(GEMM_CASES))
def test_gemm_on_cuda(name, config_index):
    check_gemm_case(name, GEMM_CASES[name], "cuda", config_index)


def _qconv_node(residual: bool, out: bool):
    from ember.ir import DType, Graph, Node, OpType, TensorType
    from ember.ops.attrs import ConvAttrs, QConvAttrs, QuantParams
    from ember.ops.infer import infer_graph

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((24, 16, 3, 3)) / 12).astype(np.float32)
    consts = {"w": w, "b": (rng.standard_normal(24) * 0.1).astype(np.float32)}
    ws = tuple(float(v) for v in np.abs(w).max(axis=(1, 2, 3)) / 127)
    xp = QuantParams(0.05, 3)
    attrs = QConvAttrs(ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), xp, ws, Activation.RELU, (), residual,
                       QuantParams(0.04, 0) if out else None, QuantParams(0.06, 11) if residual else None)
    ins = ("x", "w", "b") + (("r",) if residual else ())
    types = {"x": TensorType(DType.UINT8, (2, 16, 10, 10))}
    inputs = ["x"]
    if residual:
        types["r"] = TensorType(DType.UINT8, (2, 24, 10, 10))
        inputs.append("r")
    node = Node("q", OpType.QCONV, ins, ("y",), attrs)
    g = infer_graph(Graph("g", [node], inputs, ["y"], types, consts))
    return g, node


def test_dequantized_fallback_layers_compute_the_same_numbers():
    """Where Triton cannot run, the CUDA INT8 layers fall back to float32 arithmetic on the
    dequantized operands: the same results (checked here on CPU tensors, no Triton needed)."""
    from ember.backends.cuda.kernels.qlayers import qconv_dequantized, qgemm_dequantized
    from ember.ir import OpType

    check_layers("cpu", {OpType.QCONV: {"dequantized_fp32": qconv_dequantized},
                         OpType.QGEMM: {"dequantized_fp32": qgemm_dequantized}})


@pytest.mark.cuda
def test_quantize_and_int8_layers_on_cuda():
    check_quantize("cuda")
    check_layers("cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("residual,out", [(False, True), (True, True), (False, False)])
def test_cuda_qconv_layer_matches_the_cpu_onednn_layer(residual, out):
    from ember.backends.base import CompileContext
    from ember.backends.cpu.kernels.qlayers import int8_available, qconv
    from ember.backends.cuda.kernels.qlayers import FACTORIES
    from ember.ir import OpType
    from ember.plan.config import Precision

    if not int8_available():
        pytest.skip("this PyTorch has no oneDNN INT8 kernels")
    g, node = _qconv_node(residual, out)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 16, 10, 10), generator=gen).to(torch.uint8)
    r = torch.randint(0, 256, (2, 24, 10, 10), generator=gen).to(torch.uint8) if residual else None
    cpu_consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    cpu = qconv(node, CompileContext(g, cpu_consts, torch.device("cpu"), "", Precision.INT8))
    want = cpu([x, cpu_consts["w"], cpu_consts["b"], r])[0]
    dev = torch.device("cuda")
    gpu_consts = {k: v.to(dev) for k, v in cpu_consts.items()}
    for tactic, factory in FACTORIES[OpType.QCONV].items():
        kernel = factory(node, CompileContext(g, gpu_consts, dev, tactic, Precision.INT8))
        got = kernel([x.to(dev), gpu_consts["w"], gpu_consts["b"], None if r is None else r.to(dev)])[0]
        if out:
            diff = (got.cpu().int() - want.int()).abs()
            assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.02, tactic
        else:
            ref = want.double()
            err = float((got.cpu().double() - ref).norm() / ref.norm())
            assert err < 2e-3, (tactic, err)  # fp16 output


def test_row_pitch_finds_the_one_pitch_of_a_pixel_grid_or_none():
    """``row_pitch``: the pixels of an [n, h, w] grid as rows of one matrix (what TMA can address),
    through Concat slices and size-1 dims; None for cropped or padded views."""
    from ember.backends.cuda.libs.triton_qconv import row_pitch

    t = torch.empty(2, 40, 5, 7).contiguous(memory_format=torch.channels_last)  # n, c, h, w
    s = t.stride()
    assert row_pitch((2, 5, 7), (s[0], s[2], s[3])) == 40
    sl = t.narrow(1, 8, 16)  # a Concat slice: same pitch, the rows just narrower
    assert row_pitch((2, 5, 7), (sl.stride(0), sl.stride(2), sl.stride(3))) == 40
    crop = t[:, :, :, 1:6]  # 5 of 7 columns: rows of a pixel row no longer follow each other
    assert row_pitch((2, 5, 5), (crop.stride(0), crop.stride(2), crop.stride(3))) is None
    nchw = torch.empty(2, 40, 5, 7)
    assert row_pitch((2, 5, 7), (nchw.stride(0), nchw.stride(2), nchw.stride(3))) is None  # images 1400 apart, not 35
    one = torch.empty(1, 40, 5, 7)  # one NCHW image: pitch 1, which _matrix refuses (rows narrower than 40)
    assert row_pitch((1, 5, 7), (one.stride(0), one.stride(2), one.stride(3))) == 1
    assert row_pitch((1, 1, 9), (0, 0, 64)) == 64  # a GEMM's [M, K] seen as one image row
    assert row_pitch((3, 1, 1), (48, 48, 48)) == 48  # [N, C, 1, 1] pooled features
    assert row_pitch((1, 1, 1), (0, 0, 0)) == 0  # one pixel: no pitch to speak of (TMA then refuses it)


def test_tma_is_off_without_hopper_or_the_interpreter(monkeypatch):
    from ember.backends.cuda.libs import triton_qconv as Q

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not Q.tma_enabled(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert Q.tma_enabled(torch.device("cpu")) == (Q._descriptor_class() is not None)
    monkeypatch.setenv("EMBER_TRITON_TMA", "0")
    assert not Q.tma_enabled(torch.device("cpu"))
    monkeypatch.delenv("EMBER_TRITON_TMA_SHIFT", raising=False)
    assert Q.shifted_boxes()  # on by default (timed faster on the H100)
    monkeypatch.setenv("EMBER_TRITON_TMA_SHIFT", "0")
    assert not Q.shifted_boxes()

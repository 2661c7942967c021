"""The CPU's INT8 layers (QConv, QGemm on oneDNN's INT8 primitives) against a float64 reference
computed from the same quantized operands: every output within one quantization step (8-bit
outputs) or within the rounding of the float epilogue (float32 outputs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ember.backends.cpu import evaluate
from ember.backends.cpu.kernels import qlayers
from ember.backends.cpu.kernels.qlayers import dequantize, int8_available, quantize, quantize_weight
from ember.ir import Node, OpType
from ember.ir.dtype import DType
from ember.ops.attrs import Activation, ConvAttrs, GemmAttrs, QConvAttrs, QGemmAttrs, QuantParams
from ember.passes.int8 import symmetric_scales, weight_qmax
from ember.plan.config import Device

pytestmark = pytest.mark.skipif(not int8_available(), reason="this PyTorch has no oneDNN INT8 kernels")


@pytest.fixture(params=["onednn", "float32"])
def qmax(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Each reference test on both of the INT8 layers' paths; the largest int8 weight its scales
    make. oneDNN's 8-bit kernels with the weights a calibrated build makes on this CPU (7 bits where
    the kernels add pairs of products in 16 bits: ``features.int8_saturates``, so on such a CPU this
    checks that they then never saturate), and the float32 arithmetic on the same integers that
    full-range weights take there (forced here on any CPU)."""
    if request.param == "float32":
        monkeypatch.setattr(qlayers, "int8_saturates", lambda: True)
        return 127
    return weight_qmax(Device.CPU)

U8 = DType.UINT8
S8 = DType.INT8


def _q(x: np.ndarray, p: QuantParams) -> np.ndarray:
    """Reference quantization (round half up, as the kernel)."""
    lo, hi = (0, 255) if p.dtype is U8 else (-128, 127)
    return np.clip(np.floor(x.astype(np.float64) / p.scale + p.zero_point + 0.5), lo, hi)


def _dq(q: np.ndarray, p: QuantParams) -> np.ndarray:
    return (q.astype(np.float64) - p.zero_point) * p.scale


def _np(q: QuantParams, x: np.ndarray) -> np.ndarray:
    return _q(x, q).astype(np.uint8 if q.dtype is U8 else np.int8)


def _wq(w: np.ndarray, scales, axis: int) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    s = np.asarray(scales, np.float64).reshape(shape)
    return np.clip(np.round(w / s), -127, 127) * s


def _act(y: np.ndarray, act: Activation, params=()) -> np.ndarray:
    if act is Activation.RELU:
        return np.maximum(y, 0)
    if act is Activation.CLIP:
        return np.clip(y, *params)
    if act is Activation.SIGMOID:
        return 1 / (1 + np.exp(-y))
    if act is Activation.GELU_ERF:
        return F.gelu(torch.from_numpy(y)).numpy()
    return y


def _check(got: np.ndarray, ref: np.ndarray, out: QuantParams | None, what: str) -> None:
    if out is None:
        assert got.dtype == np.float32, what
        tol = 1e-4 * max(np.abs(ref).max(), 1.0)
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol, err_msg=what)
    else:
        assert got.dtype == (np.uint8 if out.dtype is U8 else np.int8), what
        steps = np.abs(got.astype(np.int64) - _q(ref, out))
        assert steps.max() <= 1 and (steps > 0).mean() < 0.01, f"{what}: {steps.max()} steps"


CASES = [
    # name, conv attrs, cin, cout, x params, act, params, out params
    ("3x3 relu u8 out", ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), 8, 16, QuantParams(0.03, 0, U8),
     Activation.RELU, (), QuantParams(0.05, 0, U8)),
    ("1x1 signed input folded, f32 out", ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), 16, 8,
     QuantParams(0.02, 128, U8), Activation.NONE, (), None),
    ("3x3 padded signed input", ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1)), 8, 8, QuantParams(0.02, 128, U8),
     Activation.NONE, (), QuantParams(0.04, 128, U8)),
    ("asymmetric pads", ConvAttrs((3, 3), (1, 1), (0, 0, 1, 2), (1, 1)), 4, 8, QuantParams(0.02, 100, U8),
     Activation.NONE, (), None),
    ("depthwise relu6", ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), group=8), 8, 8, QuantParams(0.03, 0, U8),
     Activation.CLIP, (0.0, 6.0), QuantParams(6 / 255, 0, U8)),
    ("sigmoid after float", ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), 8, 8, QuantParams(0.03, 0, U8),
     Activation.SIGMOID, (), QuantParams(1 / 255, 0, U8)),
    ("grouped 4, dilated 2", ConvAttrs((3, 3), (1, 1), (2, 2, 2, 2), (2, 2), group=4), 8, 16,
     QuantParams(0.03, 0, U8), Activation.RELU, (), None),
    ("5x5 stride 3", ConvAttrs((5, 5), (3, 3), (2, 2, 2, 2), (1, 1)), 4, 8, QuantParams(0.02, 128, U8),
     Activation.NONE, (), QuantParams(0.1, 128, U8)),
]


@pytest.mark.parametrize("name, conv, cin, cout, xp, act, params, out", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("feed_8bit", [False, True])
def test_qconv_matches_reference(name, conv, cin, cout, xp, act, params, out, feed_8bit, qmax):
    r = np.random.default_rng(0)
    x = r.normal(0.8, 1.5, (2, cin, 9, 9)).astype(np.float32)
    if xp.zero_point == 0:
        x = np.abs(x)
    w = r.normal(0, 0.3, (cout, cin // conv.group, *conv.kernel_shape)).astype(np.float32)
    b = r.normal(0, 0.2, cout).astype(np.float32)
    ws = symmetric_scales(w, 0, qmax)
    node = Node("qc", OpType.QCONV, ("x", "w", "b"), ("y",), QConvAttrs(conv, xp, ws, act, params, False, out))
    feed = _np(xp, x) if feed_8bit else x
    got = evaluate(node, [feed, w, b])[0]
    xr = torch.from_numpy(_dq(_q(x, xp), xp))
    pads = conv.pads
    xr = F.pad(xr, (pads[1], pads[3], pads[0], pads[2]))
    ref = F.conv2d(xr, torch.from_numpy(_wq(w, ws, 0)), torch.from_numpy(b.astype(np.float64)),
                   conv.strides, 0, conv.dilations, conv.group).numpy()
    _check(got, _act(ref, act, params), out, name)


@pytest.mark.parametrize("out, res_dtype", [(QuantParams(0.06, 0, U8), "f32"), (QuantParams(0.06, 0, U8), "u8"),
                                            (None, "u8"), (None, "f32"), (QuantParams(0.06, 128, U8), "u8")])
def test_qconv_residual_sum(out, res_dtype, qmax):
    """conv + residual -> ReLU (or none for a signed output): the residual summed 8-bit into an
    8-bit output, or in float32; an 8-bit residual is left unchanged (oneDNN sums into a copy)."""
    r = np.random.default_rng(1)
    conv = ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
    x = np.abs(r.normal(0, 1, (1, 8, 5, 5))).astype(np.float32)
    w = r.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32)
    res = r.normal(0, 1, (1, 8, 5, 5)).astype(np.float32)
    rp = QuantParams(0.03, 128, U8)
    act = Activation.RELU if out is None or out.zero_point == 0 else Activation.NONE
    ws = symmetric_scales(w, 0, qmax)
    node = Node("qc", OpType.QCONV, ("x", "w", "", "r"), ("y",),
                QConvAttrs(conv, QuantParams(0.02, 0, U8), ws, act, (), True, out,
                           rp if (out is not None or res_dtype == "u8") else None))
    rin = _np(rp, res) if res_dtype == "u8" else res
    kept = rin.copy()
    got = evaluate(node, [x, w, None, rin])[0]
    assert np.array_equal(rin, kept)
    xq = _dq(_q(x, QuantParams(0.02, 0, U8)), QuantParams(0.02, 0, U8))
    rr = _dq(_q(res, rp), rp) if (res_dtype == "u8" or out is not None) else res
    ref = F.conv2d(torch.from_numpy(xq), torch.from_numpy(_wq(w, ws, 0))).numpy() + rr
    _check(got, _act(ref, act), out, f"residual {res_dtype} -> {out}")


@pytest.mark.parametrize("shape, trans_b, xp, act, out, smooth", [
    ((6, 32), False, QuantParams(0.02, 0, S8), Activation.NONE, None, False),
    ((2, 5, 32), True, QuantParams(0.02, 128, U8), Activation.RELU, QuantParams(0.05, 0, U8), False),
    ((2, 5, 32), False, QuantParams(0.02, 0, S8), Activation.GELU_ERF, QuantParams(0.03, 10, U8), False),
    ((4, 32), False, QuantParams(0.02, 0, S8), Activation.NONE, QuantParams(0.05, 0, S8), True),
])
def test_qgemm_matches_reference(shape, trans_b, xp, act, out, smooth, qmax):
    r = np.random.default_rng(2)
    x = r.normal(0, 1, shape).astype(np.float32)
    x[..., 3] *= 20  # an outlier channel
    w = r.normal(0, 0.2, (24, 32) if trans_b else (32, 24)).astype(np.float32)
    c = r.normal(0, 0.1, 24).astype(np.float32)
    w_kn = w.T if trans_b else w
    s = np.sqrt(np.abs(x).reshape(-1, 32).max(0) / np.abs(w_kn).max(1)).astype(np.float32) if smooth else None
    if smooth:
        xp = QuantParams(float(np.float32((np.abs(x).reshape(-1, 32).max(0) / s).max() / 127)), 0, S8)
        ws = symmetric_scales(w_kn * s[:, None], 1, qmax)
    else:
        ws = symmetric_scales(w_kn, 1, qmax)
    attrs = QGemmAttrs(GemmAttrs(trans_b=trans_b), xp, ws, act, (), out, tuple(s.tolist()) if smooth else ())
    node = Node("qg", OpType.QGEMM, ("x", "w", "c"), ("y",), attrs)
    got = evaluate(node, [x, w, c])[0]
    assert got.shape == (*shape[:-1], 24)
    xs = x / s if smooth else x
    wk = (w_kn * s[:, None]) if smooth else w_kn
    ref = _dq(_q(xs, xp), xp) @ _wq(wk.astype(np.float32), ws, 1) + c
    _check(got, _act(ref, act), out, f"gemm {shape} {act}")


@pytest.mark.parametrize("kind", ["gemm", "conv"])
def test_seven_bit_weights_never_saturate(kind):
    """The worst case for oneDNN's pairwise 8-bit kernels on x86 without VNNI (``vpmaddubsw`` adds
    two u8 x s8 products in 16 bits): every input 255, every weight of one sign. Weights of at most
    64 (what a calibrated build makes on such a CPU: ``weight_qmax``) run on those kernels and are
    exact (255 x 128 = 32640 fits); full-range ones take the float32 path there (``saturates``).
    Measured on a 2-core AVX2 EPYC: forced onto oneDNN, full-range weights were 10.6% off."""
    r = np.random.default_rng(7)
    xp = QuantParams(0.5, 0, U8)
    for qmax in (64, 127):
        if kind == "gemm":
            w = np.abs(r.normal(0, 1, (16, 64))).astype(np.float32)
            ws = symmetric_scales(w, 0, qmax)
            node = Node("q", OpType.QGEMM, ("x", "w"), ("y",),
                        QGemmAttrs(GemmAttrs(trans_b=True), xp, ws, Activation.NONE, (), None, ()))
            x = np.full((4, 64), 255, np.uint8)
            ref = _dq(x, xp) @ _wq(w, ws, 0).T
        else:
            w = np.abs(r.normal(0, 1, (8, 32, 3, 3))).astype(np.float32)
            ws = symmetric_scales(w, 0, qmax)
            conv = ConvAttrs((3, 3), (1, 1), (0, 0, 0, 0), (1, 1))
            attrs = QConvAttrs(conv, xp, ws, Activation.NONE, (), False, None)
            node = Node("q", OpType.QCONV, ("x", "w"), ("y",), attrs)
            x = np.full((1, 32, 5, 5), 255, np.uint8)
            ref = F.conv2d(torch.from_numpy(_dq(x, xp)), torch.from_numpy(_wq(w, ws, 0))).numpy()
        qw = quantize_weight(torch.from_numpy(w), torch.tensor(ws), 0)
        assert int(qw.abs().max()) == qmax
        assert qlayers.saturates(qw, xp) == (qlayers.int8_saturates() and qmax > 64)
        got = evaluate(node, [x, w])[0]
        np.testing.assert_allclose(got, ref, rtol=1e-5, err_msg=f"{kind}, weights up to {qmax}")


def test_quantize_dequantize_round_trip_and_layout():
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    p = QuantParams(0.05, 128, U8)
    q = quantize(x, p)
    assert q.dtype == torch.uint8 and q.is_contiguous(memory_format=torch.channels_last)
    back = dequantize(q, p)
    assert (back - x).abs().max() <= 0.05 / 2 + 1e-6 or (x.abs() > 6.3).any()
    s8 = quantize(torch.tensor([-10.0, -0.026, 0.026, 10.0]), QuantParams(0.05, 0, S8))
    assert s8.dtype == torch.int8 and s8.tolist() == [-128, -1, 1, 127]


def test_weight_quantization_is_symmetric_per_channel():
    w = torch.tensor([[1.27, -0.635], [0.0, 0.0]])
    q = quantize_weight(w, torch.tensor([0.01, 1e-7]), 0)
    assert q.dtype == torch.int8 and q.tolist() == [[127, -64], [0, 0]]

"""Conformance models for QuantizeLinear / DequantizeLinear, the integer ops of dynamic
quantization (DynamicQuantizeLinear, MatMulInteger, ConvInteger) and QLinearMatMul /
QLinearConv (see ``op_models``), checked
bit-exactly against ONNX Runtime (``rtol = atol = 0``): every opset form (10, 13, 19, 21),
per-tensor (scalar and one-value 1-D scales), per-axis (positive and negative axis) and blocked
scales, zero points of both signs and none, the 8- and 16-bit types, int32 dequantization,
float16 inputs and scales, scales fed at run time, and the inputs where exactness is easiest to
lose: exact ties (``x / scale`` = k + .5), saturation at both ends, infinities and NaN."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tests.conformance.op_models import F32, OpCase, _rng, const, feed, graph_model, rnd, single

TP = onnx.TensorProto


def _exact(case: OpCase) -> OpCase:
    case.rtol = case.atol = 0.0
    case.tags = ("quant",)
    return case


def _hard_values(r: np.random.Generator, scale: float, lo: int, hi: int) -> np.ndarray:
    """Random values across and past the range, exact ties, both saturation ends, inf and NaN."""
    span = (hi - lo) * scale
    ties = (np.arange(-12, 12) + 0.5) * scale  # x / scale lands exactly on .5: half to even
    ends = np.array([lo - 3, lo - 0.5, lo, hi, hi + 0.5, hi + 3]) * scale
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0]
    values = np.concatenate([r.uniform(-span, span, 64), ties, ends, special]).astype(F32)
    return values.reshape(-1)


def _q(name: str, x: np.ndarray, scale, zp, opset: int = 21, fed: bool = False, **attrs) -> OpCase:
    make = feed if fed else const
    ins = [feed("x", x), make("scale", scale)] + ([make("zp", zp)] if zp is not None else [])
    return _exact(single(name, "QuantizeLinear", ins, opset=opset, **attrs))


def _dq(name: str, q: np.ndarray, scale, zp, opset: int = 21, fed: bool = False, **attrs) -> OpCase:
    make = feed if fed else const
    ins = [feed("q", q), make("scale", scale)] + ([make("zp", zp)] if zp is not None else [])
    return _exact(single(name, "DequantizeLinear", ins, opset=opset, **attrs))


def _per_tensor(r: np.random.Generator) -> list[OpCase]:
    cases = []
    for dtype, zps in ((np.uint8, (0, 128, 255)), (np.int8, (0, -5, 17)), (np.int16, (-300, 1000)),
                       (np.uint16, (0, 40000))):
        info = np.iinfo(dtype)
        for zp in zps:
            opset = 21 if info.bits == 16 else 13
            x = _hard_values(r, 0.25, int(info.min) - zp, int(info.max) - zp)
            tag = f"{dtype.__name__}-zp{zp}"
            cases.append(_q(f"QuantizeLinear-{tag}", x, np.array(0.25, F32), np.array(zp, dtype), opset))
            q = r.integers(info.min, int(info.max) + 1, 50).astype(dtype)
            cases.append(_dq(f"DequantizeLinear-{tag}", q, np.array(0.037, F32), np.array(zp, dtype), opset))
    x = _hard_values(r, 0.1, -128, 127)
    cases += [
        _q("QuantizeLinear-10", x, np.array(0.1, F32), np.array(3, np.uint8), opset=10),
        _q("QuantizeLinear-10-no-zp", x, np.array(0.1, F32), None, opset=10),
        _q("QuantizeLinear-13-no-zp", x, np.array(0.1, F32), None, opset=13),
        _q("QuantizeLinear-19", x, np.array(0.1, F32), np.array(-9, np.int8), opset=19),
        _q("QuantizeLinear-21-output-dtype", x, np.array(0.1, F32), None, output_dtype=TP.INT8),
        _q("QuantizeLinear-21-output-dtype-uint16", x * 100, np.array(0.1, F32), None, output_dtype=TP.UINT16),
        _q("QuantizeLinear-13-scale-1d-one", x, np.array([0.1], F32), np.array([7], np.int8), opset=13),
        _q("QuantizeLinear-13-fed-params", x, np.array(0.1, F32), np.array(-20, np.int8), opset=13, fed=True),
        _q("QuantizeLinear-19-fp16", (x * 3).astype(np.float16), np.array(0.3, np.float16),
           np.array(1, np.int8), opset=19),
        _q("QuantizeLinear-13-tiny-scale", x, np.array(1e-30, F32), np.array(0, np.int8), opset=13),
        _dq("DequantizeLinear-10", r.integers(0, 256, 40).astype(np.uint8), np.array(0.02, F32),
            np.array(128, np.uint8), opset=10),
        _dq("DequantizeLinear-13-no-zp", r.integers(-128, 128, 40).astype(np.int8), np.array(0.02, F32),
            None, opset=13),
        _dq("DequantizeLinear-13-int32", r.integers(-2**31, 2**31 - 1, 40, dtype=np.int64).astype(np.int32),
            np.array(1e-4, F32), None, opset=13),
        _dq("DequantizeLinear-13-int32-zp0", r.integers(-10**6, 10**6, 40).astype(np.int32),
            np.array(3e-3, F32), np.array(0, np.int32), opset=13),
        _dq("DequantizeLinear-19-fp16", r.integers(-128, 128, 40).astype(np.int8), np.array(0.3, np.float16),
            np.array(-4, np.int8), opset=19),
        _dq("DequantizeLinear-13-fed-params", r.integers(0, 256, 40).astype(np.uint8), np.array(0.02, F32),
            np.array(100, np.uint8), opset=13, fed=True),
    ]
    return cases


def _per_axis(r: np.random.Generator) -> list[OpCase]:
    x = rnd(r, 2, 3, 4, 5, lo=-6.0, hi=6.0)
    x[0, :, 0, 0] = [np.nan, np.inf, -np.inf]
    s3, s5 = r.uniform(0.01, 0.05, 3).astype(F32), r.uniform(0.01, 0.05, 5).astype(F32)
    z3 = np.array([-100, 0, 100], np.int8)
    z5 = r.integers(0, 256, 5).astype(np.uint8)
    ties = ((np.arange(-60, 60).reshape(4, 30) + 0.5) * np.array([[0.5], [0.25], [0.125], [2.0]])).astype(F32)
    q = r.integers(-128, 128, (2, 3, 4, 5)).astype(np.int8)
    return [
        _q("QuantizeLinear-13-axis1", x, s3, z3, opset=13, axis=1),
        _q("QuantizeLinear-13-axis-neg", x, s5, z5, opset=13, axis=-1),
        _q("QuantizeLinear-13-axis0-ties", ties, np.array([0.5, 0.25, 0.125, 2.0], F32),
           np.array([3, -3, 0, 1], np.int8), opset=13, axis=0),
        _q("QuantizeLinear-21-axis-int16", x * 100, s3, np.array([-5, 0, 5], np.int16), axis=1),
        _q("QuantizeLinear-13-axis-fed", x, s3, z3, opset=13, fed=True, axis=1),
        _dq("DequantizeLinear-13-axis1", q, s3, z3, opset=13, axis=1),
        _dq("DequantizeLinear-13-axis-neg", q.astype(np.uint8), s5, z5, opset=13, axis=-1),
        _dq("DequantizeLinear-13-axis-no-zp", q, s3, None, opset=13, axis=-3),
    ]


def _blocked(r: np.random.Generator) -> list[OpCase]:
    x = rnd(r, 4, 10, lo=-3.0, hi=3.0)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    s_last = r.uniform(0.01, 0.05, (4, 3)).astype(F32)        # ceil(10 / 4) = 3 blocks
    z_last = r.integers(-20, 20, (4, 3)).astype(np.int8)
    s_first = r.uniform(0.01, 0.05, (2, 10)).astype(F32)      # 4 rows in blocks of 2
    z_first = r.integers(0, 256, (2, 10)).astype(np.uint8)
    q = r.integers(-128, 128, (4, 10)).astype(np.int8)
    return [
        _q("QuantizeLinear-21-blocked-last", x, s_last, z_last, axis=1, block_size=4),
        _q("QuantizeLinear-21-blocked-neg-axis", x, s_last, z_last, axis=-1, block_size=4),
        _q("QuantizeLinear-21-blocked-first", x, s_first, z_first, axis=0, block_size=2),
        _q("QuantizeLinear-21-blocked-no-zp", x, s_last, None, axis=1, block_size=4),
        _dq("DequantizeLinear-21-blocked-last", q, s_last, z_last, axis=1, block_size=4),
        _dq("DequantizeLinear-21-blocked-first", q.astype(np.uint8), s_first, z_first, axis=0, block_size=2),
        _dq("DequantizeLinear-21-blocked-uint16", q.astype(np.uint16), s_last, None, axis=-1, block_size=4),
    ]


def _chains(r: np.random.Generator) -> list[OpCase]:
    """Q -> DQ round trips and a DQ of constant weights before a MatMul and a Conv (constant
    folding turns the DQ into float weights; the result must not change). The MatMul and Conv
    sum in another order than ONNX Runtime: those two keep the float tolerance."""
    x = rnd(r, 2, 8, lo=-4.0, hi=4.0)
    w = r.integers(-127, 128, (8, 6)).astype(np.int8)
    ws = r.uniform(0.005, 0.02, 6).astype(F32)
    xc = rnd(r, 1, 3, 6, 6)
    wc = r.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    wcs = r.uniform(0.005, 0.02, 4).astype(F32)
    qdq = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
           helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["y"])]
    mm = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
          helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
          helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=1),
          helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    conv = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0),
            helper.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"])]
    s, z = np.array(0.05, F32), np.array(128, np.uint8)
    return [
        _exact(graph_model("QDQ-roundtrip", qdq, [feed("x", x), const("s", s), const("z", z)], ["y"], 13)),
        graph_model("QDQ-matmul-per-channel", mm, [feed("x", x), const("s", s), const("z", z),
                                                   const("w", w), const("ws", ws)], ["y"], 13),
        graph_model("QDQ-conv-relu-per-channel", conv, [feed("x", xc), const("s", s), const("z", z),
                                                        const("w", wc), const("ws", wcs)], ["y"], 13),
    ]


def _dynamic(r: np.random.Generator) -> list[OpCase]:
    """DynamicQuantizeLinear (ranges across zero, all positive, all negative, all zero),
    MatMulInteger and ConvInteger with and without zero points (ONNX Runtime takes per-tensor
    zero points for A and x, per-column / per-channel ones for B and w)."""
    def dql(name: str, x: np.ndarray) -> OpCase:
        return _exact(single(name, "DynamicQuantizeLinear", [feed("x", x)], opset=11, n_out=3))

    a = r.integers(0, 256, (2, 5, 16)).astype(np.uint8)
    b = r.integers(-128, 128, (16, 7)).astype(np.int8)
    x = r.integers(0, 256, (1, 3, 7, 7)).astype(np.uint8)
    w = r.integers(-128, 128, (4, 3, 3, 3)).astype(np.int8)
    return [
        dql("DynamicQuantizeLinear", rnd(r, 3, 50, lo=-3.0, hi=5.0)),
        dql("DynamicQuantizeLinear-positive", rnd(r, 7, lo=0.5, hi=3.0)),
        dql("DynamicQuantizeLinear-negative", rnd(r, 7, lo=-3.0, hi=-0.5)),
        dql("DynamicQuantizeLinear-zeros", np.zeros(4, F32)),
        dql("DynamicQuantizeLinear-nan", np.array([np.nan, 1, -2, 3, 4, np.nan, 6, 7, 8, 9], F32)),
        dql("DynamicQuantizeLinear-inf", np.array([1, np.inf, -2, 3], F32)),
        _exact(single("MatMulInteger", "MatMulInteger", [feed("a", a), const("b", b), const("az", np.uint8(130)),
                                                         const("bz", r.integers(-5, 5, 7).astype(np.int8))], opset=10)),
        _exact(single("MatMulInteger-no-zp", "MatMulInteger", [feed("a", a), feed("b", b)], opset=10)),
        _exact(single("MatMulInteger-int8-int8", "MatMulInteger", [feed("a", a.astype(np.int8)), const("b", b),
                                                                   const("az", np.int8(-3))], opset=10)),
        _exact(single("ConvInteger", "ConvInteger", [feed("x", x), const("w", w), const("xz", np.uint8(120)),
                                                     const("wz", np.int8(3))], opset=10, pads=[1, 1, 1, 1],
                      strides=[2, 2])),
        _exact(single("ConvInteger-asym-pads-uint8-w", "ConvInteger",
                      [feed("x", x), const("w", w.astype(np.uint8)), const("xz", np.uint8(120))],
                      opset=10, pads=[1, 0, 1, 2])),
        _exact(single("ConvInteger-no-zp-group", "ConvInteger", [feed("x", x[:, :2]), const("w", w[:, :1])],
                      opset=10, group=2)),
    ]


def _qlinear(r: np.random.Generator) -> list[OpCase]:
    """QLinearMatMul and QLinearConv: per-tensor and per-column / per-channel weight scales,
    uint8 and int8 activations, the int32 bias, strides, groups (depthwise)."""
    f = F32
    a = r.integers(0, 256, (2, 5, 64)).astype(np.uint8)
    b = r.integers(-128, 128, (64, 7)).astype(np.int8)
    mm = ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"]

    def qmm(name: str, a: np.ndarray, b_s, b_z, y_z) -> OpCase:
        a_z = np.array(128 if a.dtype == np.uint8 else -3, a.dtype)
        ins = [feed("a", a), const("a_s", f(0.02)), const("a_z", a_z), const("b", b), const("b_s", b_s),
               const("b_z", b_z), const("y_s", f(0.05)), const("y_z", y_z)]
        return _exact(graph_model(name, [helper.make_node("QLinearMatMul", mm, ["y"])], ins, ["y"], 10))

    x = r.integers(0, 256, (1, 8, 9, 9)).astype(np.uint8)
    w = r.integers(-128, 128, (16, 8, 3, 3)).astype(np.int8)
    wd = r.integers(-128, 128, (8, 1, 3, 3)).astype(np.int8)
    conv = ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z"]

    def qconv(name: str, x: np.ndarray, w: np.ndarray, bias: bool, **attrs) -> OpCase:
        m = w.shape[0]
        x_z = np.array(120 if x.dtype == np.uint8 else -5, x.dtype)
        y_z = np.array(128, np.uint8) if x.dtype == np.uint8 else np.array(3, np.int8)
        ins = [feed("x", x), const("x_s", f(0.02)), const("x_z", x_z), const("w", w),
               const("w_s", r.uniform(0.001, 0.01, m).astype(f)), const("w_z", np.zeros(m, np.int8)),
               const("y_s", f(0.3)), const("y_z", y_z)]
        names = conv + (["B"] if bias else [])
        ins += [const("B", r.integers(-2000, 2000, m).astype(np.int32))] if bias else []
        return _exact(graph_model(name, [helper.make_node("QLinearConv", names, ["y"], **attrs)], ins, ["y"], 10))

    return [
        qmm("QLinearMatMul", a, f(0.004), np.int8(0), np.uint8(100)),
        qmm("QLinearMatMul-per-column", a, r.uniform(0.001, 0.01, 7).astype(f), np.zeros(7, np.int8), np.uint8(100)),
        qmm("QLinearMatMul-int8", a.astype(np.int8), f(0.004), np.int8(0), np.int8(-7)),
        qconv("QLinearConv-bias", x, w, True, pads=[1, 1, 1, 1]),
        qconv("QLinearConv-stride", x, w, False, strides=[2, 2]),
        qconv("QLinearConv-depthwise", x, wd, True, pads=[1, 1, 1, 1], group=8),
        qconv("QLinearConv-int8", x.astype(np.int8), w, True, pads=[0, 1, 1, 0]),
    ]


def quant_cases() -> list[OpCase]:
    """Every quantization op case."""
    r = _rng("quant")
    return _per_tensor(r) + _per_axis(r) + _blocked(r) + _chains(r) + _dynamic(r) + _qlinear(r)

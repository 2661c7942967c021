"""quantize_layers: which layers become INT8, how their tensors are stored, and what stays fp32."""
from __future__ import annotations

import numpy as np
import pytest

from ember.ir import Node, OpType
from ember.ir.dtype import DType
from ember.ops.attrs import Activation, AxisAttrs, ConvAttrs, FusedConvAttrs, FusedGemmAttrs, GemmAttrs
from ember.passes.int8 import (
    BAD_WEIGHT,
    MADE,
    NO_RECORD,
    SMOOTHED,
    WEIGHTS_7BIT,
    lower_bound,
    symmetric_scales,
    tensor_params,
    weight_qmax,
)
from ember.passes.pipeline import run_pipeline
from ember.plan.config import BuildConfig, Device
from ember.plan.records import QuantDType, QuantizationPlan, QuantRecord

from passkit import assert_same_outputs, ir_graph, rng_const

CONV3 = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
CONV1 = ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1))


def _cnn():
    """conv+relu -> conv (signed) -> + residual(conv1 out) -> relu -> global pool -> gemm."""
    nodes = [
        Node("c1", OpType.FUSED_CONV, ("x", "w1", "b1"), ("a",), FusedConvAttrs(CONV3, Activation.RELU)),
        Node("c2", OpType.FUSED_CONV, ("a", "w2", "b2"), ("b",), FusedConvAttrs(CONV1)),
        Node("c3", OpType.FUSED_CONV, ("b", "w3", "", "a"), ("c",), FusedConvAttrs(CONV1, Activation.RELU, (), True)),
        Node("gap", OpType.GLOBAL_AVERAGE_POOL, ("c",), ("g",)),
        Node("flat", OpType.FLATTEN, ("g",), ("f",), AxisAttrs(1)),
        Node("fc", OpType.FUSED_GEMM, ("f", "wf", "bf"), ("y",), FusedGemmAttrs(GemmAttrs(trans_b=True))),
    ]
    consts = {"w1": rng_const(8, 3, 3, 3, seed=1), "b1": rng_const(8, seed=2), "w2": rng_const(8, 8, 1, 1, seed=3),
              "b2": rng_const(8, seed=4), "w3": rng_const(8, 8, 1, 1, seed=5), "wf": rng_const(10, 8, seed=6),
              "bf": rng_const(10, seed=7)}
    return ir_graph(nodes, {"x": (2, 3, 6, 6)}, ["y"], consts)


def _records(graph, names, scale=0.05, source="calibration:entropy"):
    return QuantizationPlan({n: QuantRecord(n, QuantDType.INT8, (scale,), (0,), None, source) for n in names})


def test_calibrated_cnn_becomes_int8_with_8bit_activations_between_int8_layers():
    g = _cnn()
    cfg = BuildConfig(device="cpu", precision="int8")
    out = run_pipeline(g, cfg, calibrated=_records(g, ["x", "a", "b", "c", "f"]))
    graph = out.graph
    ops = {n.name: n.op for n in graph.nodes}
    assert ops == {"c1": OpType.QCONV, "c2": OpType.QCONV, "c3": OpType.QCONV, "gap": OpType.GLOBAL_AVERAGE_POOL,
                   "flat": OpType.FLATTEN, "fc": OpType.QGEMM}
    types = graph.types
    # read only by INT8 layers: 8-bit; read by the pool, or a graph output: float32
    assert types["a"].dtype is DType.UINT8 and types["b"].dtype is DType.UINT8
    assert types["c"].dtype is DType.FLOAT32 and types["y"].dtype is DType.FLOAT32
    by = {n.name: n for n in graph.nodes}
    # after ReLU: the 256 steps over [0, T] (T = 127 * 0.05); signed: zero point 128
    assert by["c1"].attrs.out.zero_point == 0 and np.isclose(by["c1"].attrs.out.scale, 0.05 * 127 / 255)
    assert by["c2"].attrs.out.zero_point == 128 and by["c2"].attrs.out.scale == 0.05
    assert by["c3"].attrs.x == by["c2"].attrs.out and by["c3"].attrs.residual == by["c1"].attrs.out
    assert by["c3"].attrs.out is None
    assert all(out.records.precision.layers[n] == "int8" for n in ("c1", "c2", "c3", "fc"))
    assert out.records.quantization.get("w1").axis == 0 and len(out.records.quantization.get("w1").scale) == 8
    fired = {k: v for s in out.stats for k, v in s.fired.items()}
    assert fired[MADE] == 4
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 6, 6)).astype(np.float32)
    assert_same_outputs(g, graph, {"x": x}, rtol=0, atol=0.1)  # within INT8's error of the float graph


@pytest.mark.parametrize("saturating", [False, True])
def test_weights_get_7_bits_where_the_cpus_8_bit_kernels_saturate(monkeypatch, saturating):
    """On an x86 CPU without VNNI or AMX (``features.int8_saturates``), oneDNN adds pairs of u8 x s8
    products in 16 bits: a calibrated CPU build then scales weights to +-64, which cannot saturate,
    and says so; elsewhere (and on CUDA) to +-127."""
    from ember.backends.cpu import features

    monkeypatch.setattr(features, "int8_saturates", lambda: saturating)
    assert weight_qmax(Device.CUDA) == 127
    qmax = weight_qmax(Device.CPU)
    assert qmax == (64 if saturating else 127)
    g = _cnn()
    cfg = BuildConfig(device="cpu", precision="int8")
    out = run_pipeline(g, cfg, calibrated=_records(g, ["x", "a", "b", "c", "f"]))
    by = {n.name: n for n in out.graph.nodes}
    w1 = np.asarray(g.constants["w1"], np.float64)
    assert np.allclose(by["c1"].attrs.w_scales, np.abs(w1).reshape(8, -1).max(1) / qmax, rtol=1e-6)
    assert out.records.quantization.get("w1").scale == by["c1"].attrs.w_scales
    fired = {k: v for s in out.stats for k, v in s.fired.items()}
    assert fired.get(WEIGHTS_7BIT, 0) == (4 if saturating else 0)


def test_layer_precisions_keep_a_layer_fp32_and_its_neighbours_read_float():
    g = _cnn()
    out = run_pipeline(g, BuildConfig(device="cpu", precision="int8", layer_precisions={"c2": "fp32"}),
                       calibrated=_records(g, ["x", "a", "b", "c", "f"]))
    by = {n.name: n for n in out.graph.nodes}
    assert by["c2"].op is OpType.FUSED_CONV and out.records.precision.layers["c2"] == "fp32"
    assert out.graph.types["b"].dtype is DType.FLOAT32  # c2's output: float for c3 to quantize
    # "a" is read by the fp32 c2: float32, so c3's residual arrives float and is quantized for the sum
    assert out.graph.types["a"].dtype is DType.FLOAT32 and by["c3"].attrs.residual is None


def test_int8_layers_only_where_asked_and_scales_known():
    g = _cnn()
    only = run_pipeline(g, BuildConfig(device="cpu", layer_precisions={"fc": "int8"}),
                        calibrated=_records(g, ["x", "a", "b", "c", "f"]))
    assert [n.op for n in only.graph.nodes].count(OpType.QGEMM) == 1
    assert all(n.op is not OpType.QCONV for n in only.graph.nodes)
    cfg = BuildConfig(device="cpu", precision="int8")
    missing = run_pipeline(g, cfg, calibrated=_records(g, ["a", "b", "c", "f"]))
    by = {n.name: n for n in missing.graph.nodes}
    assert by["c1"].op is OpType.FUSED_CONV and missing.records.precision.layers["c1"] == "fp32"
    fired = {k: v for s in missing.stats for k, v in s.fired.items()}
    assert fired[NO_RECORD] == 1
    plain = run_pipeline(g, BuildConfig(device="cpu"), calibrated=_records(g, ["x", "a", "b", "c", "f"]))
    assert not any(n.op in (OpType.QCONV, OpType.QGEMM) for n in plain.graph.nodes)


def test_nan_weights_stay_fp32():
    g = _cnn()
    g.constants["w2"] = g.constants["w2"].copy()
    g.constants["w2"][0, 0, 0, 0] = np.nan
    cfg = BuildConfig(device="cpu", precision="int8")
    out = run_pipeline(g, cfg, calibrated=_records(g, ["x", "a", "b", "c", "f"]))
    assert {n.name: n.op for n in out.graph.nodes}["c2"] is OpType.FUSED_CONV
    assert {k: v for s in out.stats for k, v in s.fired.items()}[BAD_WEIGHT] == 1


def test_lower_bounds_and_storage():
    g = _cnn()
    producers = g.producers()
    assert lower_bound("a", g, producers) == 0.0 and lower_bound("b", g, producers) is None
    assert lower_bound("f", g, producers) == 0.0  # relu -> pool -> flatten
    rec = QuantRecord("t", QuantDType.INT8, (0.1,), (0,))
    signed = tensor_params(rec, None)
    assert (signed.dtype, signed.zero_point, signed.scale) == (DType.UINT8, 128, 0.1)  # int8 shifted by 128
    gelu = tensor_params(rec, -0.17)
    assert gelu.dtype is DType.UINT8 and 0 < gelu.zero_point < 10 and gelu.scale < 0.1 * 127 / 255 * 1.1
    qdq = QuantRecord("t", QuantDType.UINT8, (0.1,), (3,), None, "qdq")
    assert (tensor_params(qdq, 0.0).scale, tensor_params(qdq, 0.0).zero_point) == (0.1, 3)


def test_minmax_gemm_input_with_channel_maxima_is_smoothed():
    r = np.random.default_rng(3)
    w = r.normal(0, 0.1, (16, 4)).astype(np.float32)
    nodes = [Node("mm", OpType.FUSED_GEMM, ("x", "w", "b"), ("y",), FusedGemmAttrs(GemmAttrs()))]
    g = ir_graph(nodes, {"x": (3, 16)}, ["y"], {"w": w, "b": np.zeros(4, np.float32)})
    cmax = np.full(16, 0.5)
    cmax[2] = 40.0
    rec = QuantizationPlan({"x": QuantRecord("x", QuantDType.INT8, (40 / 127,), (0,), None, "calibration:minmax")},
                           {"x": tuple(cmax)})
    out = run_pipeline(g, BuildConfig(device="cpu", precision="int8"), calibrated=rec)
    node = out.graph.nodes[0]
    s = np.asarray(node.attrs.smooth)
    assert node.op is OpType.QGEMM and s.shape == (16,) and s[2] > 5 * s[0]
    # the smoothed input's range is far below the outlier's 40
    assert node.attrs.x.scale * 127 < 10
    assert {k: v for st in out.stats for k, v in st.fired.items()}[SMOOTHED] == 1
    x = np.clip(r.normal(0, 0.15, (3, 16)) * (cmax / 0.5) / 3, -cmax, cmax).astype(np.float32)
    assert_same_outputs(g, out.graph, {"x": x}, rtol=0, atol=0.05)
    entropy = QuantizationPlan({"x": QuantRecord("x", QuantDType.INT8, (0.3,), (0,), None, "calibration:entropy")},
                               {"x": tuple(cmax)})
    cfg = BuildConfig(device="cpu", precision="int8")
    assert not run_pipeline(g, cfg, calibrated=entropy).graph.nodes[0].attrs.smooth


def test_symmetric_scales():
    w = np.array([[1.27, -0.5], [0.0, 0.0]], np.float32)
    assert np.allclose(symmetric_scales(w, 0), [0.01, np.finfo(np.float32).eps])
    assert np.allclose(symmetric_scales(w, None), [0.01])
    assert np.allclose(symmetric_scales(w, 1), [0.01, 0.5 / 127])


def test_maxpool_and_concat_pass_8bit_tensors_on():
    """conv+relu -> MaxPool -> conv, and two convs -> Concat -> conv: the pool and the Concat run on
    uint8 (one shared scale for the Concat's inputs), so nothing is requantized between them."""
    from ember.ops.attrs import AxisAttrs as Axis
    from ember.ops.attrs import PoolAttrs

    pool = PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1))
    nodes = [
        Node("c1", OpType.FUSED_CONV, ("x", "w1", "b1"), ("a",), FusedConvAttrs(CONV3, Activation.RELU)),
        Node("mp", OpType.MAX_POOL, ("a",), ("p",), pool),
        Node("c2", OpType.FUSED_CONV, ("p", "w2", "b2"), ("b",), FusedConvAttrs(CONV1, Activation.RELU)),
        Node("c3", OpType.FUSED_CONV, ("p", "w3", "b2"), ("c",), FusedConvAttrs(CONV1)),
        Node("cat", OpType.CONCAT, ("b", "c"), ("k",), Axis(1)),
        Node("c4", OpType.FUSED_CONV, ("k", "w4", "b4"), ("y",), FusedConvAttrs(CONV1)),
    ]
    consts = {"w1": rng_const(8, 3, 3, 3, seed=1), "b1": rng_const(8, seed=2), "w2": rng_const(8, 8, 1, 1, seed=3),
              "b2": rng_const(8, seed=4), "w3": rng_const(8, 8, 1, 1, seed=5), "w4": rng_const(4, 16, 1, 1, seed=6),
              "b4": rng_const(4, seed=7)}
    g = ir_graph(nodes, {"x": (1, 3, 8, 8)}, ["y"], consts)
    cfg = BuildConfig(device="cpu", precision="int8")
    out = run_pipeline(g, cfg, calibrated=_records(g, ["x", "a", "p", "b", "c", "k"], scale=0.1))
    types = out.graph.types
    assert all(types[t].dtype is DType.UINT8 for t in ("a", "p", "b", "c", "k")), {t: types[t] for t in "apbck"}
    by = {n.name: n for n in out.graph.nodes}
    assert by["c1"].attrs.out == by["c2"].attrs.x == by["c3"].attrs.x  # the pool keeps its input's params
    assert by["c2"].attrs.out == by["c3"].attrs.out == by["c4"].attrs.x  # the Concat's inputs share its params
    assert {k: v for s in out.stats for k, v in s.fired.items()}["MaxPool/Concat passes 8-bit tensors on"] == 2
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
    from passkit import run_graph

    ref, got = run_graph(g, {"x": x})["y"], run_graph(out.graph, {"x": x})["y"]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.1  # INT8 with these made-up scales
    # with the Concat kept (a protected tensor) its inputs are float and the next conv quantizes
    # the Concat's output with the same params: the same numbers, up to rounding of a step
    kept = run_pipeline(g, cfg, keep=["k"], calibrated=_records(g, ["x", "a", "p", "b", "c", "k"], scale=0.1))
    assert kept.graph.types["k"].dtype is DType.FLOAT32 and kept.graph.types["p"].dtype is DType.UINT8
    plain = run_graph(kept.graph, {"x": x})["y"]
    assert np.abs(got - plain).max() < 0.1 * np.abs(consts["w4"]).sum(axis=1).max() / 2 + 1e-5


def test_cuda_build_quantizes_ungrouped_convs_and_gemms_and_runs_the_rest_fp16():
    """On CUDA (Ember's Triton INT8 kernel): ungrouped convolutions and GEMMs become INT8 layers
    as on the CPU; a grouped convolution, and one reading an image's 3 channels, stay float with
    their rules counted; the float layers, and int8-marked layers left float, run fp16; no
    MaxPool passes 8 bits on (no CUDA kernel)."""
    from ember.ops.attrs import PoolAttrs
    from ember.passes.int8 import CUDA_FEW_CHANNELS, CUDA_GROUPED, PASSED_THROUGH

    dw = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), group=8)
    nodes = [
        Node("c1", OpType.FUSED_CONV, ("x", "w1", "b1"), ("a",), FusedConvAttrs(CONV3, Activation.RELU)),
        Node("mp", OpType.MAX_POOL, ("a",), ("p",), PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1))),
        Node("dw", OpType.FUSED_CONV, ("p", "wd", "bd"), ("d",), FusedConvAttrs(dw, Activation.RELU)),
        Node("c2", OpType.FUSED_CONV, ("d", "w2", "b2"), ("b",), FusedConvAttrs(CONV1)),
        Node("gap", OpType.GLOBAL_AVERAGE_POOL, ("b",), ("g",)),
        Node("flat", OpType.FLATTEN, ("g",), ("f",), AxisAttrs(1)),
        Node("fc", OpType.FUSED_GEMM, ("f", "wf", "bf"), ("y",), FusedGemmAttrs(GemmAttrs(trans_b=True))),
    ]
    consts = {"w1": rng_const(8, 3, 3, 3, seed=1), "b1": rng_const(8, seed=2), "wd": rng_const(8, 1, 3, 3, seed=3),
              "bd": rng_const(8, seed=4), "w2": rng_const(8, 8, 1, 1, seed=5), "b2": rng_const(8, seed=8),
              "wf": rng_const(10, 8, seed=6), "bf": rng_const(10, seed=7)}
    g = ir_graph(nodes, {"x": (2, 3, 8, 8)}, ["y"], consts)
    records = _records(g, ["x", "a", "p", "d", "b", "f"])
    cuda = run_pipeline(g, BuildConfig(device="cuda", precision="int8"), calibrated=records)
    ops = {n.name: n.op for n in cuda.graph.nodes}
    assert ops["c1"] is OpType.FUSED_CONV and ops["c2"] is OpType.QCONV and ops["fc"] is OpType.QGEMM
    assert ops["dw"] is OpType.FUSED_CONV and ops["mp"] is OpType.MAX_POOL
    layers = cuda.records.precision.layers
    assert layers["dw"] == "fp16" and layers["mp"] == "fp16" and layers["gap"] == "fp16"
    assert layers["c1"] == "fp16" and layers["c2"] == "int8" and layers["fc"] == "int8"
    assert cuda.graph.types["a"].dtype is DType.FLOAT32  # read by the MaxPool: float on CUDA
    by = {n.name: n for n in cuda.graph.nodes}
    # CUDA stores 8-bit tensors int8 (the CPU's uint8 values, zero point moved by -128: a ReLU's
    # output, calibrated over [0, max], has zero point -128)
    assert by["c2"].attrs.x.dtype is DType.INT8 and by["c2"].attrs.x.zero_point == -128
    assert cuda.records.quantization.get("d").dtype is QuantDType.INT8
    fired = {k: v for s in cuda.stats for k, v in s.fired.items()}
    assert fired[CUDA_GROUPED] == 1 and fired[CUDA_FEW_CHANNELS] == 1 and PASSED_THROUGH not in fired
    # the CPU build of the same graph quantizes the depthwise conv too and passes 8 bits through the pool
    cpu = run_pipeline(g, BuildConfig(device="cpu", precision="int8"), calibrated=records)
    cpu_ops = {n.name: n.op for n in cpu.graph.nodes}
    assert {n.name: n for n in cpu.graph.nodes}["c1"].attrs.x.dtype is DType.UINT8
    assert cpu_ops["dw"] is OpType.QCONV and cpu.records.precision.layers["gap"] == "fp32"
    # a CUDA fp32 build with one layer marked int8 keeps the others fp32
    mixed = run_pipeline(g, BuildConfig(device="cuda", precision="fp32", layer_precisions={"dw": "int8"}),
                         calibrated=records)
    assert mixed.records.precision.layers["dw"] == "fp32" and mixed.records.precision.layers["c1"] == "fp32"

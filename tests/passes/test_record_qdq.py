"""``record_qdq``: the scales of a Q/DQ model as the plan's ``QuantRecord``s, under the float
tensor each Q quantizes (its input) or each DQ produces (its output); ``prune_quant_records``
keeps only records of tensors of the optimized graph."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ember.ir import Node, OpType
from ember.ir.dtype import DType
from ember.ops.attrs import ConvAttrs, QuantizeAttrs
from ember.passes.fold_weights import CARRIED
from ember.passes.quantization import BAD_SCALE, BLOCKED, COMPUTED, CONFLICT, NOT_8BIT, RECORDED, STALE
from ember.plan.records import QuantDType, QuantRecord

from passkit import ir_graph, optimized, run_pass_ctx

CONV = ConvAttrs(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))


def _qdq_conv_relu(w_axis: int = -4):
    """x -Q/DQ-> conv(., DQ(w int8 per-axis)) -> relu -Q/DQ-> y."""
    nodes = [
        Node("q", OpType.QUANTIZE_LINEAR, ("x", "s", "z"), ("xq",), QuantizeAttrs()),
        Node("dq", OpType.DEQUANTIZE_LINEAR, ("xq", "s", "z"), ("xd",), QuantizeAttrs()),
        Node("dq_w", OpType.DEQUANTIZE_LINEAR, ("w", "ws"), ("wd",), QuantizeAttrs(axis=w_axis)),
        Node("conv", OpType.CONV, ("xd", "wd", "b"), ("c",), CONV),
        Node("relu", OpType.RELU, ("c",), ("r",)),
        Node("q2", OpType.QUANTIZE_LINEAR, ("r", "s2", "z2"), ("rq",), QuantizeAttrs()),
        Node("dq2", OpType.DEQUANTIZE_LINEAR, ("rq", "s2", "z2"), ("y",), QuantizeAttrs()),
    ]
    r = np.random.default_rng(0)
    consts = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8),
              "s2": np.array([0.02], np.float32), "z2": np.array([-3], np.int8),
              "w": r.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8),
              "ws": r.uniform(0.005, 0.02, 4).astype(np.float32), "b": r.normal(0, 0.1, 4).astype(np.float32)}
    return ir_graph(nodes, {"x": (1, 3, 6, 6)}, ["y"], consts)


def test_per_tensor_and_per_axis_records_with_their_values():
    g = _qdq_conv_relu()
    out, ctx = run_pass_ctx(g, "record_qdq")
    assert out is g  # records only
    recs = ctx.records.quantization.tensors
    assert set(recs) == {"x", "xd", "wd", "r", "y"}  # Q: its input; DQ: its output
    s = float(np.float32(0.05))
    assert recs["x"] == QuantRecord("x", QuantDType.UINT8, (s,), (128,), None, "qdq")
    assert recs["xd"] == QuantRecord("xd", QuantDType.UINT8, (s,), (128,), None, "qdq")
    s2 = float(np.float32(0.02))
    assert recs["r"] == recs["y"].__class__("r", QuantDType.INT8, (s2,), (-3,), None, "qdq")
    assert recs["y"].tensor == "y" and recs["y"].scale == (s2,) and recs["y"].zero_point == (-3,)
    w = recs["wd"]  # no zero point: 0; axis -4 of a rank-4 weight: 0
    assert w.dtype is QuantDType.INT8 and w.axis == 0 and w.per_channel and w.source == "qdq"
    assert w.scale == tuple(float(v) for v in g.constants["ws"]) and w.zero_point == (0, 0, 0, 0)
    assert ctx.fired == {RECORDED: 5}


def test_computed_scale_is_not_recorded():
    nodes = [Node("q", OpType.QUANTIZE_LINEAR, ("x", "s", "z"), ("xq",), QuantizeAttrs()),
             Node("dq", OpType.DEQUANTIZE_LINEAR, ("xq", "s", "z"), ("y",), QuantizeAttrs())]
    g = ir_graph(nodes, {"x": (2, 3), "s": ((), DType.FLOAT32)}, ["y"], {"z": np.array(0, np.int8)})
    _, ctx = run_pass_ctx(g, "record_qdq")
    assert not ctx.records.quantization and ctx.fired == {COMPUTED: 2}


def test_int16_is_not_recorded():
    nodes = [Node("q", OpType.QUANTIZE_LINEAR, ("x", "s", "z"), ("xq",), QuantizeAttrs()),
             Node("dq", OpType.DEQUANTIZE_LINEAR, ("xq", "s", "z"), ("y",), QuantizeAttrs()),
             Node("q8", OpType.QUANTIZE_LINEAR, ("y", "s", "z8"), ("yq",), QuantizeAttrs())]
    g = ir_graph(nodes, {"x": (2, 3)}, ["yq"], {"s": np.array(0.1, np.float32), "z": np.array(0, np.int16),
                                                "z8": np.array(0, np.int8)})
    _, ctx = run_pass_ctx(g, "record_qdq")
    # the int16 Q of x and DQ to y are not recorded; the int8 Q of y is
    assert set(ctx.records.quantization.tensors) == {"y"}
    assert ctx.records.quantization.get("y").dtype is QuantDType.INT8
    assert ctx.fired == {NOT_8BIT: 2, RECORDED: 1}


def test_blocked_quantization_is_skipped_and_counted():
    nodes = [Node("dq_w", OpType.DEQUANTIZE_LINEAR, ("w", "ws", "wz"), ("wd",), QuantizeAttrs(axis=1, block_size=4)),
             Node("mm", OpType.MATMUL, ("x", "wd"), ("y",))]
    r = np.random.default_rng(1)
    g = ir_graph(nodes, {"x": (2, 3)}, ["y"], {"w": r.integers(-8, 8, (3, 8)).astype(np.int8),
                                               "ws": r.uniform(0.01, 0.1, (3, 2)).astype(np.float32),
                                               "wz": np.zeros((3, 2), np.int8)})
    _, ctx = run_pass_ctx(g, "record_qdq")
    assert not ctx.records.quantization and ctx.fired == {BLOCKED: 1}


def test_a_second_quantization_of_a_tensor_keeps_the_first_record():
    """DQ -> Q that requantizes with another scale: the float tensor between them keeps the DQ's
    record (first in node order); the same scales twice are one record."""
    nodes = [Node("q", OpType.QUANTIZE_LINEAR, ("x", "s"), ("xq",), QuantizeAttrs()),
             Node("dq", OpType.DEQUANTIZE_LINEAR, ("xq", "s"), ("xd",), QuantizeAttrs()),
             Node("q2", OpType.QUANTIZE_LINEAR, ("xd", "s2"), ("xq2",), QuantizeAttrs()),
             Node("q3", OpType.QUANTIZE_LINEAR, ("x", "s"), ("xq3",), QuantizeAttrs()),
             Node("bad", OpType.QUANTIZE_LINEAR, ("x", "s0"), ("xq4",), QuantizeAttrs())]
    g = ir_graph(nodes, {"x": (2, 3)}, ["xq2", "xq3", "xq4"],
                 {"s": np.array(0.1, np.float32), "s2": np.array(0.3, np.float32), "s0": np.array(0, np.float32)})
    _, ctx = run_pass_ctx(g, "record_qdq")
    recs = ctx.records.quantization.tensors
    assert set(recs) == {"x", "xd"} and recs["xd"].scale == (float(np.float32(0.1)),)
    assert ctx.fired == {RECORDED: 3, CONFLICT: 1, BAD_SCALE: 1}


def test_records_survive_the_pipeline_under_names_of_the_optimized_graph():
    # the input pair folds into the INT8 conv (tests/passes/test_int8.py): its DQ output "xd" is
    # gone, and "x" is the conv's input record; the output pair stays as written
    out = optimized(_qdq_conv_relu(), device="cpu")
    recs = out.records.quantization.tensors
    assert set(recs) == {"x", "wd", "r", "y"}
    assert all(name in out.graph.types for name in recs)
    assert "wd" in out.graph.constants and out.graph.constants["wd"].dtype == np.float32  # the folded DQ
    fired = {k: v for s in out.stats for k, v in s.fired.items()}
    assert fired[RECORDED] == 5 and fired[STALE] == 1  # "xd", folded away with its pair
    names = [s.name for s in out.stats]
    assert names.index("record_qdq") + 1 == names.index("fold_constants") and names[-1] == "prune_quant_records"
    stat = out.stats[names.index("record_qdq")]
    assert stat.changed and stat.fired == {RECORDED: 5} and stat.nodes_before == stat.nodes_after
    plain = optimized(_qdq_conv_relu(), device="cpu", optimize=False)  # no fusion: same records
    assert plain.records.quantization == out.records.quantization


def test_records_of_tensors_the_optimizer_removes_are_dropped():
    """A per-column Mul after a MatMul folds into its dequantized weight (``fold_scales``): the
    scaled weight is a new constant, the DQ's output is gone, and so is its record; the scaled
    weight carries the int8 record its values still fit (per column, the scale times |k|:
    ``fold_weights._carry_weight_record``), so the MatMul still becomes an INT8 layer, which
    folds the input's Q/DQ pair (``xd`` goes too) and reads ``x``."""
    r = np.random.default_rng(2)
    nodes = [Node("q", OpType.QUANTIZE_LINEAR, ("x", "s"), ("xq",), QuantizeAttrs()),
             Node("dq", OpType.DEQUANTIZE_LINEAR, ("xq", "s"), ("xd",), QuantizeAttrs()),
             Node("dq_w", OpType.DEQUANTIZE_LINEAR, ("w", "ws"), ("wd",), QuantizeAttrs()),
             Node("mm", OpType.MATMUL, ("xd", "wd"), ("m",)),
             Node("mul", OpType.MUL, ("m", "k"), ("y",))]
    g = ir_graph(nodes, {"x": (2, 3)}, ["y"], {"s": np.array(0.1, np.float32), "ws": np.array(0.5, np.float32),
                                               "w": r.integers(-9, 9, (3, 4)).astype(np.int8),
                                               "k": r.uniform(1, 2, 4).astype(np.float32)})
    out = optimized(g, device="cpu")
    assert "wd" not in out.graph.types
    recs = out.records.quantization.tensors
    (w_name,) = set(recs) - {"x"}
    assert "xd" not in recs and all(name in out.graph.types for name in recs)
    assert [n.op for n in out.graph.nodes] == [OpType.QGEMM]
    carried = recs[w_name]
    assert carried.source == "qdq" and carried.axis == 1 and carried.zero_point == (0,) * 4
    np.testing.assert_allclose(carried.scale, 0.5 * g.constants["k"].astype(np.float64), rtol=1e-6)
    folded = out.graph.constants[w_name]  # the int8 values, exactly, at the new scales
    np.testing.assert_array_equal(np.round(folded / np.asarray(carried.scale)), g.constants["w"])
    fired = {k: v for s in out.stats for k, v in s.fired.items()}
    assert fired[RECORDED] == 3 and fired[STALE] == 2 and fired[CARRIED] == 1


def _onnx_qdq_model() -> onnx.ModelProto:
    """An ONNX QDQ MatMul: uint8 activations, int8 weights per output column (axis -1)."""
    r = np.random.default_rng(3)
    inits = [numpy_helper.from_array(np.array(0.037, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(117, np.uint8), "x_zp"),
             numpy_helper.from_array(r.integers(-127, 128, (6, 5)).astype(np.int8), "w_q"),
             numpy_helper.from_array(r.uniform(0.001, 0.03, 5).astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(5, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(0.11, np.float32), "y_scale"),
             numpy_helper.from_array(np.array(-7, np.int8), "y_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=-1),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["m"]),
             helper.make_node("QuantizeLinear", ["m", "y_scale", "y_zp"], ["m_q"]),
             helper.make_node("DequantizeLinear", ["m_q", "y_scale", "y_zp"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_mm", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 5])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_records_match_the_onnx_initializers_exactly():
    from ember.frontends import load

    model = _onnx_qdq_model()
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # the input pair folds into the INT8 MatMul (its DQ output x_dq goes); the CPU stores the
    # activation uint8 as the model does, so "x" keeps the model's exact zero point
    out = optimized(load(model), device="cpu")
    recs = out.records.quantization.tensors
    expect = {"x": ("x_scale", "x_zp", None),
              "w_dq": ("w_scale", "w_zp", 1), "m": ("y_scale", "y_zp", None), "y": ("y_scale", "y_zp", None)}
    assert set(recs) == set(expect)
    for name, (scale, zp, axis) in expect.items():
        rec = recs[name]
        assert rec.scale == tuple(inits[scale].reshape(-1).tolist()), name
        assert np.array_equal(np.asarray(rec.scale, np.float32), inits[scale].reshape(-1)), name
        assert rec.zero_point == tuple(int(v) for v in inits[zp].reshape(-1)), name
        assert rec.axis == axis and rec.source == "qdq", name
        assert rec.dtype == (QuantDType.UINT8 if inits[zp].dtype == np.uint8 else QuantDType.INT8), name
        assert name in out.graph.types, name

"""A Q/DQ model's quantization records (``record_qdq``) go through ``ember.build`` onto the plan,
survive the engine file, and ``ember inspect`` summarizes them."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import ember
from ember.plan.records import QuantDType
from ember.runtime.summary import format_engine


def _qdq_cnn() -> onnx.ModelProto:
    """x -Q/DQ(uint8)-> Conv(DQ(w int8 per output channel)) -> Relu -Q/DQ(int8)-> y."""
    r = np.random.default_rng(4)
    inits = [numpy_helper.from_array(np.array(0.021, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
             numpy_helper.from_array(r.integers(-127, 128, (6, 3, 3, 3)).astype(np.int8), "w_q"),
             numpy_helper.from_array(r.uniform(0.002, 0.02, 6).astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(6, np.int8), "w_zp"),
             numpy_helper.from_array(r.normal(0, 0.1, 6).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(0.013, np.float32), "r_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "r_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0),
             helper.make_node("Conv", ["x_dq", "w_dq", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "r_scale", "r_zp"], ["r_q"]),
             helper.make_node("DequantizeLinear", ["r_q", "r_scale", "r_zp"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_cnn",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6, 8, 8])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_built_qdq_engine_keeps_its_quantization_records_through_the_engine_file(tmp_path):
    engine = ember.build(_qdq_cnn(), ember.BuildConfig(device="cpu"))
    quant = engine.plan.records.quantization
    # the input pair folds into the INT8 conv (x_dq is gone); its Q record stays under x
    assert set(quant.tensors) == {"x", "w_dq", "r", "y"}
    assert [layer.kind for layer in engine.plan.layers] == ["QConv", "QuantizeLinear", "DequantizeLinear"]
    assert quant.get("w_dq").axis == 0 and quant.get("w_dq").dtype is QuantDType.INT8
    assert quant.get("x").dtype is QuantDType.UINT8 and quant.get("x").zero_point == (128,)
    assert all(name in engine.plan.graph.types for name in quant.tensors)
    engine.save(str(tmp_path / "qdq.ember"))
    loaded = ember.load(str(tmp_path / "qdq.ember"))
    assert loaded.plan.records.quantization == quant
    assert loaded.plan.records == engine.plan.records


def test_inspect_summarizes_the_quantization_records():
    engine = ember.build(_qdq_cnn(), ember.BuildConfig(device="cpu"))
    text = format_engine(engine.plan)
    assert "  quantization: 4 tensors (qdq), 1 per-channel" in text.splitlines()
    header = next(line for line in text.splitlines() if line.startswith("#"))
    assert header.endswith("input scale")
    rows = text.splitlines()
    qconv = [line for line in rows if "QConv" in line]
    assert qconv and qconv[0].rstrip().endswith("0.021")  # the INT8 conv reads x at x's scale
    quantize_rows = [line for line in rows if "QuantizeLinear" in line and "Dequantize" not in line]
    assert quantize_rows and quantize_rows[0].rstrip().endswith("0.013")  # the Q of r reads r's scale


def test_engines_without_quantization_records_print_as_before():
    from onnx import TensorProto

    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [w])
    engine = ember.build(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                         ember.BuildConfig(device="cpu"))
    text = format_engine(engine.plan)
    assert "quantization:" not in text and "input scale" not in text

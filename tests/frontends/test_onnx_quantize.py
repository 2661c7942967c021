"""Importing QuantizeLinear / DequantizeLinear: the typed attrs every opset form becomes, the
types Ember refuses (int4, uint4, float8, float4) with the node, the type and what to do, and
the opset 23/24 forms (dormant until the importer's opset range reaches them)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import ember.frontends.onnx.importer as importer
from ember.errors import UnsupportedOpError
from ember.frontends.onnx import import_onnx
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.ops.attrs import QuantizeAttrs

TP = onnx.TensorProto


def _model(op: str, x_type: int, inits: list[onnx.TensorProto], opset: int, inputs=None, **attrs) -> onnx.ModelProto:
    names = inputs or ["x"] + [t.name for t in inits]
    node = helper.make_node(op, names, ["y"], name="q0", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", x_type, [2, 4])],
                              [helper.make_value_info("y", onnx.TypeProto())], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _scale(value: float = 0.1) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), "s")


def _node(model: onnx.ModelProto):
    g = import_onnx(model)
    (node,) = [n for n in g.nodes if n.op in (OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR)]
    return g, node


def test_attrs_of_every_form() -> None:
    zp = numpy_helper.from_array(np.array(3, np.int8), "z")
    g, n = _node(_model("QuantizeLinear", TP.FLOAT, [_scale(), zp], 10))
    assert n.attrs == QuantizeAttrs() and g.types["y"].dtype is DType.INT8
    s = numpy_helper.from_array(np.full(4, 0.1, np.float32), "s")
    z = numpy_helper.from_array(np.zeros(4, np.uint16), "z")
    g, n = _node(_model("QuantizeLinear", TP.FLOAT, [s, z], 21, axis=-1, saturate=0))
    assert n.attrs == QuantizeAttrs(axis=-1, saturate=False) and g.types["y"].dtype is DType.UINT16
    g, n = _node(_model("QuantizeLinear", TP.FLOAT, [_scale()], 21, output_dtype=TP.INT16))
    assert n.attrs.output_dtype is DType.INT16 and g.types["y"].dtype is DType.INT16
    g, n = _node(_model("QuantizeLinear", TP.FLOAT, [_scale()], 13))
    assert g.types["y"].dtype is DType.UINT8  # no zero point: uint8
    blocked = numpy_helper.from_array(np.full((2, 2), 0.1, np.float32), "s")
    g, n = _node(_model("DequantizeLinear", TP.INT8, [blocked], 21, axis=1, block_size=3))
    assert n.attrs.block_size == 3 and g.types["y"].dtype is DType.FLOAT32
    half = numpy_helper.from_array(np.array(0.1, np.float16), "s")
    g, n = _node(_model("DequantizeLinear", TP.UINT8, [half], 19))
    assert g.types["y"].dtype is DType.FLOAT16


@pytest.mark.parametrize("code", [TP.INT4, TP.UINT4, TP.INT2, TP.FLOAT4E2M1])
def test_unsupported_zero_point_types_are_refused_with_the_node(code: int) -> None:
    zp = helper.make_tensor("z", code, [], [0])
    with pytest.raises(UnsupportedOpError) as e:
        import_onnx(_model("QuantizeLinear", TP.FLOAT, [_scale(), zp], 21))
    msg = str(e.value)
    assert "'q0'" in msg and TP.DataType.Name(code) in msg and "int8/uint8" in msg


def test_unsupported_dequantize_input_and_output_dtype_are_refused() -> None:
    weights = helper.make_tensor("w", TP.INT4, [2, 4], [1] * 8)
    node = helper.make_node("DequantizeLinear", ["w", "s"], ["y"], name="dq_w")
    graph = helper.make_graph([node], "g", [], [helper.make_value_info("y", onnx.TypeProto())],
                              initializer=[weights, _scale()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(UnsupportedOpError, match=r"'dq_w'.*INT4 quantization \(its input 'w'\).*re-export"):
        import_onnx(model)
    with pytest.raises(UnsupportedOpError, match=r"'q0'.*UINT4"):
        import_onnx(_model("QuantizeLinear", TP.FLOAT, [_scale()], 21, output_dtype=TP.UINT4))
    # float8 quantization is imported (tests/frontends/test_float8.py runs it)
    g, _ = _node(_model("QuantizeLinear", TP.FLOAT, [_scale()], 21, output_dtype=TP.FLOAT8E4M3FN))
    assert g.types["y"].dtype is DType.FLOAT8E4M3FN
    with pytest.raises(UnsupportedOpError, match=r"q0.*int64"):
        import_onnx(_model("DequantizeLinear", TP.INT64, [_scale()], 21))


def test_bad_scale_shapes_are_shape_errors() -> None:
    from ember.errors import ShapeError

    s = numpy_helper.from_array(np.full(3, 0.1, np.float32), "s")
    with pytest.raises(ShapeError, match="per-axis"):
        import_onnx(_model("QuantizeLinear", TP.FLOAT, [s], 13, axis=1))
    blocked = numpy_helper.from_array(np.full((2, 3), 0.1, np.float32), "s")
    with pytest.raises(ShapeError, match="blocked"):
        import_onnx(_model("QuantizeLinear", TP.FLOAT, [blocked], 21, axis=1, block_size=3))


@pytest.mark.parametrize("opset", [23, 24])
def test_opset_23_24_forms(monkeypatch: pytest.MonkeyPatch, opset: int) -> None:
    """The 23/24 handlers (DQ output_dtype, Q precision), reached by widening the importer's
    opset range as a later change will."""
    import ember.frontends.onnx.registry as registry

    monkeypatch.setattr(importer, "MAX_OPSET", opset)
    monkeypatch.setattr(registry, "MAX_OPSET", opset)
    g, n = _node(_model("DequantizeLinear", TP.INT8, [_scale()], opset, output_dtype=TP.FLOAT16))
    assert g.types["y"].dtype is DType.FLOAT16
    g, n = _node(_model("QuantizeLinear", TP.FLOAT, [_scale()], opset, precision=TP.FLOAT))
    assert g.types["y"].dtype is DType.UINT8
    half = numpy_helper.from_array(np.array(0.1, np.float16), "s")
    with pytest.raises(UnsupportedOpError, match="divides in float16"):
        import_onnx(_model("QuantizeLinear", TP.FLOAT16, [half], opset))

"""Shape/type inference of the quantization ops (``ember.ops.quantize``)."""
from __future__ import annotations

import pytest

from ember.errors import ShapeError
from ember.ir import DType, Node, OpType, TensorType
from ember.ops.attrs import ConvAttrs, QuantizeAttrs
from ember.ops.registry import infer_node

F32, F16 = DType.FLOAT32, DType.FLOAT16


def _t(dtype: DType, *shape) -> TensorType:
    return TensorType(dtype, tuple(shape))


def _infer(op: OpType, types, attrs=None) -> list[TensorType]:
    node = Node("n", op, tuple(f"i{k}" for k in range(len(types))), tuple(f"o{k}" for k in range(3)), attrs)
    return infer_node(node, types, [None] * len(types))


def test_quantize_output_type_from_zero_point_or_output_dtype_or_uint8():
    x = _t(F32, "batch", 3, 4)
    q = OpType.QUANTIZE_LINEAR
    assert _infer(q, [x, _t(F32), _t(DType.INT8)], QuantizeAttrs()) == [_t(DType.INT8, "batch", 3, 4)]
    assert _infer(q, [x, _t(F32)], QuantizeAttrs(output_dtype=DType.UINT16))[0].dtype is DType.UINT16
    assert _infer(q, [x, _t(F32)], QuantizeAttrs())[0].dtype is DType.UINT8
    assert _infer(q, [x, _t(F32, 3), _t(DType.INT16, 3)], QuantizeAttrs(axis=1))[0].dtype is DType.INT16
    assert _infer(q, [x, _t(F32, "batch", 3, 2)], QuantizeAttrs(axis=-1, block_size=3))[0].shape == ("batch", 3, 4)
    with pytest.raises(ShapeError, match="rank"):
        _infer(q, [x, _t(F32, 3, 2)], QuantizeAttrs(axis=-1, block_size=3))
    with pytest.raises(ShapeError, match="output_dtype int16 differs"):
        _infer(q, [x, _t(F32), _t(DType.INT8)], QuantizeAttrs(output_dtype=DType.INT16))
    with pytest.raises(ShapeError, match="zero point"):
        _infer(q, [x, _t(F32, 3), _t(DType.INT8, 4)], QuantizeAttrs())
    with pytest.raises(ShapeError, match="per-axis"):
        _infer(q, [x, _t(F32, 4)], QuantizeAttrs(axis=1))


def test_dequantize_output_type_from_scale_or_output_dtype():
    d = OpType.DEQUANTIZE_LINEAR
    assert _infer(d, [_t(DType.UINT8, 2, 5), _t(F16)], QuantizeAttrs()) == [_t(F16, 2, 5)]
    assert _infer(d, [_t(DType.INT32, 2, 5), _t(F32)], QuantizeAttrs(output_dtype=F16))[0].dtype is F16
    with pytest.raises(ShapeError, match="int8"):
        _infer(d, [_t(DType.UINT8, 2, 5), _t(F32), _t(DType.INT8)], QuantizeAttrs())
    with pytest.raises(ShapeError, match="not one of"):
        _infer(d, [_t(DType.INT64, 2, 5), _t(F32)], QuantizeAttrs())


def test_integer_ops():
    out = _infer(OpType.DYNAMIC_QUANTIZE_LINEAR, [_t(F32, 2, 7)])
    assert out == [_t(DType.UINT8, 2, 7), _t(F32), _t(DType.UINT8)]
    mm = _infer(OpType.MATMUL_INTEGER, [_t(DType.UINT8, "b", 5, 16), _t(DType.INT8, 16, 7)])
    assert mm == [_t(DType.INT32, "b", 5, 7)]
    conv = ConvAttrs(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1))
    out = _infer(OpType.CONV_INTEGER, [_t(DType.UINT8, 1, 3, 7, 7), _t(DType.INT8, 4, 3, 3, 3)], conv)
    assert out == [_t(DType.INT32, 1, 4, 4, 4)]
    with pytest.raises(ShapeError, match="int8 or uint8"):
        _infer(OpType.MATMUL_INTEGER, [_t(F32, 5, 16), _t(DType.INT8, 16, 7)])

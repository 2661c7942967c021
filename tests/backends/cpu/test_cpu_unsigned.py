"""uint16/uint32/uint64 tensors through the CPU kernels (PyTorch implements few ops on them)."""
from __future__ import annotations

import numpy as np
import pytest

from ember.backends.cpu import evaluate
from ember.errors import UnsupportedOpError
from ember.ir.dtype import DType
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import BitShiftAttrs, BitShiftDirection, CastAttrs, ReduceAttrs

BIG = np.array([2**64 - 1, 2**63, 7, 0], np.uint64)
SMALL = np.array([3, 2**63 + 1, 7, 5], np.uint64)


def _run(op: OpType, *inputs: np.ndarray, attrs=None) -> np.ndarray:
    node = Node("n", op, tuple(f"i{k}" for k in range(len(inputs))), ("y",), attrs)
    return evaluate(node, list(inputs))[0]


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
@pytest.mark.parametrize("op,fn", [(OpType.ADD, np.add), (OpType.SUB, np.subtract), (OpType.MUL, np.multiply),
                                   (OpType.DIV, np.floor_divide), (OpType.MOD, np.mod),
                                   (OpType.GREATER, np.greater), (OpType.LESS, np.less), (OpType.EQUAL, np.equal),
                                   (OpType.MAX, np.maximum), (OpType.MIN, np.minimum),
                                   (OpType.BITWISE_AND, np.bitwise_and), (OpType.BITWISE_XOR, np.bitwise_xor)])
def test_binary_ops_match_numpy_with_wrap_around(dtype, op, fn):
    info = np.iinfo(dtype)
    a = np.array([info.max, info.max // 2 + 3, 7, 0, 1], dtype)
    b = np.array([2, info.max - 1, 3, 9, info.max], dtype)
    y = _run(op, a, b)
    with np.errstate(over="ignore"):
        expected = fn(a, b)
    assert y.dtype == expected.dtype
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64])
def test_shifts_not_and_cast(dtype):
    bits = np.iinfo(dtype).bits
    x = np.array([np.iinfo(dtype).max, 1, 6, 2 ** (bits - 1)], dtype)
    n = np.array([1, bits - 1, 2, 3], dtype)
    left = _run(OpType.BIT_SHIFT, x, n, attrs=BitShiftAttrs(BitShiftDirection.LEFT))
    right = _run(OpType.BIT_SHIFT, x, n, attrs=BitShiftAttrs(BitShiftDirection.RIGHT))
    np.testing.assert_array_equal(left, np.left_shift(x, n))
    np.testing.assert_array_equal(right, np.right_shift(x, n))
    np.testing.assert_array_equal(_run(OpType.BITWISE_NOT, x), np.invert(x))
    np.testing.assert_array_equal(_run(OpType.CAST, x, attrs=CastAttrs(DType.FLOAT64)), x.astype(np.float64))
    back = _run(OpType.CAST, x.astype(np.float64)[1:3], attrs=CastAttrs(DType.from_numpy(x.dtype)))
    np.testing.assert_array_equal(back, x[1:3])


def test_uint64_values_past_int64_are_refused_where_int64_would_differ():
    with pytest.raises(UnsupportedOpError, match="uint64 values of 2\\^63 or more"):
        _run(OpType.REDUCE_MAX, BIG, attrs=ReduceAttrs(axes=(0,), keepdims=False))
    assert _run(OpType.REDUCE_MAX, SMALL[[0, 2, 3]], attrs=ReduceAttrs(axes=(0,), keepdims=False)) == 7

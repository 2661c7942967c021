"""MaxPool, AveragePool, GlobalAveragePool and LRN against ONNX Runtime, every padding mode."""
from __future__ import annotations

import numpy as np
import pytest

from ember.ir.optype import OpType
from ember.ops.attrs import AutoPad, LRNAttrs, PoolAttrs

F32 = np.float32


def _onnx_pool_attrs(a: PoolAttrs, avg: bool) -> dict:
    out = {"kernel_shape": list(a.kernel_shape), "strides": list(a.strides),
           "ceil_mode": int(a.ceil_mode)}
    if any(d != 1 for d in a.dilations) or not avg:
        out["dilations"] = list(a.dilations)
    if avg:
        out["count_include_pad"] = int(a.count_include_pad)
    if a.auto_pad is AutoPad.NOTSET:
        out["pads"] = list(a.pads)
    else:
        out["auto_pad"] = a.auto_pad.value
    return out


GEOMETRIES = [
    dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1)),
    dict(kernel_shape=(3, 3), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode=True),
    dict(kernel_shape=(3, 2), strides=(2, 1), pads=(0, 1, 2, 0), dilations=(1, 1)),
    dict(kernel_shape=(3, 3), strides=(3, 2), pads=(1, 0, 1, 2), dilations=(1, 1), ceil_mode=True),
    dict(kernel_shape=(2, 2), strides=(2, 2), pads=(1, 1, 1, 1), dilations=(1, 1), ceil_mode=True),
    dict(kernel_shape=(3, 3), strides=(1, 1), pads=(), dilations=(1, 1), auto_pad=AutoPad.SAME_UPPER),
    dict(kernel_shape=(2, 3), strides=(2, 2), pads=(), dilations=(1, 1), auto_pad=AutoPad.SAME_LOWER),
    dict(kernel_shape=(3, 3), strides=(2, 2), pads=(), dilations=(1, 1), auto_pad=AutoPad.VALID),
    dict(kernel_shape=(5, 5), strides=(1, 1), pads=(2, 2, 2, 2), dilations=(1, 1)),
]


@pytest.mark.parametrize("geo", GEOMETRIES)
def test_max_pool(check, rng, geo):
    a = PoolAttrs(**geo)
    check("MaxPool", {"x": rng.standard_normal((1, 3, 9, 8)).astype(F32)}, OpType.MAX_POOL, a,
          _onnx_pool_attrs(a, avg=False))


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("include_pad", [False, True])
def test_average_pool(check, rng, geo, include_pad):
    a = PoolAttrs(**geo, count_include_pad=include_pad)
    check("AveragePool", {"x": rng.standard_normal((1, 3, 9, 8)).astype(F32)}, OpType.AVERAGE_POOL, a,
          _onnx_pool_attrs(a, avg=True), rtol=1e-5, atol=1e-6)


def test_max_pool_dilated_1d_3d(check, rng):
    a = PoolAttrs((3,), (2,), (1, 2), (2,), ceil_mode=True)
    check("MaxPool", {"x": rng.standard_normal((2, 3, 13)).astype(F32)}, OpType.MAX_POOL, a,
          _onnx_pool_attrs(a, avg=False))
    a = PoolAttrs((2, 2, 2), (2, 2, 2), (0, 0, 0, 1, 1, 1), (1, 1, 1))
    check("MaxPool", {"x": rng.standard_normal((1, 2, 5, 6, 7)).astype(F32)}, OpType.MAX_POOL, a,
          _onnx_pool_attrs(a, avg=False))


@pytest.mark.parametrize("include_pad", [False, True])
def test_average_pool_dilated(check, rng, include_pad):
    a = PoolAttrs((3, 2), (1, 2), (1, 0, 2, 1), (2, 2), count_include_pad=include_pad)
    check("AveragePool", {"x": rng.standard_normal((1, 2, 9, 9)).astype(F32)}, OpType.AVERAGE_POOL, a,
          _onnx_pool_attrs(a, avg=True), opset=19, rtol=1e-5, atol=1e-6, oracle="reference")


def test_average_pool_1d(check, rng):
    a = PoolAttrs((3,), (2,), (1, 0), (1,), ceil_mode=True)
    check("AveragePool", {"x": rng.standard_normal((2, 3, 10)).astype(F32)}, OpType.AVERAGE_POOL, a,
          _onnx_pool_attrs(a, avg=True))


def test_global_average_pool(check, rng):
    check("GlobalAveragePool", {"x": rng.standard_normal((2, 3, 5, 4)).astype(F32)},
          OpType.GLOBAL_AVERAGE_POOL)
    check("GlobalAveragePool", {"x": rng.standard_normal((2, 3, 5)).astype(F32)},
          OpType.GLOBAL_AVERAGE_POOL)


def _lrn_spec(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """The ONNX LRN formula written out channel by channel (float64)."""
    x64 = x.astype(np.float64)
    sq = np.zeros_like(x64)
    c = x.shape[1]
    for ch in range(c):
        lo, hi = max(0, ch - (size - 1) // 2), min(c - 1, ch + -(-(size - 1) // 2))
        sq[:, ch] = (x64[:, lo:hi + 1] ** 2).sum(axis=1)
    return (x64 / (bias + alpha / size * sq) ** beta).astype(x.dtype)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(check, rng, size):
    a = LRNAttrs(size=size, alpha=1e-2, beta=0.75, bias=2.0)
    check("LRN", {"x": rng.standard_normal((2, 7, 4, 3)).astype(F32)}, OpType.LRN, a,
          {"size": size, "alpha": 1e-2, "beta": 0.75, "bias": 2.0}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [2, 4, 6])
def test_lrn_even_size(rng, size):
    # ONNX Runtime refuses even sizes and the reference evaluator loops over the wrong axis,
    # so the oracle is the spec's formula itself.
    from ember.backends.cpu import evaluate
    from ember.ir.graph import Node

    x = rng.standard_normal((2, 7, 4, 3)).astype(F32)
    a = LRNAttrs(size=size, alpha=0.3, beta=0.75, bias=1.0)
    (got,) = evaluate(Node("lrn", OpType.LRN, ("x",), ("y",), a), [x])
    np.testing.assert_allclose(got, _lrn_spec(x, size, 0.3, 0.75, 1.0), rtol=1e-5, atol=1e-6)

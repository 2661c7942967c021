"""Gather writes straight into a given contiguous output (``index_select``'s out= form): the
embedding lookup into its place in the CUDA arena, or a Concat slice on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.backends.base import CompileContext, write_into_of
from ember.backends.cpu import CPUBackend
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import AxisAttrs


@pytest.mark.parametrize("axis, idx_shape", [(0, (2, 5)), (1, (3,)), (-1, ()), (0, (4,))])
def test_gather_writes_what_it_returns(axis, idx_shape):
    table = np.random.default_rng(0).standard_normal((7, 6, 5)).astype(np.float32)
    types = {"x": TensorType(DType.FLOAT32, (7, 6, 5)), "i": TensorType(DType.INT64, idx_shape)}
    g = Graph("gather", [Node("g", OpType.GATHER, ("x", "i"), ("y",), AxisAttrs(axis))], ["x", "i"], ["y"],
              types, {}, opset=17)
    kernel = CPUBackend().compile_node(g.nodes[0], CompileContext(g, {}, torch.device("cpu"), "", "fp32"))
    dim = table.shape[axis]
    idx = torch.from_numpy(np.random.default_rng(1).integers(-dim, dim, size=idx_shape))
    args = [torch.from_numpy(table), idx]
    want = kernel(args)[0]
    w = write_into_of(kernel)
    buf = torch.full((want.numel() + 48,), float("nan"))
    place = buf[16:16 + want.numel()].view(want.shape)
    assert w.accepts(place) and w(args, place)
    assert torch.equal(place, want)
    assert torch.isnan(buf[:16]).all() and torch.isnan(buf[16 + want.numel():]).all()
    if want.dim() >= 2 and want.shape[-1] > 1:
        strided = torch.empty(want.shape[:-1] + (want.shape[-1] * 2,))[..., ::2]
        assert not w.accepts(strided) and not w(args, strided)
    assert not w(args, torch.empty(want.shape, dtype=torch.float64))

"""Kernels fed channels-last tensors (what the oneDNN conv tactics produce) give the same values
as on contiguous NCHW tensors: layout is an implementation detail, never a semantic one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.backends.base import CompileContext
from ember.backends.cpu import CPUBackend
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import (
    AxisAttrs,
    LRNAttrs,
    PoolAttrs,
    ReduceAttrs,
    ResizeAttrs,
    SoftmaxAttrs,
    SplitAttrs,
)

POOL = PoolAttrs((3, 3), (2, 2), (1, 0, 1, 2), (1, 1), ceil_mode=True)

CASES = [
    (OpType.LRN, LRNAttrs(4, 0.2, 0.75, 1.0), 1),
    (OpType.LRN, LRNAttrs(5, 0.2, 0.75, 2.0), 1),
    (OpType.MAX_POOL, PoolAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), 1),
    (OpType.MAX_POOL, POOL, 1),
    (OpType.AVERAGE_POOL, POOL, 1),
    (OpType.GLOBAL_AVERAGE_POOL, None, 1),
    (OpType.FLATTEN, AxisAttrs(1), 1),
    (OpType.SOFTMAX, SoftmaxAttrs(1), 1),
    (OpType.REDUCE_MEAN, ReduceAttrs((2, 3), True), 1),
    (OpType.RELU, None, 1),
    (OpType.ADD, None, 2),
    (OpType.CONCAT, AxisAttrs(1), 2),
    (OpType.SPLIT, SplitAttrs(1, (2, 4)), 1),
]


def _run(node: Node, args: list[torch.Tensor]) -> list[torch.Tensor]:
    ctx = CompileContext(Graph("g", [node], [], [], {}), {}, torch.device("cpu"))
    with torch.inference_mode():
        return CPUBackend().compile_node(node, ctx)(args)


@pytest.mark.parametrize("op,attrs,n_in", CASES)
def test_channels_last_input_gives_same_values(op, attrs, n_in):
    rng = np.random.default_rng(3)
    xs = [torch.from_numpy(rng.standard_normal((2, 6, 7, 5)).astype(np.float32)) for _ in range(n_in)]
    n_out = 2 if op is OpType.SPLIT else 1
    node = Node("n", op, tuple(f"x{i}" for i in range(n_in)), tuple(f"y{i}" for i in range(n_out)), attrs)
    want = _run(node, xs)
    got = _run(node, [x.contiguous(memory_format=torch.channels_last) for x in xs])
    for g, w in zip(got, want):
        torch.testing.assert_close(g.contiguous(), w.contiguous(), rtol=1e-6, atol=1e-6)


def test_resize_channels_last():
    x = torch.randn(1, 3, 5, 6)
    node = Node("r", OpType.RESIZE, ("x",), ("y",), ResizeAttrs("linear", "half_pixel", scales=(1, 1, 2.0, 1.5)))
    want = _run(node, [x])[0]
    got = _run(node, [x.contiguous(memory_format=torch.channels_last)])[0]
    torch.testing.assert_close(got, want)

"""A CUDA build of a model with float64 tensors says that the GPU computes them in float32 (ONNX's
``test_operator_add*`` cases hold values of 9e223, which float32 makes inf); the CPU keeps float64."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ember.backends.cuda.exec.program import _warn_float64
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType


def _graph(dtype: DType) -> Graph:
    node = Node("add", OpType.ADD, ("x", "x"), ("y",))
    types = {"x": TensorType(dtype, (2, 3)), "y": TensorType(dtype, (2, 3))}
    return Graph("g", [node], ["x"], ["y"], types, {})


def test_float64_on_the_device_is_named_in_a_warning():
    graph = _graph(DType.FLOAT64)
    with pytest.warns(UserWarning, match=r"1 float64 tensor\(s\) of this model \(y\) are computed in float32 on CUDA"):
        _warn_float64(graph, [SimpleNamespace(node=graph.nodes[0], on_host=False)])


@pytest.mark.parametrize("dtype,on_host", [(DType.FLOAT32, False), (DType.FLOAT64, True)])
def test_no_warning_for_float32_or_host_steps(dtype, on_host, recwarn):
    graph = _graph(dtype)
    _warn_float64(graph, [SimpleNamespace(node=graph.nodes[0], on_host=on_host)])
    assert not [w for w in recwarn if "float64" in str(w.message)]

"""Scan (opset 9+) is unrolled over its build-time length: states carried, scan inputs sliced
along any axis in either direction, scan outputs stacked along any axis."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.errors import UnsupportedOpError
from ember.ir import OpType


def _scan_model(reverse_in: int, out_axis: int, out_reverse: int, length="T"):
    # body: state' = state + x_t; y_t = state' * x_t
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "x"], ["s2"]), helper.make_node("Mul", ["s2", "x"], ["y"])],
        "body",
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("s2", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    node = helper.make_node("Scan", ["init", "xs"], ["final", "ys"], num_scan_inputs=1, body=body,
                            scan_input_axes=[1], scan_input_directions=[reverse_in],
                            scan_output_axes=[out_axis], scan_output_directions=[out_reverse])
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("init", TensorProto.FLOAT, [2]),
                               helper.make_tensor_value_info("xs", TensorProto.FLOAT, [2, length])],
                              [helper.make_tensor_value_info("final", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("ys", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reference(init, xs, reverse_in, out_axis, out_reverse):
    s, ys = init.copy(), []
    steps = range(xs.shape[1])
    for t in (reversed(steps) if reverse_in else steps):
        s = s + xs[:, t]
        ys.append(s * xs[:, t])
    if out_reverse:
        ys = ys[::-1]
    return s, np.stack(ys, axis=out_axis)


@pytest.mark.parametrize("reverse_in,out_axis,out_reverse", [(0, 0, 0), (1, 0, 0), (0, 1, 1), (1, -1, 0)])
def test_scan_is_unrolled_and_matches_numpy(reverse_in, out_axis, out_reverse):
    rng = np.random.default_rng(0)
    init, xs = rng.standard_normal(2).astype(np.float32), rng.standard_normal((2, 5)).astype(np.float32)
    model = _scan_model(reverse_in, out_axis, out_reverse, length=5)
    graph = ember.frontends.load(model)
    assert OpType.GATHER in {n.op for n in graph.nodes} and len(graph.nodes) > 5
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        out = ctx.infer({"init": init, "xs": xs})
    final, ys = _reference(init, xs, reverse_in, out_axis, out_reverse)
    np.testing.assert_allclose(out["final"], final, rtol=1e-6)
    np.testing.assert_allclose(out["ys"], ys, rtol=1e-6)


def test_scan_over_a_symbolic_length_is_refused():
    with pytest.raises(UnsupportedOpError, match="Scan.*build-time length"):
        ember.frontends.load(_scan_model(0, 0, 0))

"""MaxPool on oneDNN's pooling primitive (Ember's extension): in runs with finite inputs, for a
layer no non-finite value can reach, channels-last float32 / bf16, any 2-D window ONNX allows
(ceil mode, asymmetric pads, dilations): bitwise PyTorch's maxima. Runs with NaN or infinity take
PyTorch's pooling, which keeps NaN (oneDNN's maximum drops it)."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
from bf16kit import needs_onednn_bf16  # tests/backends/cpu/bf16kit.py
from onnx import TensorProto, helper

import ember
from ember.backends.base import CompileContext
from ember.backends.cpu.half import finite_run
from ember.backends.cpu.kernels.pool import _native_max_pool, max_pool, max_pool_kernel
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import PoolAttrs
from ember.plan.config import Precision

CL = torch.channels_last
WINDOWS = {  # name: PoolAttrs
    "3x3_s2_ceil": PoolAttrs((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), ceil_mode=True),
    "3x3_s1_p1": PoolAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    "asymmetric_pads": PoolAttrs((2, 3), (2, 1), (0, 1, 1, 2), (1, 1)),
    "dilated": PoolAttrs((3, 3), (1, 2), (2, 2, 2, 2), (2, 2)),
}


def _kernel(a: PoolAttrs, shape: tuple[int, ...]):
    node = Node("mp", OpType.MAX_POOL, ("x",), ("y",), a)
    graph = Graph("g", [node], ["x"], ["y"], {"x": TensorType(DType.FLOAT32, shape)})
    ctx = CompileContext(graph, {}, torch.device("cpu"), "", Precision.FP32)
    return max_pool_kernel(node, ctx), _native_max_pool(node, ctx, a)


# bf16: oneDNN refuses the primitive where it has no bf16 kernels (the layer then pools on PyTorch)
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_onednn_bf16)])
@pytest.mark.parametrize("window", list(WINDOWS))
def test_finite_runs_pool_on_onednn_with_pytorchs_maxima(ext: Any, window: str, dtype: torch.dtype):
    a = WINDOWS[window]
    x = torch.randn(2, 24, 11, 13, generator=torch.Generator().manual_seed(1)).to(dtype).contiguous(memory_format=CL)
    kernel, native = _kernel(a, tuple(x.shape))
    assert native is not None and native(x) is not None  # the oneDNN path applies
    with finite_run({"x": x}):
        got = kernel([x])[0]
    want = max_pool(x, a)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want)


def test_a_run_with_nan_pools_on_pytorch_and_keeps_it(ext: Any):
    a = WINDOWS["3x3_s1_p1"]
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=CL)
    x[0, 3, 2, 2] = float("nan")
    kernel, _ = _kernel(a, tuple(x.shape))
    with finite_run({"x": x}):  # the run is marked non-finite
        got = kernel([x])[0]
    assert int(torch.isnan(got).sum()) == 9  # the 3x3 outputs whose window holds the NaN
    np.testing.assert_array_equal(torch.isnan(got).numpy(), torch.isnan(max_pool(x, a)).numpy())


def test_no_oneDNN_path_where_a_non_finite_value_can_arrive_or_for_other_tensors(ext: Any):
    a = WINDOWS["3x3_s1_p1"]
    nodes = [Node("log", OpType.LOG, ("x",), ("l",)), Node("mp", OpType.MAX_POOL, ("l",), ("y",), a)]
    shape = (1, 8, 5, 5)
    graph = Graph("g", nodes, ["x"], ["y"], {"x": TensorType(DType.FLOAT32, shape),
                                             "l": TensorType(DType.FLOAT32, shape)})
    ctx = CompileContext(graph, {}, torch.device("cpu"), "", Precision.FP32)
    after_log = _native_max_pool(nodes[1], ctx, a)
    assert after_log is not None  # log(0) = -inf: NaN-safe pooling for floats, whatever the run
    assert after_log(torch.randn(shape).contiguous(memory_format=CL), True) is None
    _, native = _kernel(a, shape)
    assert native is not None
    assert native(torch.randn(shape).contiguous(memory_format=CL), False) is None  # a run with NaN
    assert native(torch.randn(shape)) is None  # NCHW
    assert native(torch.randn(shape, dtype=torch.float64).contiguous(memory_format=CL)) is None


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("window", list(WINDOWS))
def test_8_bit_activations_pool_on_onednn_in_any_run(ext: Any, window: str, dtype: torch.dtype):
    """The 8-bit tensors between INT8 layers hold no NaN: oneDNN pools them in every run,
    channels-last, where PyTorch pools them in NCHW only."""
    a = WINDOWS[window]
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(-128 if dtype == torch.int8 else 0, 128 if dtype == torch.int8 else 256, (2, 24, 11, 13),
                      generator=gen).to(dtype).contiguous(memory_format=CL)
    kernel, native = _kernel(a, tuple(x.shape))
    assert native is not None and native(x, False) is not None
    got = kernel([x])[0]  # no finite_run: the run is not marked finite
    want = max_pool(x, a)
    assert got.dtype == dtype and torch.equal(got, want)


def test_an_engine_pools_as_onnxruntime_on_finite_inputs_and_keeps_nan(ext: Any):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.5).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)]
    g = helper.make_graph(nodes, "mp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 6, 6])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    bad = x.copy()
    bad[1, 0, 4, 4] = np.nan
    conv_only = onnx.ModelProto()
    conv_only.CopyFrom(model)
    del conv_only.graph.node[1:]
    conv_only.graph.output[0].CopyFrom(helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 16, 12, 12]))
    conv = ort.InferenceSession(conv_only.SerializeToString(), providers=["CPUExecutionProvider"])
    with engine.create_context() as ctx:
        for feed in (x, bad, x):
            got = np.asarray(ctx.infer({"x": feed})["y"])
            if np.isfinite(feed).all():
                np.testing.assert_allclose(got, sess.run(None, {"x": feed})[0], rtol=1e-5, atol=1e-5)
            # Ember's rule (tests/backends/cpu/test_nan_propagation.py): a window holding NaN gives
            # NaN wherever it lies (ONNX Runtime's `>` drops or keeps it by position)
            c = torch.from_numpy(conv.run(None, {"x": feed})[0])
            want = torch.nn.functional.max_pool2d(c, 3, 2, 0, 1, True).numpy()
            assert np.isnan(want).any() == (not np.isfinite(feed).all())
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias,native", [(1.0, True), (0.0, False)])
def test_an_lrn_upstream_keeps_finite_values_finite_only_with_a_positive_bias(ext: Any, bias: float, native: bool):
    """LRN is ``x * (bias + ...)^-beta``: finite for finite x when bias > 0; with bias 0 an
    all-zero window gives 0 * inf = NaN, so a MaxPool after it keeps PyTorch's NaN-safe pooling."""
    from ember.ops.attrs import LRNAttrs

    a = WINDOWS["3x3_s1_p1"]
    nodes = [Node("lrn", OpType.LRN, ("x",), ("l",), LRNAttrs(size=5, bias=bias)),
             Node("mp", OpType.MAX_POOL, ("l",), ("y",), a)]
    shape = (1, 8, 5, 5)
    graph = Graph("g", nodes, ["x"], ["y"], {"x": TensorType(DType.FLOAT32, shape),
                                             "l": TensorType(DType.FLOAT32, shape)})
    ctx = CompileContext(graph, {}, torch.device("cpu"), "", Precision.FP32)
    prim = _native_max_pool(nodes[1], ctx, a)
    assert prim is not None
    assert (prim(torch.randn(shape).contiguous(memory_format=CL), True) is not None) is native

"""CPUBackend contract: coverage of the op set, tactics, errors, and evaluate's behaviour."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import ember
from ember.backends.base import CompileContext
from ember.backends.cpu import CPUBackend, evaluate, kernel_ops
from ember.backends.devices import get_backend
from ember.errors import BuildError, GraphError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import AxisAttrs, PoolAttrs, ResizeAttrs


def test_every_op_type_has_a_kernel():
    missing = [op for op in OpType if op not in kernel_ops()]
    assert missing == []


def test_get_backend_returns_cpu_backend():
    backend = get_backend("cpu")
    assert isinstance(backend, CPUBackend) and backend.name == "cpu"


def test_tactics_default_first_and_aten_always_present():
    node = Node("r", OpType.RELU, ("x",), ("y",))
    graph = Graph("g", [node], ["x"], ["y"], {})
    assert CPUBackend().tactics(node, graph)[0] == "aten"
    att = Node("a", OpType.FUSED_ATTENTION, ("q", "k", "v"), ("o",))
    assert set(CPUBackend().tactics(att, graph)) >= {"aten", "math"}


def test_unknown_tactic_is_a_build_error_naming_node_and_tactic():
    node = Node("relu_7", OpType.RELU, ("x",), ("y",))
    ctx = CompileContext(Graph("g", [node], ["x"], ["y"], {}), {}, torch.device("cpu"), tactic="warp")
    with pytest.raises(BuildError, match="relu_7.*'warp'.*aten"):
        CPUBackend().compile_node(node, ctx)


def test_kernel_failure_names_the_node_and_inputs():
    node = Node("cat_3", OpType.CONCAT, ("a", "b"), ("y",), AxisAttrs(0))
    with pytest.raises(GraphError, match=r"cat_3.*Concat.*float32\[2, 3\], float32\[2, 4\]"):
        evaluate(node, [np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32)])


def test_supports_what_the_kernels_do():
    backend = CPUBackend()
    pool = PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1))
    assert backend.supports(Node("p", OpType.MAX_POOL, ("x",), ("y",), pool))
    assert backend.supports(Node("p", OpType.MAX_POOL, ("x",), ("y", "idx"), pool))
    assert backend.supports(Node("r", OpType.RESIZE, ("x",), ("y",), ResizeAttrs(mode="cubic")))
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)[:, :, ::-1].copy()
    y, idx = evaluate(Node("p", OpType.MAX_POOL, ("x",), ("y", "idx"), pool), [x])
    np.testing.assert_array_equal(x.reshape(-1)[idx.reshape(-1)], y.reshape(-1))
    _, cols = evaluate(Node("p", OpType.MAX_POOL, ("x",), ("y", "idx"), replace(pool, storage_order=1)), [x])
    np.testing.assert_array_equal(x[0, 0].T.reshape(-1)[cols.reshape(-1)], y.reshape(-1))


def test_evaluate_outputs_never_alias_inputs_and_accept_readonly_arrays():
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    x.setflags(write=False)
    (y,) = evaluate(Node("i", OpType.IDENTITY, ("x",), ("y",)), [x])
    assert not np.shares_memory(x, y)
    np.testing.assert_array_equal(x, y)
    (s,) = evaluate(Node("s", OpType.SHAPE, ("x",), ("s",)), [x])
    assert s.dtype == np.int64 and s.tolist() == [2, 3]


def test_evaluate_pads_missing_optional_outputs():
    out = evaluate(Node("d", OpType.DROPOUT, ("x",), ("y", "")), [np.ones(3, np.float32)])
    assert len(out) == 2 and out[1] is None


def test_backends_implement_the_whole_contract():
    """Every backend is a ``Backend`` with nothing abstract left; ``get_backend`` makes each."""
    import inspect

    from ember.backends.base import Backend
    from ember.backends.cuda import CUDABackend

    for device, cls in (("cpu", CPUBackend), ("cuda", CUDABackend)):
        assert issubclass(cls, Backend) and not inspect.isabstract(cls)
        assert type(get_backend(device)) is cls and cls().name == device
    with pytest.raises(ember.BuildError, match="unknown device 'tpu'"):
        get_backend("tpu")


def _graph_with(node: Node, arrays: dict[str, np.ndarray], consts: set[str]) -> Graph:
    from ember.ir.dtype import DType
    from ember.ir.types import TensorType

    types = {k: TensorType(DType.from_numpy(v.dtype), v.shape) for k, v in arrays.items()}
    return Graph("g", [node], [k for k in arrays if k not in consts], list(node.outputs), types,
                 {k: arrays[k] for k in consts})


def test_prepacked_tactics_are_offered_first_for_constant_weights():
    from ember.backends.cpu.kernels.conv_mkldnn import pointwise_available
    from ember.backends.cpu.kernels.linalg_mkldnn import linear_available
    from ember.ops.attrs import ConvAttrs, GemmAttrs

    if not (pointwise_available() and linear_available()):
        pytest.skip("this PyTorch build has no oneDNN fused ops")
    backend = CPUBackend()
    arrays = {"x": np.zeros((1, 4, 8, 8), np.float32), "w": np.zeros((4, 4, 3, 3), np.float32)}
    conv = Node("c", OpType.CONV, ("x", "w"), ("y",), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)))
    assert [t for t in backend.tactics(conv, _graph_with(conv, arrays, {"w"})) if t != "onednn_persistent"][:3] == [
        "mkldnn_prepacked", "channels_last", "aten"]
    # a weight computed at run time cannot be prepacked
    assert backend.tactics(conv, _graph_with(conv, arrays, set())) == ["aten"]
    arrays = {"a": np.zeros((2, 5, 8), np.float32), "b": np.zeros((8, 3), np.float32)}
    mm = Node("m", OpType.MATMUL, ("a", "b"), ("y",))
    assert backend.tactics(mm, _graph_with(mm, arrays, {"b"}))[0] == "mkldnn_prepacked"
    gemm = Node("g", OpType.GEMM, ("a", "b"), ("y",), GemmAttrs(trans_a=True))
    assert "mkldnn_prepacked" not in backend.tactics(gemm, _graph_with(gemm, arrays, {"b"}))
    # one row (a batch-1 classifier) in fp32: MKL's GEMV on the plain weight
    arrays = {"a": np.zeros((1, 8), np.float32), "b": np.zeros((8, 3), np.float32)}
    gemv = Node("v", OpType.GEMM, ("a", "b"), ("y",), GemmAttrs())
    assert backend.tactics(gemv, _graph_with(gemv, arrays, {"b"}))[0] == "aten"


def test_compiled_kernels_are_safe_to_share_between_threads():
    """Execution contexts of one engine share kernels; caches inside them must not race."""
    from concurrent.futures import ThreadPoolExecutor

    from ember.ops.attrs import Activation, ConvAttrs, FusedConvAttrs, PoolAttrs

    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    attrs = FusedConvAttrs(ConvAttrs((3, 3), (2, 2), (1, 0, 1, 1), (1, 1)), Activation.RELU)
    conv = Node("c", OpType.FUSED_CONV, ("x", "w"), ("y",), attrs)
    pool = Node("p", OpType.AVERAGE_POOL, ("y",), ("z",), PoolAttrs((2, 2), (1, 1), (0, 1, 1, 0), (1, 1)))
    graph = _graph_with(conv, {"x": np.zeros((1, 4, 9, 9), np.float32), "w": w}, {"w"})
    consts = {"w": torch.from_numpy(w)}
    backend = CPUBackend()
    k_conv = backend.compile_node(conv, CompileContext(graph, consts, torch.device("cpu")))
    k_pool = backend.compile_node(pool, CompileContext(graph, consts, torch.device("cpu")))
    inputs = [torch.from_numpy(rng.standard_normal((1 + i % 2, 4, 9 + i % 3, 9)).astype(np.float32))
              for i in range(12)]

    def run(x):
        with torch.inference_mode():
            return k_pool([k_conv([x, consts["w"]])[0]])[0]

    want = [run(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool_ex:
        got = list(pool_ex.map(run, inputs * 4))
    for i, g in enumerate(got):
        torch.testing.assert_close(g, want[i % len(inputs)])

"""The CUDA executor on the GPU: CUDA-graph capture per shape, streams, input kinds, fallback."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ember.backends.cuda.executor import CudaRunner
from ember.backends.cuda.program import CudaProgram, LayerSpec

from cuda_graphs import cpu_reference, host_to_device_graph, inception_graph, reshape_chain_graph

pytestmark = pytest.mark.cuda
TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "tf32": 5e-3}


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _program(g, precision="fp32"):
    layers = {n.name: LayerSpec("", precision) for n in g.nodes}
    return CudaProgram.build(g, layers, g.constants)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_inception_is_captured_once_and_replays_new_data(precision):
    g = inception_graph()
    program = _program(g, precision)
    assert program.num_streams >= 4
    runner = CudaRunner(program)
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal((2, 3, 14, 14)).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = runner.infer({"x": x})
        ref = cpu_reference(g, {"x": x})
        assert out["prob"].dtype == np.float32
        for k in ref:
            assert _rel(out[k], ref[k]) <= TOL[precision], k
    assert runner.captures == 1 and not runner.fallback_reason


def test_gpu_inputs_give_gpu_outputs_and_torch_cpu_gives_torch():
    g = inception_graph()
    runner = CudaRunner(_program(g))
    x = torch.randn(2, 3, 14, 14)
    ref = cpu_reference(g, {"x": x.numpy()})
    out_gpu = runner.infer({"x": x.cuda()})
    assert out_gpu["prob"].is_cuda
    out_cpu = runner.infer({"x": x})
    assert isinstance(out_cpu["prob"], torch.Tensor) and not out_cpu["prob"].is_cuda
    for out in (out_gpu, out_cpu):
        assert _rel(out["logits"].cpu().numpy(), ref["logits"]) <= 1e-4


def test_each_input_shape_gets_its_own_graph():
    g = inception_graph(batch=2)
    runner = CudaRunner(_program(g))
    for batch in (2, 3, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 14, 14)).astype(np.float32)
        out = runner.infer({"x": x})
        assert out["prob"].shape == (batch, 10)
        assert _rel(out["logits"], cpu_reference(g, {"x": x})["logits"]) <= 1e-4
    assert runner.captures == 2


def test_shape_arithmetic_on_host_is_captured():
    g = reshape_chain_graph()
    runner = CudaRunner(_program(g))
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    out = runner.infer({"x": x})
    assert runner.captures == 1
    np.testing.assert_allclose(out["y"], np.maximum(x.reshape(2, -1), 0), rtol=1e-6)


def test_uncapturable_layer_falls_back_with_one_warning():
    g = host_to_device_graph()
    runner = CudaRunner(_program(g))
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    with pytest.warns(UserWarning, match="without CUDA graphs.*'add'"):
        out = runner.infer({"x": x})
    np.testing.assert_allclose(out["y"], x + 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.infer({"x": x})
    assert runner.captures == 0


def test_infer_async_on_a_user_stream_and_timing_split():
    g = inception_graph()
    runner = CudaRunner(_program(g, "fp16"))
    x = np.random.default_rng(1).standard_normal((2, 3, 14, 14)).astype(np.float32)
    ref = cpu_reference(g, {"x": x})
    stream = torch.cuda.Stream()
    outs = runner.infer_async({"x": x}, stream)
    stream.synchronize()
    assert outs["prob"].is_pinned()
    assert _rel(outs["prob"].numpy(), ref["prob"]) <= 1e-2
    t = runner.last_timing()
    assert t.compute_ms > 0 and t.h2d_ms >= 0 and t.d2h_ms >= 0


def test_two_runners_share_one_program():
    g = inception_graph()
    program = _program(g)
    a, b = CudaRunner(program), CudaRunner(program)
    x1 = np.random.default_rng(1).standard_normal((2, 3, 14, 14)).astype(np.float32)
    x2 = np.random.default_rng(2).standard_normal((2, 3, 14, 14)).astype(np.float32)
    o1, o2 = a.infer({"x": x1}), b.infer({"x": x2})
    assert _rel(o1["logits"], cpu_reference(g, {"x": x1})["logits"]) <= 1e-4
    assert _rel(o2["logits"], cpu_reference(g, {"x": x2})["logits"]) <= 1e-4


def test_contexts_capture_concurrently_from_threads():
    from concurrent.futures import ThreadPoolExecutor

    g = inception_graph()
    program = _program(g, "fp16")

    def worker(seed: int) -> int:
        runner = CudaRunner(program)
        rng = np.random.default_rng(seed)
        for batch in (1 + seed % 3, 2, 1 + seed % 3):
            x = rng.standard_normal((batch, 3, 14, 14)).astype(np.float32)
            out = runner.infer({"x": x})
            assert _rel(out["logits"], cpu_reference(g, {"x": x})["logits"]) <= 1e-2
        assert not runner.fallback_reason, runner.fallback_reason
        return runner.captures

    with ThreadPoolExecutor(4) as pool:
        assert all(n >= 1 for n in pool.map(worker, range(4)))

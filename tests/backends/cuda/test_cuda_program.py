"""The CUDA executor on the GPU: CUDA-graph capture per shape, streams, input kinds, fallback."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ember.backends.cuda.exec.executor import CudaExecutor
from ember.backends.cuda.exec.program import CudaProgram, LayerSpec

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
    runner = CudaExecutor(program)
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
    runner = CudaExecutor(_program(g))
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
    runner = CudaExecutor(_program(g))
    sizes = []
    for batch in (2, 96, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 14, 14)).astype(np.float32)
        out = runner.infer({"x": x})
        assert out["prob"].shape == (batch, 10)
        assert _rel(out["logits"], cpu_reference(g, {"x": x})["logits"]) <= 1e-4
        sizes.append(runner.memory()["arena"])
    assert runner.captures == 2
    # batch 96 needs a larger arena: batch 2's graph is captured again into it when next used
    assert sizes[0] < sizes[2] < sizes[1]  # both arenas while batch 2 still wrote into the old one
    assert runner.recaptures == 1 and runner.memory()["arena"] >= runner.memory()["arena_planned"]


def test_shape_arithmetic_on_host_is_captured():
    g = reshape_chain_graph()
    runner = CudaExecutor(_program(g))
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    out = runner.infer({"x": x})
    assert runner.captures == 1
    np.testing.assert_allclose(out["y"], np.maximum(x.reshape(2, -1), 0), rtol=1e-6)


def test_uncapturable_layer_falls_back_with_one_warning():
    g = host_to_device_graph()
    runner = CudaExecutor(_program(g))
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
    runner = CudaExecutor(_program(g, "fp16"))
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
    a, b = CudaExecutor(program), CudaExecutor(program)
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
        runner = CudaExecutor(program)
        rng = np.random.default_rng(seed)
        for batch in (1 + seed % 3, 2, 1 + seed % 3):
            x = rng.standard_normal((batch, 3, 14, 14)).astype(np.float32)
            out = runner.infer({"x": x})
            assert _rel(out["logits"], cpu_reference(g, {"x": x})["logits"]) <= 1e-2
        assert not runner.fallback_reason, runner.fallback_reason
        return runner.captures

    with ThreadPoolExecutor(4) as pool:
        assert all(n >= 1 for n in pool.map(worker, range(4)))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_arena_engine_matches_the_pool_engine_and_reports_its_plan(precision):
    """With the arena (every intermediate at its planned offset, side streams included) the
    engine gives what the graph-pool engine gives, and the plan is reported."""
    g = inception_graph(batch=4)
    x = np.random.default_rng(5).standard_normal((4, 3, 14, 14)).astype(np.float32)
    outs = {}
    for arena in (True, False):
        program = _program(g, precision)
        program.use_arena = arena
        runner = CudaExecutor(program)
        for _ in range(2):
            outs[arena] = runner.infer({"x": x})
        assert runner.captures == 1 and not runner.fallback_reason
        report = runner.arena_report()
        if arena:
            mem = runner.memory()
            assert report["placed"] > 5 and report["arena_bytes"] <= report["sum_bytes"]
            assert mem["arena"] >= report["arena_bytes"] > 0
            assert report["written"] > 0  # untuned default tactics: some copy into place
            assert len(report["copied_layers"]) == report["copied"]
        else:
            assert report is None and runner.memory()["arena"] == 0
    ref = cpu_reference(g, {"x": x})
    for k in ref:
        assert _rel(outs[True][k], ref[k]) <= TOL[precision], k
        assert _rel(outs[True][k], outs[False][k]) <= TOL[precision], k


def test_outputs_survive_another_shapes_replay():
    """Two shapes share the arena; outputs are cloned out of it, so a run of batch 3 cannot
    change what batch 2 returned (as GPU tensors, with no copy to the host)."""
    g = inception_graph(batch=2)
    runner = CudaExecutor(_program(g))
    x2, x3 = torch.randn(2, 3, 14, 14, device="cuda"), torch.randn(3, 3, 14, 14, device="cuda")
    outs2 = runner.run_device({"x": x2})
    kept = {k: v.clone() for k, v in outs2.items()}
    runner.run_device({"x": x3})
    torch.cuda.synchronize()
    for k in kept:
        assert torch.equal(outs2[k], kept[k])

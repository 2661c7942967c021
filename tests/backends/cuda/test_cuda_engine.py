"""CUDA engines end to end: ember.build(device="cuda") with tuning and a timing cache, the
runtime's contexts delegating to the CUDA runner (graphs, infer_async), layer precisions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember
from ember.backends.cuda.exec.executor import CudaExecutor

from cuda_graphs import cpu_reference, inception_graph

pytestmark = pytest.mark.cuda


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_tuned_fp16_build_warm_cache_and_contexts(tmp_path):
    g = inception_graph(batch=4)
    cache = str(tmp_path / "timing.json")
    cfg = ember.BuildConfig(device="cuda", precision="fp16", timing_cache=cache,
                            layer_precisions={"Softmax": "fp32"})
    cold = ember.build(g, cfg)
    info = cold.plan.build_info
    assert info["layers_timed"] > 0 and info["timing_cache_hits"] == 0
    assert {lay.name: lay.precision for lay in cold.plan.layers}["sm"] == "fp32"
    assert all(lay.tactic for lay in cold.plan.layers)
    warm = ember.build(g, cfg)
    assert warm.plan.build_info["layers_timed"] == 0 and warm.plan.build_info["timing_cache_hits"] > 0
    assert [lay.tactic for lay in warm.plan.layers] == [lay.tactic for lay in cold.plan.layers]

    x = np.random.default_rng(0).standard_normal((4, 3, 14, 14)).astype(np.float32)
    ref = cpu_reference(g, {"x": x})
    with warm.create_context() as ctx:
        assert isinstance(ctx.executor, CudaExecutor)
        out = ctx.infer({"x": x})
        assert _rel(out["logits"], ref["logits"]) <= 1e-2
        stream = torch.cuda.Stream()
        outs = ctx.infer_async({"x": torch.from_numpy(x).cuda()}, stream)
        stream.synchronize()
        assert outs["prob"].is_cuda and _rel(outs["prob"].cpu().numpy(), ref["prob"]) <= 1e-2
        assert ctx.executor.captures == 1


def test_engine_file_round_trip_runs_with_graphs(tmp_path):
    g = inception_graph(batch=2)
    engine = ember.build(g, ember.BuildConfig(device="cuda", precision="bf16", tactic_tuning=False))
    path = tmp_path / "e.ember"
    engine.save(path)
    loaded = ember.load(path)
    x = np.random.default_rng(1).standard_normal((2, 3, 14, 14)).astype(np.float32)
    with loaded.create_context() as ctx:
        out = ctx.infer({"x": x})
    assert _rel(out["logits"], cpu_reference(g, {"x": x})["logits"]) <= 5e-2


def test_page_locked_host_inputs_are_copied_straight_to_the_gpu(tmp_path):
    """A pinned CPU tensor (what a serving instance process hands over from registered shared
    memory) is copied to the GPU directly, with the same results as a NumPy input."""
    import mmap

    g = inception_graph(batch=2)
    engine = ember.build(g, ember.BuildConfig(device="cuda", precision="fp32", tactic_tuning=False))
    x = np.random.default_rng(3).standard_normal((2, 3, 14, 14)).astype(np.float32)
    region = mmap.mmap(-1, x.nbytes)
    view = np.frombuffer(region, np.float32).reshape(x.shape)
    view[...] = x
    assert int(torch.cuda.cudart().cudaHostRegister(view.ctypes.data, x.nbytes, 1)) == 0
    try:
        t = torch.from_numpy(view)
        assert t.is_pinned()
        with engine.create_context() as ctx:
            want = ctx.infer({"x": x})
        with engine.create_context() as ctx:
            for _ in range(2):  # eager warm-up and graph replay
                got = ctx.infer({"x": t})
            slot = next(iter(ctx.executor._slots.values()))
            assert not slot.pinned_in  # no staging buffer was needed
        np.testing.assert_allclose(got["logits"].numpy(), want["logits"], rtol=1e-5, atol=1e-5)
    finally:
        torch.cuda.cudart().cudaHostUnregister(view.ctypes.data)

"""The runtime on a GPU: build, save, load and run a CUDA engine; contexts from threads."""
from __future__ import annotations

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import ember
from ember.builder.build import build

from runtime_graphs import cnn_graph, cnn_reference

pytestmark = pytest.mark.cuda
CNN = cnn_graph()
PROFILE = {"x": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}


def test_cuda_engine_round_trip(tmp_path):
    engine = build(cnn_graph(), ember.BuildConfig(device="cuda", profiles=PROFILE))
    path = tmp_path / "cnn.ember"
    engine.save(path)
    with zipfile.ZipFile(path) as z:
        device = json.loads(z.read("manifest.json"))["device"]
    assert device["type"] == "cuda" and device["gpu"] == torch.cuda.get_device_name()
    loaded = ember.load(path)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with engine.create_context() as a, loaded.create_context() as b:
        ya, yb = a.infer({"x": x})["y"], b.infer({"x": x})["y"]
        yt = b.infer({"x": torch.from_numpy(x).cuda()})["y"]
        with pytest.raises(ember.InputError, match=r"profile allows \[1\.\.4, 3, 8, 8\]"):
            b.infer({"x": np.zeros((5, 3, 8, 8), np.float32)})
    assert isinstance(ya, np.ndarray) and isinstance(yt, torch.Tensor)
    np.testing.assert_allclose(ya, cnn_reference(CNN, x), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(yt.cpu().numpy(), ya, rtol=1e-5, atol=1e-6)


def test_cuda_contexts_from_threads():
    engine = build(cnn_graph(), ember.BuildConfig(device="cuda", profiles=PROFILE))

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with engine.create_context() as ctx:
            for _ in range(10):
                x = rng.standard_normal((int(rng.integers(1, 5)), 3, 8, 8)).astype(np.float32)
                np.testing.assert_allclose(ctx.infer({"x": x})["y"], cnn_reference(CNN, x),
                                           rtol=2e-3, atol=2e-3)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(worker, range(4)))


def test_a_reused_gpu_input_buffer_is_read_in_place_without_a_copy():
    """The second run with the same GPU buffer captures a graph bound to it; later runs read it
    where it is (no copy into the static input), and see whatever the caller wrote into it."""
    engine = build(cnn_graph(), ember.BuildConfig(device="cuda", profiles=PROFILE))
    rng = np.random.default_rng(1)
    buf = torch.empty((2, 3, 8, 8), device="cuda")
    with engine.create_context() as ctx:
        runner = ctx.executor
        for i in range(5):
            x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
            buf.copy_(torch.from_numpy(x))
            y = ctx.infer({"x": buf})["y"]
            np.testing.assert_allclose(y.cpu().numpy(), cnn_reference(CNN, x), rtol=2e-3, atol=2e-3)
            assert runner.zero_copy_runs == max(0, i)  # from the second run on
        copies_before = runner.captures
        for _ in range(3):  # fresh tensors every call: the copy path, no new captures
            x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
            y = ctx.infer({"x": torch.from_numpy(x).cuda()})["y"]
            np.testing.assert_allclose(y.cpu().numpy(), cnn_reference(CNN, x), rtol=2e-3, atol=2e-3)
        assert runner.captures == copies_before and runner.zero_copy_runs == 4
        strided = torch.randn((3, 2, 8, 8), device="cuda").transpose(0, 1)  # not contiguous
        y = ctx.infer({"x": strided})["y"]
        np.testing.assert_allclose(y.cpu().numpy(), cnn_reference(CNN, strided.cpu().numpy()),
                                   rtol=2e-3, atol=2e-3)


def test_the_engines_own_input_buffer_filled_by_the_caller_runs_without_copy_or_capture():
    """``input_buffer`` gives the static buffer of a shape; feeding it back replays that shape's
    graph as it is (no copy, no second graph bound to the same tensors)."""
    engine = build(cnn_graph(), ember.BuildConfig(device="cuda", profiles=PROFILE))
    rng = np.random.default_rng(2)
    with engine.create_context() as ctx:
        runner = ctx.executor
        like = {"x": np.zeros((2, 3, 8, 8), np.float32)}
        buf = runner.input_buffer(like, "x")
        captures = runner.captures
        for _ in range(4):
            x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
            buf.copy_(torch.from_numpy(x), non_blocking=True)
            y = ctx.infer({"x": buf})["y"]
            np.testing.assert_allclose(y.cpu().numpy(), cnn_reference(CNN, x), rtol=2e-3, atol=2e-3)
        assert runner.captures == captures and runner.input_buffer(like, "x") is buf


def test_device_memory_is_measured_and_inspect_reports_it(tmp_path, capsys):
    from ember.cli import main

    engine = build(cnn_graph(), ember.BuildConfig(device="cuda", profiles=PROFILE))
    assert engine.compile().weight_bytes > 0
    with engine.create_context() as ctx:
        ctx.infer({"x": np.zeros((2, 3, 8, 8), np.float32)})
        mem = ctx.executor.memory()
    assert mem["graphs"] == 1 and mem["weights"] > 0 and mem["static_buffers"] >= 2 * 3 * 8 * 8 * 4
    path = tmp_path / "cnn.ember"
    engine.save(path)
    assert main(["inspect", str(path), "--no-layers", "--device-memory"]) == 0
    out = capsys.readouterr().out
    assert "device memory (planned)" in out and "device memory (measured)" in out

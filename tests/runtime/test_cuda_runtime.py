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

"""A CUDA model on Ray Serve: each replica builds its engine on the GPU Ray gives it (one per GPU)
and answers as the CPU engine does. Runs on a GPU machine with ray[serve] installed."""
from __future__ import annotations

import socket

import numpy as np
import pytest

from raykit import mlp_model, write_model

pytest.importorskip("ray.serve", reason="the Ray Serve tests need ray[serve] (pip install 'ember[ray]')")
http = pytest.importorskip("tritonclient.http", reason="the Ray Serve tests talk through tritonclient.http")


@pytest.mark.cuda
def test_a_cuda_model_runs_one_engine_per_gpu(ray_cluster, tmp_path, mlp_engine):
    from ray import serve

    from ember.integrations.ray import RayServeOptions, model_application, resolve_model

    folder = write_model(tmp_path, "mlp_cuda", mlp_model(), "max_batch_size: 8\ndevice: cuda\n"
                                                             "dynamic_batching: {max_queue_delay_microseconds: 500}\n")
    source = resolve_model(folder, tmp_path / "cache")
    assert source.engine_file is None  # built by the replica, on its GPU
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(model_application(source, RayServeOptions(num_cpus=0.5)), name="mlp_cuda",
                  route_prefix="/v2/models/mlp_cuda")
        x = np.random.default_rng(6).standard_normal((4, 16)).astype(np.float32)
        inp = http.InferInput("x", [4, 16], "FP32")
        inp.set_data_from_numpy(x)
        got = http.InferenceServerClient(f"127.0.0.1:{port}").infer("mlp_cuda", [inp]).as_numpy("y")
        with mlp_engine.create_context() as ctx:
            np.testing.assert_allclose(got, ctx.infer({"x": x})["y"], rtol=1e-4, atol=1e-5)
    finally:
        serve.shutdown()

"""Model instances in processes of their own (``instance_kind: process``): same answers as the
engine, batches through shared memory that grows when needed, a dead instance process fails only
its batch and is started again, and the configuration is checked."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from ember.serve import ServerOptions, ServerThread
from ember.serve.batcher import Scheduler
from ember.serve.config import parse_config
from ember.serve.errors import ModelConfigError
from ember.serve.shm import layout

from servekit import fixed_model, matmul_relu_model, reference, two_io_model, write_model

CONFIGS = {
    "proc": (matmul_relu_model, "max_batch_size: 8\ninstance_kind: process\ninstance_count: 2\n"
                                "dynamic_batching:\n  max_queue_delay_microseconds: 20000\n"
                                "  batch_buckets: [2, 4, 8]\n"),
    "proc_two_io": (two_io_model, "max_batch_size: 4\ninstance_kind: process\n"
                                  "dynamic_batching: {max_queue_delay_microseconds: 1000}\n"
                                  "inputs:\n"
                                  "  - {name: a, datatype: FP32, shape: [-1], "
                                  "profile: {min: [1], opt: [4], max: [64]}}\n"
                                  "  - {name: b, datatype: FP32, shape: [-1], "
                                  "profile: {min: [1], opt: [4], max: [64]}}\n"
                                  "  - {name: k, datatype: INT64, shape: [2]}\n"),
    "proc_fixed": (fixed_model, "max_batch_size: 0\ninstance_kind: process\n"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("proc-repo")
    for name, (make, config) in CONFIGS.items():
        write_model(root, name, make(), config)
    with ServerThread(ServerOptions(root, http_port=0, grpc_port=0, metrics_port=0, cache_dir=cache_dir,
                                    log_level="warning")) as srv:
        yield srv


def _client(server):
    return tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def _infer(client, x, model="proc"):
    inp = tg.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("y")


def test_instances_are_processes(server):
    sched = server.core.repository.get("proc").scheduler
    assert sched.instance_kind == "process"
    assert len(sched._instances) == 2 and all(i.proc.is_alive() for i in sched._instances)


def test_concurrent_requests_batched_and_exact(server):
    errors, results = [], {}

    def worker(i: int) -> None:
        c = _client(server)
        try:
            for j in range(6):
                x = np.random.default_rng(i * 10 + j).standard_normal((1 + (i + j) % 3, 4)).astype(np.float32)
                y = _infer(c, x)
                if not np.allclose(y, reference(x), rtol=1e-5, atol=1e-5):
                    errors.append((i, j))
                results[(i, j)] = y.shape
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 48
    stats = server.core.repository.get("proc").stats
    assert stats.execution_count < stats.inference_count  # requests did share batches


def test_dynamic_dims_grow_the_regions(server):
    c = _client(server)
    sched = server.core.repository.get("proc_two_io").scheduler
    for n in (2, 64, 3):  # 64 floats per row: past the region the first batch made
        a = np.random.default_rng(n).standard_normal((4, n)).astype(np.float32)
        b = np.ones((4, n), np.float32)
        k = np.arange(8, dtype=np.int64).reshape(4, 2)
        inputs = []
        for name, arr, dt in (("a", a, "FP32"), ("b", b, "FP32"), ("k", k, "INT64")):
            inp = tg.InferInput(name, list(arr.shape), dt)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        r = c.infer("proc_two_io", inputs)
        np.testing.assert_allclose(r.as_numpy("sum"), a + 1, rtol=1e-6)
        np.testing.assert_array_equal(r.as_numpy("idx"), k + 1)
    inst = sched._instances[0]
    assert inst._in.size >= 4 * (2 * 64 * 4 + 2 * 8) and inst._out.size >= 4 * 64 * 4
    c.close()


def test_no_batch_dim_model(server):
    c = _client(server)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(_infer(c, x, "proc_fixed"), x * 2)
    c.close()


def test_a_dead_instance_process_costs_no_request(server):
    """An instance process killed before (or while) it runs a batch: the batch runs again on its
    restarted process, so every request is answered, once and correctly."""
    sched = server.core.repository.get("proc").scheduler
    c = _client(server)
    for inst in sched._instances:
        inst.proc.kill()
        inst.proc.join(10)
    for i in range(4):
        x = np.full((1, 4), float(i), np.float32)
        np.testing.assert_allclose(_infer(c, x), reference(x), rtol=1e-5)
    assert all(i.starts == 2 for i in sched._instances if i.proc is not None)
    c.close()


def test_a_batch_that_kills_its_instance_twice_fails_alone(server, monkeypatch):
    """A request whose run kills the instance process every time ("query of death") fails, with an
    error id; the instance is back for the next request."""
    from ember.serve.errors import InstanceDiedError
    from ember.serve.instance_process import ProcessInstance

    sched = server.core.repository.get("proc").scheduler
    real_run = ProcessInstance.run

    def deadly(self, parts, batched, outputs):
        if any((feeds["x"] < -100).any() for feeds, _ in parts):  # dies while running it
            code = self._kill()
            raise InstanceDiedError(f"{self.label}: the instance process exited (status {code})")
        return real_run(self, parts, batched, outputs)
    monkeypatch.setattr(ProcessInstance, "run", deadly)
    c = _client(server)
    with pytest.raises(InferenceServerException) as info:
        _infer(c, np.full((1, 4), -1000.0, np.float32))
    assert "internal error" in info.value.message() and "instance process" not in info.value.message()
    x = np.ones((1, 4), np.float32)
    np.testing.assert_allclose(_infer(c, x), reference(x), rtol=1e-5)
    assert sched.stats.to_json()["inference_stats"]["fail"]["count"] >= 1
    c.close()


def test_layout_aligns_every_tensor():
    placed, need = layout([("a", "<f4", (3, 5)), ("b", "<i8", (1,)), ("c", "|b1", (0,))])
    assert [p[3] for p in placed] == [0, 64, 128] and need == 128


def test_instance_kind_is_checked_and_resolved():
    with pytest.raises(ModelConfigError, match="instance_kind 'gpu' is not one of auto, thread, process"):
        parse_config({"instance_kind": "gpu"}, "m", "m/config.yaml")

    def kind(device: str, engine_file, setting: str = "auto") -> str:
        cfg = parse_config({"device": device, "instance_kind": setting, "max_batch_size": 4}, "m", "m/config.yaml")
        sched = Scheduler.__new__(Scheduler)
        sched.config, sched.engine_file, sched.name = cfg, engine_file, "m"
        return sched.instance_kind

    assert kind("cuda", "/e.ember") == "process" and kind("cpu", "/e.ember") == "thread"
    assert kind("cuda", None) == "thread" and kind("cpu", "/e.ember", "process") == "process"
    with pytest.raises(ModelConfigError, match="could not be written to the engine cache"):
        kind("cpu", None, "process")

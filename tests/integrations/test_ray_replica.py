"""What a Serve replica runs, without Ray: the model read as ember serve reads it, batches split
back per request, the request at fault isolated, the options and the `ember serve --ray` flags."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ember.cli import make_parser
from ember.integrations.ray.options import RayOptionsError, RayServeOptions
from ember.integrations.ray.replica import ModelReplica, resolve_model, total_rows
from ember.serve.errors import BadRequestError, ModelConfigError

from raykit import TABLE


@pytest.fixture(scope="module")
def mlp_replica(repository, cache_dir):
    replica = ModelReplica(resolve_model(repository / "mlp", cache_dir))
    yield replica
    replica.close()


def test_resolve_model_builds_once_and_reads_the_config(repository, cache_dir):
    source = resolve_model(repository / "mlp", cache_dir)
    assert (source.name, source.version, source.max_batch_size, source.device) == ("mlp", "1", 8, "cpu")
    assert source.engine_file is not None and source.engine_file.endswith(".ember")
    assert resolve_model(repository / "mlp", cache_dir).engine_file == source.engine_file  # cached


def test_resolve_model_names_the_file_at_fault(repository, tmp_path):
    with pytest.raises(ModelConfigError, match="not a model folder"):
        resolve_model(tmp_path / "missing")
    bad = tmp_path / "bad"
    (bad / "1").mkdir(parents=True)
    (bad / "1" / "model.onnx").write_bytes((repository / "mlp" / "1" / "model.onnx").read_bytes())
    (bad / "config.yaml").write_text("max_batch_size: 8\nmax_batchsize: 4\n")
    with pytest.raises(ModelConfigError, match=r"bad/config.yaml: unknown config keys \['max_batchsize'\]"):
        resolve_model(bad)


def test_requests_batched_together_get_their_own_rows(mlp_replica, mlp_engine):
    assert mlp_replica.batching and mlp_replica.max_batch_size == 8 and mlp_replica.batch_wait_s == 0.003
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 3, 2)]
    pending = [mlp_replica.prepare({"x": x}, None) for x in xs]
    assert total_rows(pending) == 6
    runs = mlp_replica.runs
    outcomes = asyncio.run(mlp_replica.run_batch(pending))
    assert mlp_replica.runs == runs + 1 and mlp_replica.largest_run >= 6
    with mlp_engine.create_context() as ctx:
        for x, out in zip(xs, outcomes):
            np.testing.assert_array_equal(out["y"], ctx.infer({"x": x})["y"])


def test_batches_waiting_for_the_engine_are_merged(mlp_replica, mlp_engine):
    """Serve hands over its batches as its wait time passes; those that wait for the busy engine
    run together in its next run, up to max_batch_size rows."""
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((n, 16)).astype(np.float32) for n in (2, 1, 3, 4, 2)]

    async def main():
        calls = [mlp_replica.run_batch([mlp_replica.prepare({"x": x}, None)]) for x in xs]
        return await asyncio.gather(*calls)

    runs = mlp_replica.runs
    outcomes = asyncio.run(main())
    assert mlp_replica.runs == runs + 2  # 2+1+3 rows, then 4+2 (8 would pass max_batch_size 8 with 4 more)
    with mlp_engine.create_context() as ctx:
        for x, [out] in zip(xs, outcomes):
            np.testing.assert_array_equal(out["y"], ctx.infer({"x": x})["y"])


def test_bad_requests_are_refused_before_running(mlp_replica):
    with pytest.raises(BadRequestError, match="no output 'z'; its outputs are y"):
        mlp_replica.prepare({"x": np.zeros((1, 16), np.float32)}, ["z"])
    with pytest.raises(BadRequestError, match="has datatype FP64 but model 'mlp' expects FP32"):
        mlp_replica.prepare({"x": np.zeros((1, 16))}, None)
    with pytest.raises(BadRequestError, match="batch size 9 exceeds max_batch_size 8"):
        mlp_replica.prepare({"x": np.zeros((9, 16), np.float32)}, None)


def test_the_request_at_fault_is_answered_alone(gather_dir, cache_dir):
    replica = ModelReplica(resolve_model(gather_dir, cache_dir))
    try:
        good = [np.array([[1, 2]]), np.array([[3, 4], [0, 9]])]
        bad = np.array([[1, 99]])
        pending = [replica.prepare({"ids": ids}, None) for ids in (good[0], bad, good[1])]
        first, fault, last = asyncio.run(replica.run_batch(pending))
        np.testing.assert_array_equal(first["rows"], TABLE[good[0]])
        np.testing.assert_array_equal(last["rows"], TABLE[good[1]])
        assert isinstance(fault, BadRequestError) and fault.http_status == 400
        assert "'ids'" in str(fault) and "fix the values of this request" in str(fault)
        with pytest.raises(BadRequestError, match="'ids'"):
            asyncio.run(replica.run_alone(replica.prepare({"ids": bad}, None)))
    finally:
        replica.close()


def test_a_model_without_dynamic_batching_runs_each_request_alone(repository, cache_dir):
    replica = ModelReplica(resolve_model(repository / "pair", cache_dir))
    try:
        assert not replica.batching
        feeds = [{"a": np.ones((2, 3), np.float32) * i, "k": np.full((2, 2), i, np.int64)} for i in range(3)]
        runs = replica.runs
        outs = asyncio.run(replica.run_batch([replica.prepare(f, ["idx"]) for f in feeds]))
        assert replica.runs == runs + 3
        for i, out in enumerate(outs):
            assert list(out) == ["idx"]
            np.testing.assert_array_equal(out["idx"], np.full((2, 2), i + 1))
    finally:
        replica.close()


def test_options_validate_and_become_deployment_options():
    fixed = RayServeOptions(replicas=3).deployment_options(max_batch_size=16, device="cpu")
    assert fixed == {"max_ongoing_requests": 64, "num_replicas": 3, "logging_config": {"enable_access_log": False},
                     "ray_actor_options": {"num_cpus": 1.0, "num_gpus": 0.0}}
    scaled = RayServeOptions(min_replicas=0, max_replicas=4, target_ongoing_requests=8).deployment_options(8, "cuda")
    assert scaled["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
                                            "target_ongoing_requests": 8}
    assert scaled["ray_actor_options"]["num_gpus"] == 1.0  # one engine per GPU
    with pytest.raises(RayOptionsError, match="both min_replicas and max_replicas"):
        RayServeOptions(min_replicas=1)
    with pytest.raises(RayOptionsError, match="min_replicas <= max_replicas"):
        RayServeOptions(min_replicas=3, max_replicas=2)
    with pytest.raises(RayOptionsError, match="replicas must be >= 1"):
        RayServeOptions(replicas=0)
    with pytest.raises(RayOptionsError, match="cuda model needs a GPU per replica"):
        RayServeOptions(num_gpus=0).deployment_options(8, "cuda")


def test_ember_serve_ray_flags(capsys, repository):
    parser = make_parser()
    args = parser.parse_args(["serve", str(repository), "--ray", "--replicas", "2", "--num-gpus", "1"])
    assert (args.ray, args.replicas, args.num_gpus) == (True, 2, 1.0)
    args = parser.parse_args(["serve", str(repository), "--replicas", "2"])
    assert args._run(args) == 2
    assert "--replicas only apply with --ray" in capsys.readouterr().err
    args = parser.parse_args(["serve", str(repository), "--request-timeout-s", "30"])
    assert args._run(args) == 2
    assert "--request-timeout-s only apply with --ray" in capsys.readouterr().err
    if _has_serve():  # checked before any cluster starts
        args = parser.parse_args(["serve", str(repository), "--ray", "--request-timeout-s", "0"])
        assert args._run(args) == 2
        assert "(--request-timeout-s, request_timeout_s=) must be a positive number of seconds, got 0.0" \
            in capsys.readouterr().err


def _has_serve() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None


def test_deploy_repository_gives_serves_proxy_the_request_timeout(monkeypatch, repository):
    """``request_timeout_s`` reaches Serve's HTTP proxy (which then answers 408 past it); nothing
    else is started here: ``serve.start`` is replaced."""
    if not _has_serve():
        pytest.skip("needs ray[serve] (pip install 'ember[ray]')")
    from ember.integrations.ray import serve as S

    class Started(Exception):
        pass

    seen: dict = {}

    def start(http_options):
        seen.update(http_options)
        raise Started

    monkeypatch.setattr(S.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(S.serve, "start", start)
    with pytest.raises(Started):
        S.deploy_repository(repository, port=8123, request_timeout_s=45)
    assert seen == {"host": "127.0.0.1", "port": 8123, "request_timeout_s": 45.0}
    seen.clear()
    with pytest.raises(Started):
        S.deploy_repository(repository, port=8124)
    assert seen == {"host": "127.0.0.1", "port": 8124}  # no limit unless asked
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(RayOptionsError, match="must be a positive number of seconds"):
            S.deploy_repository(repository, request_timeout_s=bad)

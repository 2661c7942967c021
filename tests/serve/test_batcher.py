"""The scheduler on a Python-function engine: batching, delays, preferred sizes, shapes batched
apart, queue limits, timeouts, failures, parallel instances and draining."""
from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest

from ember.serve.batcher import Scheduler
from ember.serve.config import parse_config
from ember.serve.errors import (
    BadRequestError,
    InferenceFailedError,
    ModelConfigError,
    QueueFullError,
    RequestTimeoutError,
)
from ember.serve.signature import resolve_signature
from ember.serve.stats import ModelStats

from servekit import FakeEngine


def double(feeds):
    return {"y": feeds["x"] * 2}


def make(config: dict, fn=double, delay_s: float = 0.0, dims=("batch", -1)):
    engine = FakeEngine(fn, [("x", np.float32, dims)], [("y", np.float32, dims)], delay_s=delay_s)
    cfg = parse_config(config, "m", "m/config.yaml")
    stats = ModelStats("m", "1")
    return Scheduler("m", "1", engine, resolve_signature(cfg, engine), cfg, stats), engine, stats


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_gathers_concurrent_requests_into_one_batch_and_splits_back():
    async def main():
        sched, engine, stats = make({"max_batch_size": 8,
                                     "dynamic_batching": {"max_queue_delay_microseconds": 200_000}})
        await sched.start()
        xs = [np.full((b, 3), i, np.float32) for i, b in enumerate([1, 2, 3, 2])]
        outs = await asyncio.gather(*(sched.infer({"x": x}, x.shape[0]) for x in xs))
        await sched.close()
        return xs, outs, engine, stats
    xs, outs, engine, stats = run(main())
    assert engine.calls == [{"x": (8, 3)}]
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], x * 2)
    assert (stats.execution_count, stats.inference_count) == (1, 8)
    assert stats.queue.count == 4 and stats.compute_infer.count == 4
    assert list(stats.batches) == [8]
    assert engine.opened == engine.closed == 1


def test_waits_at_most_the_queue_delay():
    async def main():
        sched, engine, _ = make({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 50_000}})
        await sched.start()
        t0 = time.perf_counter()
        await sched.infer({"x": np.ones((1, 3), np.float32)}, 1)
        waited = time.perf_counter() - t0
        await sched.close()
        return waited, engine
    waited, engine = run(main())
    assert 0.045 <= waited < 1.0
    assert engine.calls == [{"x": (1, 3)}]


def test_preferred_batch_size_dispatches_at_once():
    async def main():
        sched, engine, _ = make({"max_batch_size": 8, "dynamic_batching": {
            "max_queue_delay_microseconds": 5_000_000, "preferred_batch_size": [2]}})
        await sched.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(sched.infer({"x": np.ones((1, 3), np.float32)}, 1) for _ in range(4)))
        took = time.perf_counter() - t0
        await sched.close()
        return took, engine
    took, engine = run(main())
    assert took < 2.0          # did not wait the 5 s delay
    assert engine.calls == [{"x": (2, 3)}, {"x": (2, 3)}]


def test_different_shapes_are_batched_apart():
    async def main():
        sched, engine, _ = make({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 100_000}})
        await sched.start()
        reqs = [np.full((1, w), w, np.float32) for w in (3, 5, 3, 5, 3)]
        outs = await asyncio.gather(*(sched.infer({"x": x}, 1) for x in reqs))
        await sched.close()
        return reqs, outs, engine
    reqs, outs, engine = run(main())
    assert sorted(c["x"] for c in engine.calls) == [(2, 5), (3, 3)]
    for x, out in zip(reqs, outs):
        np.testing.assert_array_equal(out["y"], x * 2)


def test_never_exceeds_max_batch_size():
    async def main():
        sched, engine, stats = make({"max_batch_size": 4,
                                     "dynamic_batching": {"max_queue_delay_microseconds": 100_000}})
        await sched.start()
        await asyncio.gather(*(sched.infer({"x": np.ones((3, 3), np.float32)}, 3) for _ in range(3)))
        await sched.close()
        return engine, stats
    engine, stats = run(main())
    assert [c["x"][0] for c in engine.calls] == [3, 3, 3]
    assert stats.inference_count == 9


def test_without_dynamic_batching_each_request_runs_alone():
    async def main():
        sched, engine, _ = make({"max_batch_size": 8})
        await sched.start()
        await asyncio.gather(*(sched.infer({"x": np.ones((2, 3), np.float32)}, 2) for _ in range(3)))
        await sched.close()
        return engine
    assert run(main()).calls == [{"x": (2, 3)}] * 3


def test_instances_run_in_parallel():
    async def main():
        sched, engine, _ = make({"max_batch_size": 1, "instance_count": 3}, delay_s=0.3)
        await sched.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(sched.infer({"x": np.ones((1, 3), np.float32)}, 1) for _ in range(3)))
        took = time.perf_counter() - t0
        await sched.close()
        return took, engine
    took, engine = run(main())
    assert engine.max_active == 3 and engine.opened == engine.closed == 3
    assert took < 0.8


def test_full_queue_refuses_with_a_message():
    async def main():
        sched, _, _ = make({"max_batch_size": 1, "dynamic_batching": {"max_queue_size": 2}}, delay_s=0.3)
        await sched.start()
        first = asyncio.ensure_future(sched.infer({"x": np.ones((1, 3), np.float32)}, 1))
        await asyncio.sleep(0.05)           # first is running; the next two fill the queue
        queued = [asyncio.ensure_future(sched.infer({"x": np.ones((1, 3), np.float32)}, 1)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="queue of model 'm' is full"):
            await sched.infer({"x": np.ones((1, 3), np.float32)}, 1)
        results = await asyncio.gather(first, *queued)
        await sched.close()
        return results
    assert len(run(main())) == 3


def test_request_past_its_timeout_gets_an_error():
    async def main():
        sched, _, stats = make({"max_batch_size": 1, "dynamic_batching": {"default_timeout_microseconds": 50_000}},
                               delay_s=0.4)
        await sched.start()
        busy = asyncio.ensure_future(sched.infer({"x": np.ones((1, 3), np.float32)}, 1))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(RequestTimeoutError, match="timed out"):
            await sched.infer({"x": np.ones((1, 3), np.float32)}, 1)
        answered_after = time.perf_counter() - t0
        with pytest.raises(RequestTimeoutError):  # 0 is "not set" (Triton): the default applies
            await sched.infer({"x": np.ones((1, 3), np.float32)}, 1, timeout_us=0)
        await busy
        ok = await sched.infer({"x": np.ones((1, 3), np.float32)}, 1)
        await sched.close()
        return answered_after, ok, stats
    answered_after, ok, stats = run(main())
    assert answered_after < 0.3            # answered at its deadline, not after the busy batch
    assert ok["y"].shape == (1, 3)
    assert stats.execution_count == 2


@pytest.mark.parametrize("batching, server_default, requested, want", [
    (None, 0, None, 0), (None, 0, 500, 500), (None, 60_000_000, None, 60_000_000),
    (None, 60_000_000, 0, 60_000_000), (None, 60_000_000, 90_000_000, 90_000_000),  # server default: a fallback
    ({"default_timeout_microseconds": 1000}, 60_000_000, None, 1000),                # the model's wins
    ({"default_timeout_microseconds": 1000}, 0, 500, 500),                           # shortened
    ({"default_timeout_microseconds": 1000}, 0, 5000, 1000),                         # never lengthened
    ({"default_queue_policy": {"default_timeout_microseconds": 1000, "allow_timeout_override": False}},
     0, 500, 1000),
    ({"allow_timeout_override": False}, 7, 500, 7),
])
def test_the_timeout_of_a_request_follows_triton_s_queue_policy(batching, server_default, requested, want):
    cfg = {"max_batch_size": 4, **({"dynamic_batching": batching} if batching is not None else {})}
    engine = FakeEngine(double, [("x", "float32", ("batch", 3))], [("y", "float32", ("batch", 3))])
    config = parse_config(cfg, "m", "m/config.yaml")
    sched = Scheduler("m", "1", engine, resolve_signature(config, engine), config, ModelStats("m", "1"),
                      default_timeout_us=server_default)
    assert sched.timeout_for(requested) == want


@pytest.mark.parametrize("batching, says", [
    ({"timeout_action": "DELAY"}, "REJECT"), ({"allow_timeout_override": "yes"}, "true or false"),
    ({"default_queue_policy": 5}, "mapping"), ({"priority_levels": 2}, "priority levels"),
    ({"max_queue_size": 3, "default_queue_policy": {"max_queue_size": 4}}, "not both"),
])
def test_queue_policy_mistakes_are_named(batching, says):
    with pytest.raises(ModelConfigError, match=says):
        parse_config({"max_batch_size": 4, "dynamic_batching": batching}, "m", "m/config.yaml")


def test_engine_failure_answers_every_request_and_keeps_serving():
    def flaky(feeds):
        if (feeds["x"] < 0).any():
            raise RuntimeError("kernel exploded")
        return double(feeds)

    async def main():
        sched, _, _ = make({"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 50_000}},
                           fn=flaky)
        await sched.start()
        bad = await asyncio.gather(*(sched.infer({"x": np.full((1, 3), v, np.float32)}, 1) for v in (-1, 1)),
                                   return_exceptions=True)
        good = await sched.infer({"x": np.ones((1, 3), np.float32)}, 1)
        await sched.close()
        return bad, good
    bad, good = run(main())
    # the batch failed; run alone, the request with negative values fails (its data's fault: 400)
    # and its batchmate is answered
    assert isinstance(bad[0], BadRequestError) and "kernel exploded" in str(bad[0])
    np.testing.assert_array_equal(bad[1]["y"], np.full((1, 3), 2, np.float32))
    np.testing.assert_array_equal(good["y"], np.full((1, 3), 2, np.float32))


def test_a_failure_of_every_request_is_an_internal_error_with_an_id(caplog):
    def broken(feeds):
        raise RuntimeError("secret /opt/path exploded")

    async def main():
        sched, _, _ = make({"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 50_000}},
                           fn=broken)
        await sched.start()
        out = await asyncio.gather(*(sched.infer({"x": np.ones((1, 3), np.float32)}, 1) for _ in range(3)),
                                   return_exceptions=True)
        await sched.close()
        return out
    with caplog.at_level("ERROR", logger="ember.serve"):
        errors = run(main())
    for e in errors:
        assert isinstance(e, InferenceFailedError) and "secret" not in str(e)
        eid = re.search(r"internal error ([0-9a-f]{12})", str(e)).group(1)
        assert any(eid in r.getMessage() and "secret" in r.getMessage() for r in caplog.records)


def test_engine_input_error_becomes_bad_request():
    from ember.errors import InputError

    def picky(feeds):
        raise InputError("input 'x' is out of the profile")

    async def main():
        sched, _, _ = make({"max_batch_size": 2}, fn=picky)
        await sched.start()
        with pytest.raises(BadRequestError, match="out of the profile"):
            await sched.infer({"x": np.ones((1, 3), np.float32)}, 1)
        await sched.close()
    run(main())


def test_output_without_batch_dim_is_an_error():
    async def main():
        sched, _, _ = make({"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 20_000}},
                           fn=lambda f: {"y": np.zeros((5, 3), np.float32)})
        await sched.start()
        with pytest.raises(InferenceFailedError, match="dim 0 is not the batch size"):
            await sched.infer({"x": np.ones((2, 3), np.float32)}, 2)
        await sched.close()
    run(main())


def test_drain_answers_queued_requests_without_waiting_the_delay():
    async def main():
        sched, engine, _ = make({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 10_000_000}})
        await sched.start()
        pending = [asyncio.ensure_future(sched.infer({"x": np.ones((1, 3), np.float32)}, 1)) for _ in range(3)]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await sched.close()
        took = time.perf_counter() - t0
        results = await asyncio.gather(*pending)
        return took, results, engine
    took, results, engine = run(main())
    assert took < 2.0 and len(results) == 3
    assert engine.calls == [{"x": (3, 3)}] and engine.closed == 1


def test_batches_are_padded_up_to_a_bucket_and_buckets_are_warmed_up_first():
    async def main():
        sched, engine, stats = make({"max_batch_size": 8, "dynamic_batching": {
            "max_queue_delay_microseconds": 200_000, "batch_buckets": [4, 8]}}, dims=("batch", 3))
        await sched.start()
        warm = list(engine.calls)
        xs = [np.arange(3 * b, dtype=np.float32).reshape(b, 3) + 10 * i for i, b in enumerate([2, 3])]
        outs = await asyncio.gather(*(sched.infer({"x": x}, x.shape[0]) for x in xs))
        await sched.close()
        return warm, engine.calls[len(warm):], xs, outs, stats
    warm, calls, xs, outs, stats = run(main())
    assert warm == [{"x": (4, 3)}, {"x": (8, 3)}]  # one warm-up run per bucket, before serving
    assert calls == [{"x": (8, 3)}]  # 5 rows padded up to the bucket of 8
    for x, out in zip(xs, outs):
        np.testing.assert_array_equal(out["y"], x * 2)  # padded rows never reach a request
    assert (stats.execution_count, stats.inference_count) == (1, 5)  # warm-ups are not counted


def test_bucket_choice_and_defaults():
    from ember.serve.batcher import batch_buckets

    def cfg(device, **batching):
        return parse_config({"max_batch_size": 48, "device": device,
                             "dynamic_batching": {"preferred_batch_size": [24], **batching}}, "m", "m/config.yaml")
    assert batch_buckets(cfg("cuda"), 48) == (1, 2, 4, 8, 16, 24, 32, 48)
    assert batch_buckets(cfg("cpu"), 48) == ()  # no graphs to capture: no padding
    assert batch_buckets(cfg("cuda", batch_buckets="none"), 48) == ()
    assert batch_buckets(cfg("cpu", batch_buckets=[8, 16]), 48) == (8, 16)
    assert batch_buckets(parse_config({"max_batch_size": 8, "device": "cuda"}, "m", "m/c.yaml"), 8) == ()
    with pytest.raises(Exception, match="batch_buckets .*exceeds max_batch_size 48"):
        cfg("cuda", batch_buckets=[64])
    with pytest.raises(Exception, match="batch_buckets must be auto, none or a list"):
        cfg("cuda", batch_buckets=7)


def test_a_batch_larger_than_every_bucket_runs_unpadded():
    async def main():
        sched, engine, _ = make({"max_batch_size": 8, "dynamic_batching": {
            "max_queue_delay_microseconds": 100_000, "batch_buckets": [2]}}, dims=("batch", 3))
        await sched.start()
        x = np.ones((5, 3), np.float32)
        out = await sched.infer({"x": x}, 5)
        await sched.close()
        return engine.calls, out
    calls, out = run(main())
    assert calls == [{"x": (2, 3)}, {"x": (5, 3)}]
    np.testing.assert_array_equal(out["y"], 2 * np.ones((5, 3)))

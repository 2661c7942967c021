"""Large input tensors through the gRPC front ends' staging pools (``ember.serve.shm``): the pool's
allocator, the protobuf walk that finds raw_input_contents, and whole servers whose answers must be
exactly those of the engine, whether a call was staged, relayed whole (pool full) or gathered by
an instance process from the pools."""
from __future__ import annotations

import os
import struct
import threading

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2

from ember.serve import ServerOptions, ServerThread
from ember.serve.shm import REGIONS, RegionIndex, StagingPool, shm_dir, split_raw_inputs

from servekit import write_model

WIDTH = 8192  # 32 KiB of float32 per row: every request is staged


def wide_model() -> onnx.ModelProto:
    """y = x * 2 + 1 and s = sum(x, axis 1), x: float32[batch, WIDTH]."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", WIDTH])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", WIDTH])
    s = oh.make_tensor_value_info("s", onnx.TensorProto.FLOAT, ["batch", 1])
    nodes = [oh.make_node("Mul", ["x", "two"], ["m"]), oh.make_node("Add", ["m", "one"], ["y"]),
             oh.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1)]
    inits = [onh.from_array(np.array(2, np.float32), "two"), onh.from_array(np.array(1, np.float32), "one"),
             onh.from_array(np.array([1], np.int64), "axes")]
    graph = oh.make_graph(nodes, "wide", [x], [y, s], inits)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


CONFIGS = {
    "wide": "max_batch_size: 8\ndynamic_batching: {max_queue_delay_microseconds: 5000}\n",
    # an instance process that gathers the batch from the pools itself, padded to a bucket
    "wide_proc": ("max_batch_size: 8\ninstance_kind: process\ndynamic_batching:\n"
                  "  max_queue_delay_microseconds: 5000\n  batch_buckets: [4, 8]\n"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    root = tmp_path_factory.mktemp("staging-repo")
    for name, config in CONFIGS.items():
        write_model(root, name, wide_model(), config)
    # 1 MiB pools: 4 concurrent 8-row requests (256 KiB each) fill one, the rest are relayed whole
    with ServerThread(ServerOptions(root, http_port=0, grpc_port=0, metrics_port=0, cache_dir=cache_dir,
                                    log_level="warning", grpc_front_ends=2, grpc_staging_mb=1)) as srv:
        yield srv


def _expected(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x * 2 + 1, "s": x.sum(axis=1, keepdims=True)}


def _check(server, model: str, x: np.ndarray) -> None:
    c = tg.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    try:
        inp = tg.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        r = c.infer(model, [inp])
        want = _expected(x)
        np.testing.assert_array_equal(r.as_numpy("y"), want["y"])
        np.testing.assert_allclose(r.as_numpy("s"), want["s"], rtol=1e-4, atol=2e-3)  # fp32 sums of 8192
    finally:
        c.close()


def _concurrently(server, calls: list[tuple[str, np.ndarray]]) -> None:
    """Sends every ``(model, x)`` at once from its own thread; re-raises the first failure."""
    errors: list[BaseException] = []

    def one(model, x):
        try:
            _check(server, model, x)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


# ---- the pool ---------------------------------------------------------------------------------
def test_pool_allocates_first_fit_and_merges_freed_blocks():
    pool = StagingPool(4096)
    try:
        a, b, c = pool.alloc(100), pool.alloc(1000), pool.alloc(64)
        assert (a, b, c) == (0, 128, 1152) and pool.in_use == 128 + 1024 + 64
        assert pool.alloc(4096) is None  # no room left for that
        pool.free(b, 1000)
        assert pool.alloc(500) == 128  # first fit reuses the hole
        pool.free(128, 500)
        pool.free(a, 100)
        pool.free(c, 64)
        assert pool.in_use == 0 and pool._free == [[0, 4096]]  # merged back into one block
        assert pool.alloc(4096) == 0
        pool.free(0, 4096)
        with pytest.raises(ValueError, match="already free"):
            pool.free(64, 64)  # inside the free block
    finally:
        pool.close()
    assert not os.path.exists(pool.path)


def test_pool_blocks_are_shared_memory_another_mapping_sees():
    pool = StagingPool(1 << 16)
    index = RegionIndex()
    try:
        off = pool.alloc(12)
        pool.region.map[off:off + 12] = np.arange(3, dtype=np.float32).tobytes()
        theirs = index.open(pool.path, pool.size)
        arr = theirs.array("<f4", (3,), off)
        np.testing.assert_array_equal(arr, [0, 1, 2])
        assert index.locate(arr) == (pool.path, pool.size, off)
        assert index.locate(np.arange(3, dtype=np.float32)) is None  # ordinary memory
        assert index.locate(theirs.array("<f4", (4,), 0)[::2]) is None  # not contiguous
        del arr
        index.close(pool.path)
    finally:
        pool.close()


def test_only_ember_regions_in_the_shared_memory_folder_are_mapped(tmp_path):
    index = RegionIndex()
    other = tmp_path / "ember-x"
    other.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="not an ember serve shared-memory region"):
        index.open(str(other), 64)
    with pytest.raises(ValueError, match="not an ember serve"):
        index.open(os.path.join(shm_dir(), "not-ours"), 64)


# ---- the protobuf walk ------------------------------------------------------------------------
def _request(raw: list[bytes]) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="req-7")
    req.parameters["timeout"].int64_param = 5000
    req.parameters["note"].string_param = "x" * 300  # a length needing a two-byte varint
    for i, r in enumerate(raw):
        t = req.inputs.add(name=f"in{i}", datatype="UINT8", shape=[len(r)])
        t.parameters["p"].bool_param = True
    req.outputs.add(name="out")
    req.raw_input_contents.extend(raw)
    return req


@pytest.mark.parametrize("sizes", [[0], [1, 200_000], [70_000, 3, 0, 129]])
def test_split_finds_every_raw_input_and_keeps_the_rest_intact(sizes):
    rng = np.random.default_rng(len(sizes))
    raw = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    req = _request(raw)
    rest, found = split_raw_inputs(req.SerializeToString())
    assert [bytes(r) for r in found] == raw
    parsed = service_pb2.ModelInferRequest.FromString(rest)
    assert not parsed.raw_input_contents
    del req.raw_input_contents[:]
    assert parsed == req


def test_split_gives_up_on_malformed_messages():
    good = _request([b"abc" * 10_000]).SerializeToString()
    assert split_raw_inputs(good[:-5]) is None  # truncated inside the last field
    assert split_raw_inputs(b"\x3f") is None  # wire type 7 does not exist
    assert split_raw_inputs(b"\x08" + b"\xff" * 11) is None  # a varint that never ends
    assert split_raw_inputs(b"") == (b"", [])


# ---- a front end's end of the relay, in this process ----------------------------------------------
class _Wire:
    """The hub's socket as the front end sees it: frames written are kept, replies are fed."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data


def test_a_staged_block_is_freed_when_the_reply_comes_even_if_the_client_left():
    import asyncio

    from ember.serve.relay.frontend import _Upstream
    from ember.serve.relay.wire import HEADER, METHODS, STAGED_INFER, encode

    async def scenario() -> None:
        reader, wire = asyncio.StreamReader(), _Wire()
        upstream = _Upstream(reader, wire)  # type: ignore[arg-type]
        upstream.pool = StagingPool(1 << 20)
        replies = asyncio.create_task(upstream.read_replies())
        raw = np.arange(10_000, dtype=np.float32).tobytes()
        req = _request([raw, b"tiny"])
        call = asyncio.create_task(upstream.infer(METHODS.index("ModelInfer"), req.SerializeToString()))
        await asyncio.sleep(0)
        size, call_id, method = HEADER.unpack_from(wire.written)
        assert method == STAGED_INFER and upstream.pool.in_use >= len(raw)
        payload = bytes(wire.written[HEADER.size:HEADER.size + size])
        count, off0, n0, off1, n1 = struct.unpack_from("<HQQQQ", payload)
        assert count == 2 and upstream.pool.region.map[off0:off0 + n0] == raw
        assert upstream.pool.region.map[off1:off1 + n1] == b"tiny"
        rest = service_pb2.ModelInferRequest.FromString(payload[34:])
        assert rest.model_name == "m" and not rest.raw_input_contents
        call.cancel()  # the client went away; the server still reads the block until it answers
        await asyncio.sleep(0)
        assert upstream.pool.in_use > 0
        reader.feed_data(encode(call_id, 0, b"answer"))
        await asyncio.sleep(0.01)
        assert upstream.pool.in_use == 0 and upstream.pool._free == [[0, upstream.pool.size]]
        reader.feed_eof()
        await replies
        upstream.pool.close()

    asyncio.run(scenario())


# ---- whole servers ----------------------------------------------------------------------------
def test_large_requests_are_staged_and_exact(server):
    hub = server.server.front_ends.hub
    before = hub.staged_calls
    rng = np.random.default_rng(0)
    for rows in (1, 3, 8):
        _check(server, "wide", rng.standard_normal((rows, WIDTH)).astype(np.float32))
    assert hub.staged_calls - before == 3
    assert len(hub._connections) == 2 and all(c.pool is not None for c in hub._connections)


def test_an_instance_process_gathers_staged_batches_itself(server):
    inst = server.core.repository.get("wide_proc").scheduler._instances[0]
    before = inst.staged_batches
    rng = np.random.default_rng(1)
    _concurrently(server, [("wide_proc", rng.standard_normal((r, WIDTH)).astype(np.float32))
                           for r in (1, 2, 3, 1, 2)])
    assert inst.staged_batches > before


def test_a_full_pool_relays_whole_messages_and_every_answer_is_right(server):
    hub = server.server.front_ends.hub
    before = hub.staged_calls
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((8, WIDTH)).astype(np.float32) for _ in range(24)]  # 6 MiB in flight
    _concurrently(server, [(("wide", "wide_proc")[i % 2], x) for i, x in enumerate(xs)])
    assert hub.staged_calls - before < len(xs)  # some found the pools full
    # the front ends' pools are free again: a new call is staged
    before = hub.staged_calls
    _check(server, "wide", xs[0])
    assert hub.staged_calls == before + 1


def test_pools_are_mapped_in_the_server_and_removed_with_it(tmp_path, cache_dir):
    write_model(tmp_path, "wide", wide_model(), CONFIGS["wide"])
    with ServerThread(ServerOptions(tmp_path, http_port=0, grpc_port=0, metrics_port=0, cache_dir=cache_dir,
                                    log_level="warning", grpc_front_ends=1, grpc_staging_mb=2)) as srv:
        conn = next(iter(srv.server.front_ends.hub._connections))
        path = conn.pool.path
        assert os.path.exists(path) and conn.pool.size == 2 << 20
        _check(srv, "wide", np.ones((2, WIDTH), np.float32))
    assert not os.path.exists(path)
    assert REGIONS.locate(np.ones(3)) is None


@pytest.mark.cuda
def test_a_cuda_instance_copies_staged_requests_to_the_gpu_from_the_pools(tmp_path, cache_dir):
    """The instance process gathers each request's rows from the (page-locked) pools straight into
    the engine's input buffer on the GPU, padding to the bucket; answers exact in fp32."""
    write_model(tmp_path, "wide_gpu", wide_model(),
                "max_batch_size: 8\ndevice: cuda\ndynamic_batching:\n  max_queue_delay_microseconds: 5000\n"
                "  batch_buckets: [4, 8]\n")
    with ServerThread(ServerOptions(tmp_path, http_port=0, grpc_port=0, metrics_port=0, cache_dir=cache_dir,
                                    log_level="warning", grpc_front_ends=2, grpc_staging_mb=4)) as srv:
        sched = srv.core.repository.get("wide_gpu").scheduler
        assert sched.instance_kind == "process"
        rng = np.random.default_rng(3)
        xs = [rng.standard_normal((r, WIDTH)).astype(np.float32) for r in (1, 3, 2, 1, 4, 2, 1, 1)]
        for _ in range(3):
            _concurrently(srv, [("wide_gpu", x) for x in xs])
        assert sched._instances[0].staged_batches > 0
        assert srv.server.front_ends.hub.staged_calls == 3 * len(xs)


def test_a_front_end_without_room_for_its_pool_still_serves_and_is_reported(tmp_path, cache_dir, caplog):
    write_model(tmp_path, "wide", wide_model(), CONFIGS["wide"])
    with caplog.at_level("WARNING", logger="ember.serve"):
        with ServerThread(ServerOptions(tmp_path, http_port=0, grpc_port=0, metrics_port=0, cache_dir=cache_dir,
                                        log_level="warning", grpc_front_ends=1,
                                        grpc_staging_mb=1 << 24)) as srv:  # 16 TiB: no /dev/shm has it
            _check(srv, "wide", np.ones((3, WIDTH), np.float32))
            assert srv.server.front_ends.hub.staged_calls == 0
    assert any("has no staging pool" in r.getMessage() and "cannot reserve" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("case", ["raw size", "raw count", "wrong shape"])
def test_bad_staged_requests_get_the_same_errors_and_the_server_goes_on(server, case):
    """Staged calls are checked exactly as whole ones: the error names the input, then a good
    request still succeeds."""
    import grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                               request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                               response_deserializer=service_pb2.ModelInferResponse.FromString)
    req = service_pb2.ModelInferRequest(model_name="wide")
    rows = 2
    req.inputs.add(name="x", datatype="FP32", shape=[rows, WIDTH if case != "wrong shape" else WIDTH + 1])
    size = rows * (WIDTH + (case == "wrong shape")) * 4 - (8 if case == "raw size" else 0)
    req.raw_input_contents.append(b"\0" * size)
    if case == "raw count":
        req.raw_input_contents.append(b"\0" * size)
    hub = server.server.front_ends.hub
    before = hub.staged_calls
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub(req)
    finally:
        channel.close()
    words = {"raw size": f"input 'x' has {size} raw bytes", "raw count": "1 inputs but 2 raw_input_contents",
             "wrong shape": "input 'x'"}[case]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in info.value.details()
    assert hub.staged_calls == before + 1  # it did travel through the pool
    _check(server, "wide", np.ones((1, WIDTH), np.float32))

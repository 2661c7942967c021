"""Chains in oneDNN's blocked layout (``ember.backends.cpu.chains.blocked``): the activations between
a float chain's layers in nChw16c (nChw8c without AVX-512), the chain's input read as it is (an
NCHW image) or reordered once, the last output reordered back to channels-last; the build times
both layouts per chain and records the faster (``CPUProgram.tune``), later programs follow the
record, ``EMBER_CHAIN_LAYOUT`` forces one. Every form computes what the channels-last chain and
ONNX Runtime compute."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from cpukit import assert_runs_like_ort  # tests/backends/cpu/cpukit.py
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.cpu.chains import LAYOUT_ENV, forced_layout
from ember.backends.cpu.features import cpu_features
from ember.backends.cpu.timing import SWITCH_MARGIN
from ember.backends.timing import fastest
from ember.errors import EmberError
from ember.plan.config import Precision
from ember.tools.runners import max_rel_error

pytestmark = pytest.mark.usefixtures("fresh_native")


def _cl(t: Any) -> Any:
    import torch

    return t.contiguous(memory_format=torch.channels_last)


def test_a_blocked_chain_computes_what_pytorch_computes_padded_channels_and_all(ext: Any):
    """24 channels (padded to 32 in nChw16c), a 3-channel NCHW image read as it is by the first
    step, a second step reading the chain's input too (a blocked copy of it, made once), the
    chain's input added as a residual, a residual added in place, and the output back
    channels-last. Buffers of the thread's pool that an earlier chain left full of NaN must not
    leak into the padded channels."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(24, 3, 3, 3, generator=g) * 0.3
    w1 = torch.randn(24, 3, 1, 1, generator=g) * 0.3
    w2 = torch.randn(24, 1, 3, 3, generator=g) * 0.3
    w3 = torch.randn(24, 24, 1, 1, generator=g) * 0.2
    dims = [2, 3, 40, 40]
    # step 0: a = relu(c0(x)) reading the NCHW image; step 1: b = c1(x) (x reordered to blocked);
    # step 2: c = clip(dw(a) + b) [b read last: in place]; step 3: d = relu(c3(c) + a) [in place]
    c0 = ext.Layer(w0, None, [1, 1], [1, 1], 1, "relu").prepare(dims, [1, 1], [1, 1], "nchw", "blocked")
    c1 = ext.Layer(w1, None, [1, 1], [1, 1], 1).prepare(dims, [0, 0], [0, 0], "blocked", "blocked")
    c2 = ext.Layer(w2, None, [1, 1], [1, 1], 24, "clip", 0.0, 6.0, residual=True).prepare(
        [2, 24, 40, 40], [1, 1], [1, 1], "blocked", "blocked")
    c3 = ext.Layer(w3, None, [1, 1], [1, 1], 1, "relu", residual=True).prepare(
        [2, 24, 40, 40], [0, 0], [0, 0], "blocked", "blocked")
    assert c0.blocked_output and c3.blocked_output
    plain = ext.Layer(w3, None, [1, 1], [1, 1], 1).prepare([2, 24, 40, 40], [0, 0], [0, 0])
    assert not plain.blocked_output
    poison = _cl(torch.full((2, 24, 40, 40), float("nan")))
    for _ in range(2):  # the pool's buffers now hold NaN
        assert torch.isnan(ext.run_chain([plain, plain], poison, [-1, 0], [-2, -2], [-2, -2], [1, 1],
                                         [False, False], [0, 0])).all()
    x = torch.randn(*dims, generator=g)  # contiguous NCHW
    before = x.clone()
    y = ext.run_chain([c0, c1, c2, c3], x, [-1, -1, 0, 2], [-2, -2, 1, 0], [-2] * 4, [3, 2, 2, 3],
                      [True, False, True, True], [0] * 4)
    a = F.conv2d(x, w0, padding=1).relu()
    b = F.conv2d(x, w1)
    c = (F.conv2d(a, w2, padding=1, groups=24) + b).clamp(0.0, 6.0)
    d = (F.conv2d(c, w3) + a).relu()
    assert tuple(y.shape) == (2, 24, 40, 40) and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, d, rtol=1e-4, atol=1e-4)
    assert torch.equal(x, before)  # the chain's input is never written


def test_a_blocked_step_adds_the_chains_input_as_its_residual(ext: Any):
    """A residual that is the chain's input (channels-last) is read as a blocked copy of it."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    w1, w2 = (torch.randn(16, 16, 3, 3, generator=g) * 0.2 for _ in range(2))
    a = ext.Layer(w1, None, [1, 1], [1, 1], 1, "relu").prepare([1, 16, 9, 9], [1, 1], [1, 1], "blocked", "blocked")
    b = ext.Layer(w2, None, [1, 1], [1, 1], 1, "relu", residual=True).prepare([1, 16, 9, 9], [1, 1], [1, 1],
                                                                              "blocked", "blocked")
    x = _cl(torch.randn(1, 16, 9, 9, generator=g))
    y = ext.run_chain([a, b], x, [-1, 0], [-2, -1], [-2, -2], [1, 1], [True, True], [0, 0])
    want = (F.conv2d(F.conv2d(x, w1, padding=1).relu(), w2, padding=1) + x).relu()
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


def test_layouts_are_checked_with_errors_that_say_what_is_wrong(ext: Any):
    import torch

    w = torch.randn(8, 8, 1, 1)
    layer = ext.Layer(w, None, [1, 1], [1, 1], 1)
    with pytest.raises(ValueError, match="unknown activation layout 'nc16'"):
        layer.prepare([1, 8, 4, 4], [0, 0], [0, 0], "nc16", "blocked")
    with pytest.raises(ValueError, match="writes nhwc or blocked, not nchw"):
        layer.prepare([1, 8, 4, 4], [0, 0], [0, 0], "nhwc", "nchw")
    q = ext.Layer(torch.ones(8, 8, 1, 1, dtype=torch.int8), None, [1, 1], [1, 1], 1, src_dtype="u8",
                  dst_dtype="u8", w_scales=torch.ones(8))
    with pytest.raises(ValueError, match="INT8 layer reads and writes nhwc"):
        q.prepare([1, 8, 4, 4], [0, 0], [0, 0], "blocked", "blocked")
    conv = layer.prepare([1, 8, 4, 4], [0, 0], [0, 0], "blocked", "blocked")
    with pytest.raises(ValueError, match=r"input does not fit the primitive's blocked \(flat buffer\) layout"):
        conv.run(torch.zeros(10), torch.zeros(1024), None, False)  # 40 bytes, the layout needs 512


def test_a_weight_copy_goes_when_no_primitive_uses_it(ext: Any):
    import gc

    import torch

    w = torch.randn(32, 32, 3, 3)
    layer = ext.Layer(w, None, [1, 1], [1, 1], 1)
    nhwc = layer.prepare([1, 32, 14, 14], [1, 1], [1, 1])
    blocked = layer.prepare([1, 32, 14, 14], [1, 1], [1, 1], "blocked", "blocked")
    if layer.weight_copies == 1:
        pytest.skip("oneDNN wants one weight layout for both primitives on this CPU: nothing to release")
    layer.release_unused()
    assert layer.weight_copies == 2  # both still in use
    del blocked
    gc.collect()
    layer.release_unused()
    assert layer.weight_copies == 1
    x = _cl(torch.randn(1, 32, 14, 14))
    out = _cl(torch.empty(1, 32, 14, 14))
    nhwc.run(x, out)  # the kept copy is the one the channels-last primitive reads
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)


def _model(channels: int = 24) -> onnx.ModelProto:
    """A MobileNet-like block on an RGB image: conv+relu, 1x1 expand+clip, depthwise+clip, 1x1
    project, + the first conv's output, then 3x3+relu; `channels` not a multiple of 16 pads."""
    rng = np.random.default_rng(0)
    c, e = channels, channels * 4

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=e),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
             helper.make_node("Add", ["c3", "r0"], ["s3"]),
             helper.make_node("Conv", ["s3", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c4"], ["y"])]
    inits = [init("w0", c, 3, 3, 3), init("b0", c), init("w1", e, c, 1, 1), init("b1", e),
             init("w2", e, 1, 3, 3), init("b2", e), init("w3", c, e, 1, 1), init("b3", c),
             init("w4", c, c, 3, 3), init("b4", c),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    g = helper.make_graph(nodes, "mbv2-block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 16, 16])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _build(model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch, layout: str, **config: Any) -> Any:
    monkeypatch.setenv(LAYOUT_ENV, layout)
    return ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu", **config), progress=False)


def _weight_copies(engine: Any) -> list[int]:
    """How many packed weights each chained layer's extension ``Layer`` holds."""
    links = [getattr(s.kernel, "chain_link", None) for s in engine.compile().steps]
    return [link.layer.weight_copies for link in links if link is not None]


def _chain_names(engine: Any) -> list[str]:
    steps = engine.compile().chained
    return [s.name for s in steps or () if s.kind == "Chain"]


def test_a_forced_blocked_engine_computes_what_the_channels_last_one_and_onnx_runtime_compute(
        ext: Any, monkeypatch: pytest.MonkeyPatch):
    """NaN and infinity runs go layer by layer on channels-last primitives the blocked chain let
    go of (made again on that run); the finite runs around them use the chain."""
    model = _model()
    blocked = _build(model, monkeypatch, "blocked")
    nhwc = _build(model, monkeypatch, "nhwc")
    assert "chain_layouts" not in blocked.plan.build_info  # a forced layout is not timed
    assert [n.endswith("(5 layers chained, blocked)") for n in _chain_names(blocked)] == [True]
    assert [n.endswith("(5 layers chained)") for n in _chain_names(nhwc)] == [True]
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    bad = x.copy()
    bad[0, 1, 5, 5], bad[1, 2, 9, 9] = np.nan, np.inf
    with blocked.create_context() as c1, nhwc.create_context() as c2:
        assert_runs_like_ort(model, [c1, c2], x, bad)


@pytest.mark.skipif(not cpu_features().native(Precision.BF16), reason="no native bf16 on this CPU: builds keep fp32")
def test_a_blocked_bf16_chain_computes_what_the_channels_last_one_computes(ext: Any, monkeypatch: pytest.MonkeyPatch):
    model = _model(channels=32)
    blocked = _build(model, monkeypatch, "blocked", precision="bf16")
    nhwc = _build(model, monkeypatch, "nhwc", precision="bf16")
    assert [n.endswith("blocked)") for n in _chain_names(blocked)] == [True]
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with blocked.create_context() as c1, nhwc.create_context() as c2:
        got, chl = c1.infer({"x": x})["y"], c2.infer({"x": x})["y"]
    assert got.dtype == np.float32
    assert max_rel_error(got, chl) < 2e-2  # bf16 roundings in another order


def test_the_build_times_both_layouts_records_the_faster_and_a_loaded_engine_follows_it(
        ext: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any):
    model = _model()
    engine = _build(model, monkeypatch, "auto")
    record = engine.plan.build_info["chain_layouts"]
    (first, entry), = record.items()  # one chain, named by its first layer
    assert first == engine.plan.layers[0].name
    assert set(entry["ms"]) == {"nhwc", "blocked"} and all(v > 0 for v in entry["ms"].values())
    assert list(entry["ms"])[0] == "nhwc"  # the default: a near tie keeps it (the CPU's switch margin)
    assert entry["layout"] == fastest(list(entry["ms"]), entry["ms"], SWITCH_MARGIN)
    assert _chain_names(engine)[0].endswith("blocked)") == (entry["layout"] == "blocked")
    assert f"chain layouts (timed at build): {first}.. {entry['layout']} (nhwc " in engine.summary()
    # whichever layout won, each layer keeps one packed weight: the loser's copies were released
    assert _weight_copies(engine) == [1] * 5
    # a saved engine follows its record, whichever it is
    for layout in ("blocked", "nhwc"):
        engine.plan.build_info["chain_layouts"] = {first: {"layout": layout, "ms": entry["ms"]}}
        engine.save(tmp_path / f"{layout}.ember")
        loaded = ember.load(str(tmp_path / f"{layout}.ember"))
        assert _chain_names(loaded)[0].endswith("blocked)") == (layout == "blocked")
        assert _weight_copies(loaded) == [1] * 5
    # (a record of "blocked" loaded on a CPU of another vector width: test_avx2_blocked_chains.py)
    # without a record (an engine from before the timing), channels-last
    del engine.plan.build_info["chain_layouts"]
    engine.save(tmp_path / "old.ember")
    assert _chain_names(ember.load(str(tmp_path / "old.ember")))[0].endswith("(5 layers chained)")
    # tuning off: nothing timed, nothing recorded
    assert "chain_layouts" not in _build(model, monkeypatch, "auto", tactic_tuning=False).plan.build_info


def test_a_bad_layout_setting_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(LAYOUT_ENV, "nchw16")
    with pytest.raises(EmberError, match=r"EMBER_CHAIN_LAYOUT='nchw16': use one of auto, nhwc, blocked"):
        forced_layout()
    monkeypatch.setenv(LAYOUT_ENV, " Blocked ")
    assert forced_layout() == "blocked"
    monkeypatch.delenv(LAYOUT_ENV)
    assert forced_layout() is None


def test_a_blocked_chain_runs_from_several_threads_at_once(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """One blocked engine, one context per thread: each thread's pool and reorders are its own,
    so concurrent runs give each input its own answer."""
    from concurrent.futures import ThreadPoolExecutor

    engine = _build(_model(), monkeypatch, "blocked")
    assert _chain_names(engine)[0].endswith("blocked)")
    feeds = [np.random.default_rng(10 + i).standard_normal((2, 3, 32, 32)).astype(np.float32) for i in range(4)]
    with engine.create_context() as c:
        want = [c.infer({"x": f})["y"] for f in feeds]

    def work(i: int) -> bool:
        with engine.create_context() as ctx:
            return all(np.array_equal(ctx.infer({"x": feeds[i]})["y"], want[i]) for _ in range(5))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))


def test_a_blocked_layout_that_fails_to_run_at_build_keeps_the_chain_channels_last(
        ext: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    """The build's timing of a chain's layouts raising (a primitive that cannot run here) is no
    build failure: the chain stays channels-last, nothing is recorded for it, the log says why."""
    import ember.backends.cpu.chains as chains

    def broken(*args: Any, **kwargs: Any) -> dict:
        raise RuntimeError("could not execute a primitive")

    monkeypatch.setattr(chains, "time_layouts", broken)
    with caplog.at_level("WARNING", logger="ember.build"):
        engine = _build(_model(), monkeypatch, "auto")
    assert "chain_layouts" not in engine.plan.build_info
    assert _chain_names(engine)[0].endswith("(5 layers chained)")
    assert _weight_copies(engine) == [1] * 5  # the blocked primitives' weights went with them
    assert "a blocked or paired form failed (could not execute a primitive); it stays channels-last" in caplog.text


def test_variants_are_timed_with_their_weights_warm(monkeypatch: pytest.MonkeyPatch):
    """``time_layouts`` runs a short chain a few times back to back in each turn and times the
    last run, as an engine runs again and again. Timed one run each in turns, every variant ran
    with its weights evicted by the other's copies, and the one that is faster warm could lose
    (MobileNetV2 b1 on the AVX2 EPYC: the blocked chain 12% faster warm, even cold)."""
    import time

    from ember.backends.cpu import chains

    last: list[str] = []
    cost = {"warm_fast": (0.012, 0.001), "steady": (0.003, 0.003)}  # (cold, warm) seconds a run

    def fake_run(ext: Any, chain: Any, x: Any) -> None:
        cold, warm = cost[chain]
        time.sleep(warm if last and last[-1] == chain else cold)
        last.append(chain)

    monkeypatch.setattr(chains, "run_chain", fake_run)
    ms = chains.time_layouts({"steady": "steady", "warm_fast": "warm_fast"}, None, None)  # type: ignore[dict-item]
    assert ms["warm_fast"] < ms["steady"], ms
    assert last.count("warm_fast") >= 1 + 3 * chains.WARM_RUNS  # a warm-up, then WARM_RUNS a turn
    monkeypatch.setattr(chains, "WARM_BELOW_S", 0.0)  # a long chain: one run a turn, as before
    last.clear()
    ms = chains.time_layouts({"steady": "steady", "warm_fast": "warm_fast"}, None, None)  # type: ignore[dict-item]
    assert ms["warm_fast"] > ms["steady"], ms

"""Tactic selection with the CUDA tactic timer (CPU-side logic, fake clock): the fastest tactic
that meets accuracy wins, failing or inaccurate tactics never do, and the timing cache is keyed
by device so a warm cache skips timing and another device's cache is ignored with a warning.
A producer of a planned in-place Concat input is timed writing into its slice, or with the copy
into it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ember.backends.base import CompileContext
from ember.backends.cuda.tuning import (
    INTO_ARENA,
    INTO_SLICE,
    PLUS_ARENA_COPY,
    PLUS_COPY,
    CudaTacticTimer,
)
from ember.backends.tensors import max_relative_error
from ember.builder.tactics import TacticSelector, TimingCache, layer_signature
from ember.ir import OpType
from ember.ops.attrs import SoftmaxAttrs
from ember.plan.config import BuildConfig, Layout, Precision
from ember.plan.records import LayoutPlan, Records

from cuda_graphs import one_node

FAKE_MS = {"reference": 3.0, "fast_wrong": 0.5, "good": 1.0, "raises": 0.1, "slow": 9.0}


class FakeBackend:
    """Softmax with tactics of known speed; one is fast but wrong, one cannot run."""

    name = "fake"

    def __init__(self):
        self.compiled: list[str] = []

    def tactics(self, node, graph, records=None):
        return ["reference", "fast_wrong", "good", "raises", "slow"]

    def compile_node(self, node, ctx: CompileContext):
        self.compiled.append(ctx.tactic)
        if ctx.tactic == "raises":
            raise RuntimeError("this tactic needs a GPU feature")
        if ctx.tactic == "fast_wrong":
            return lambda ins: [torch.softmax(ins[0], -1) * 1.1]
        return lambda ins: [torch.softmax(ins[0], -1)]


def _measure_by_tactic(backend):
    return lambda fn: FAKE_MS[backend.compiled[-1]]


def _node():
    g = one_node(OpType.SOFTMAX, SoftmaxAttrs(-1), [("x", (4, 33))])
    return g.nodes[0], g


def test_fastest_accurate_tactic_wins():
    node, g = _node()
    backend = FakeBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), Records(), measure=_measure_by_tactic(backend))
    choice = TacticSelector(timer).select(node, g, backend.tactics(node, g), "fp16")
    assert choice.tactic == "good"
    assert math.isinf(choice.timings["fast_wrong"]) and math.isinf(choice.timings["raises"])
    assert "relative error" in timer.rejected[(node.name, "fast_wrong")]
    assert "GPU feature" in timer.rejected[(node.name, "raises")]


def test_warm_cache_skips_timing_and_other_device_is_ignored(tmp_path):
    node, g = _node()
    path = tmp_path / "timing.json"
    backend = FakeBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), Records(), measure=_measure_by_tactic(backend))
    cache = TimingCache.open(path, "cuda:H100:sm9.0")
    assert TacticSelector(timer, cache).select(node, g, backend.tactics(node, g), "fp16").tactic == "good"
    cache.save()
    data = json.loads(path.read_text())
    assert data["device_key"] == "cuda:H100:sm9.0"
    assert layer_signature(node, g, Records(), Precision("fp16")) in data["entries"]

    fresh = FakeBackend()
    warm = TimingCache.open(path, "cuda:H100:sm9.0")
    timer2 = CudaTacticTimer(fresh, {}, torch.device("cpu"), measure=_measure_by_tactic(fresh))
    choice = TacticSelector(timer2, warm).select(node, g, fresh.tactics(node, g), "fp16")
    assert choice.cached and choice.tactic == "good" and fresh.compiled == []

    with pytest.warns(UserWarning, match="another device"):
        other = TimingCache.open(path, "cuda:A100:sm8.0")
    assert other.entries == {}


def test_signature_depends_on_precision_and_shape():
    node, g = _node()
    g2 = one_node(OpType.SOFTMAX, SoftmaxAttrs(-1), [("x", (8, 33))])
    sig = layer_signature(node, g, Records(), Precision("fp16"))
    assert sig != layer_signature(node, g, Records(), Precision("fp32"))
    assert sig != layer_signature(g2.nodes[0], g2, Records(), Precision("fp16"))


def test_relative_error_flags_nan_and_shape_mismatch():
    a = torch.ones(3)
    assert max_relative_error(a, a) == 0.0
    assert math.isinf(max_relative_error(torch.tensor([1.0, float("nan"), 1.0]), a))
    assert math.isinf(max_relative_error(torch.ones(4), a))
    assert max_relative_error(torch.from_numpy(np.array([1.0, 1.0, 1.01])), a) == pytest.approx(0.01)
    nan = torch.tensor([1.0, float("nan")])
    assert max_relative_error(nan, nan) == 0.0  # NaN where the reference has NaN is right


# ---- producers of a planned in-place Concat input: timed into the slice, or + the copy --------
COPY_MS = 0.5
SLICE_MS = {"reference": 1.0, "plain_fast": 0.8, "writer": 1.1, "writer_declines": 0.7, "writer_wrong": 0.1}


class SliceBackend:
    """Relu with tactics of known speed: ``plain_fast`` has no ``write_into``; ``writer`` writes
    into any view; ``writer_declines`` has one that accepts no view; ``writer_wrong`` writes
    wrong values into the view."""

    name = "fake"
    TACTICS = ["reference", "plain_fast", "writer", "writer_declines", "writer_wrong"]

    def __init__(self):
        self.compiled: list[str] = []
        self.writes = 0

    def tactics(self, node, graph, records=None):
        return list(self.TACTICS)

    def compile_node(self, node, ctx: CompileContext):
        from ember.backends.base import WriteInto, with_write_into

        tactic = ctx.tactic
        self.compiled.append(tactic)

        def run(ins):
            return [torch.clamp(ins[0], min=0)]

        def write(ins, out):
            self.writes += 1
            torch.clamp(ins[0], min=0 if tactic != "writer_wrong" else 1, out=out)
            return True

        if tactic in ("writer", "writer_wrong"):
            return with_write_into(run, WriteInto(write))
        if tactic == "writer_declines":
            return with_write_into(run, WriteInto(write, lambda out: False))
        return run


class _CountCopies(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.copy_.default:
            self.copies += 1
        return func(*args, **(kwargs or {}))


def _slice_measure(backend):
    """Fake clock: the tactic's own time plus COPY_MS per copy the timed call really makes."""

    def measure(fn):
        with _CountCopies() as mode:
            fn()
        return SLICE_MS[backend.compiled[-1]] + COPY_MS * mode.copies

    return measure


def _concat_graph(planned: bool = True):
    """p = relu(x), q = relu(y), out = concat(p, q) on channels (channels-last buffer), with the
    concat-elimination plan recorded as the pass records it."""
    from ember.ir import DType, Graph, Node, TensorType
    from ember.ops.attrs import AxisAttrs
    from ember.ops.infer import infer_graph
    from ember.passes.concat import plan_concat_slices
    from ember.passes.manager import PassContext

    nodes = [Node("p", OpType.RELU, ("x",), ("a",)), Node("q", OpType.RELU, ("y",), ("b",)),
             Node("cat", OpType.CONCAT, ("a", "b"), ("out",), AxisAttrs(1))]
    types = {"x": TensorType(DType.FLOAT32, (2, 3, 4, 5)), "y": TensorType(DType.FLOAT32, (2, 5, 4, 5))}
    g = infer_graph(Graph("cat", nodes, ["x", "y"], ["out"], types, {}, opset=17))
    layout = LayoutPlan(Layout.NHWC, frozenset({"x", "y", "a", "b", "out"}))
    ctx = PassContext(records=Records(layout=layout))
    if planned:
        g = plan_concat_slices(g, ctx)
        assert ctx.records.concat.concats["cat"].slices[1].in_place
    return g, ctx.records


def test_concat_producer_is_timed_into_its_slice_or_with_the_copy():
    g, records = _concat_graph()
    node = g.nodes[1]  # q: writes channels 3..8 of the 8-channel channels-last buffer (strided)
    backend = SliceBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), records, measure=_slice_measure(backend))
    choice = TacticSelector(timer).select(node, g, backend.tactics(node, g), "fp32")
    t = choice.timings
    assert t["plain_fast"] == pytest.approx(0.8 + COPY_MS)  # its copy into the slice is counted
    assert t["writer"] == pytest.approx(1.1)                 # writes the view: no copy
    assert t["writer_declines"] == pytest.approx(0.7 + COPY_MS)
    assert math.isinf(t["writer_wrong"]), "the values written into the slice are checked too"
    assert choice.tactic == "writer"
    assert timer.modes[("q", "writer")] == INTO_SLICE
    assert timer.modes[("q", "plain_fast")] == PLUS_COPY
    assert timer.modes[("q", "writer_declines")] == PLUS_COPY
    assert backend.writes > 0


def test_slice_view_is_the_programs_view():
    """The timed view has the strides of the slice the program will hand the producer."""
    from ember.backends.concat_exec import planned_slice

    g, records = _concat_graph()
    seen = []

    class Spy(SliceBackend):
        def compile_node(self, node, ctx):
            from ember.backends.base import WriteInto, with_write_into

            def write(ins, out):
                seen.append((tuple(out.shape), out.stride(), out.dtype))
                out.copy_(torch.clamp(ins[0], min=0))
                return True

            self.compiled.append(ctx.tactic)
            return with_write_into(lambda ins: [torch.clamp(ins[0], min=0)], WriteInto(write))

    backend = Spy()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), records, measure=lambda fn: 1.0)
    timer(g.nodes[1], g, "writer", "fp16")
    buf = torch.empty(2, 8, 4, 5, memory_format=torch.channels_last)
    # fp16 layers (and their Concat, whose precision the graph records) get an fp16 buffer
    assert seen[0] == ((2, 5, 4, 5), buf.narrow(1, 3, 5).stride(), torch.float16)
    ps = planned_slice(g, records, "b")
    assert (ps.axis, ps.start, ps.length, ps.buffer.channels_last) == (1, 3, 5, True)
    assert planned_slice(g, records, "x") is None and planned_slice(g, records, "out") is None


def test_layer_outside_a_concat_is_timed_into_its_arena_place():
    """In the arena every output has a place: a tactic that writes there saves the copy the
    others pay, exactly as for a Concat slice (and its written values are checked too)."""
    g, records = _concat_graph(planned=False)
    node = g.nodes[1]
    backend = SliceBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), records, measure=_slice_measure(backend))
    choice = TacticSelector(timer).select(node, g, backend.tactics(node, g), "fp32")
    t = choice.timings
    assert t["plain_fast"] == pytest.approx(0.8 + COPY_MS)
    assert t["writer"] == pytest.approx(1.1)
    assert math.isinf(t["writer_wrong"])
    assert choice.tactic == "writer"
    assert timer.modes[("q", "writer")] == INTO_ARENA
    assert timer.modes[("q", "plain_fast")] == PLUS_ARENA_COPY


def test_layer_outside_a_concat_is_timed_alone_without_the_arena():
    g, records = _concat_graph(planned=False)
    node = g.nodes[1]
    backend = SliceBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), records, measure=_slice_measure(backend), arena=False)
    choice = TacticSelector(timer).select(node, g, backend.tactics(node, g), "fp32")
    assert choice.timings == pytest.approx(SLICE_MS)  # no copy counted, no write_into used
    assert choice.tactic == "writer_wrong"  # its plain kernel is right; its wrong write is never run
    assert not timer.modes and backend.writes == 0


def test_a_view_output_takes_no_arena_place():
    g, records = _concat_graph(planned=False)

    class Viewer(SliceBackend):
        def compile_node(self, node, ctx):
            self.compiled.append(ctx.tactic)
            return lambda ins: [ins[0].view(ins[0].shape)]

    timer = CudaTacticTimer(Viewer(), {}, torch.device("cpu"), records, measure=lambda fn: 1.0)
    assert timer(g.nodes[1], g, "reference", "fp32") == 1.0
    assert not timer.modes  # timed alone: neither into a place nor with a copy


def test_signature_tells_a_slice_producer_apart():
    (planned, recs), (alone, none) = _concat_graph(), _concat_graph(planned=False)
    fp16 = Precision.FP16
    assert layer_signature(planned.nodes[1], planned, recs, fp16) != layer_signature(alone.nodes[1], alone, none, fp16)
    assert (layer_signature(planned.nodes[0], planned, recs, fp16)
            != layer_signature(planned.nodes[1], planned, recs, fp16))


# ---- the accuracy check and what every compile is given ---------------------------------------
class NanBackend(FakeBackend):
    """``nan_where_ref_is_finite`` puts a NaN where the reference has a number."""

    def tactics(self, node, graph, records=None):
        return ["reference", "nan_where_ref_is_finite"]

    def compile_node(self, node, ctx: CompileContext):
        self.compiled.append(ctx.tactic)

        def run(ins):
            y = torch.softmax(ins[0], -1)
            if ctx.tactic == "nan_where_ref_is_finite":
                y = y.clone()
                y[0, 0] = float("nan")
            return [y]

        return run


def test_accuracy_is_checked_with_the_one_error_measure(monkeypatch):
    """The timer's check is ``ember.backends.tensors.max_relative_error`` (shared with the
    builder's accuracy search and the tools): a NaN where the reference has a number is an
    infinite error, not a NaN that compares below every tolerance."""
    import ember.backends.cuda.tuning as tuning
    from ember.backends import tensors

    assert tuning.max_relative_error is tensors.max_relative_error
    calls = []

    def spy(ours, ref):
        calls.append((ours.shape, ref.shape))
        return tensors.max_relative_error(ours, ref)

    monkeypatch.setattr(tuning, "max_relative_error", spy)
    node, g = _node()
    backend = NanBackend()
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), Records(), measure=lambda fn: 1.0)
    assert math.isinf(timer(node, g, "nan_where_ref_is_finite", Precision.FP32))
    assert "relative error inf" in timer.rejected[(node.name, "nan_where_ref_is_finite")]
    assert timer(node, g, "reference", Precision.FP32) == 1.0
    assert calls and all(a == b == (4, 33) for a, b in calls)


def test_every_compile_gets_the_records_and_config_and_the_reference_is_the_planned_default():
    node, g = _node()
    records = Records(layout=LayoutPlan(Layout.NHWC, frozenset()))
    config = BuildConfig(device="cuda", cuda_arena=False)
    contexts, asked = [], []

    class Spy(FakeBackend):
        def tactics(self, node, graph, records=None):
            asked.append(records)
            return ["good", "slow"]

        def compile_node(self, node, ctx):
            contexts.append(ctx)
            return super().compile_node(node, ctx)

    timer = CudaTacticTimer(Spy(), {}, torch.device("cpu"), records, config, measure=lambda fn: 1.0)
    assert timer(node, g, "slow", Precision.FP16) == 1.0
    assert asked == [records]  # the reference is the default under the plan's decisions
    assert [(c.tactic, c.precision) for c in contexts] == [("slow", Precision.FP16),
                                                           ("good", Precision.FP32)]
    assert all(c.records is records and c.config is config for c in contexts)
    assert not timer.arena  # config.cuda_arena=False: timed alone


def test_inputs_are_timed_as_the_engine_stores_them():
    """A candidate is timed on inputs in the dtype the program stores them in (the producer's
    compute dtype: a half, INT8 or FP8 layer's float output is half) and the layout plan's memory
    format; timed on float32 NCHW, every candidate paid its own conversion and the ones that
    convert less won. The timing cache keys the producers' precisions apart."""
    from ember.ir import Graph, Node, TensorType
    from ember.ir.dtype import DType
    from ember.plan.records import PrecisionPlan

    shape = (2, 4, 5, 5)
    types = {n: TensorType(DType.FLOAT32, shape) for n in ("x", "a", "b", "c", "y")}
    nodes = [Node("half", OpType.RELU, ("x",), ("a",)), Node("q", OpType.RELU, ("x",), ("b",)),
             Node("plain", OpType.RELU, ("x",), ("c",)), Node("timed", OpType.MAX, ("a", "b", "c", "x"), ("y",))]
    g = Graph("stored", nodes, ["x"], ["y"], types)
    layout = LayoutPlan(Layout.NHWC, nhwc=frozenset({"a", "b"}))
    records = Records(layout=layout, precision=PrecisionPlan({"half": Precision.FP16, "q": Precision.INT8,
                                                              "plain": Precision.FP32}))
    timer = CudaTacticTimer(FakeBackend(), {}, torch.device("cpu"), records, measure=lambda fn: 1.0)
    a, b, c, x = timer._args(g.nodes[3], g)
    assert a.dtype == torch.float16 and a.is_contiguous(memory_format=torch.channels_last)
    assert b.dtype == torch.float16 and b.is_contiguous(memory_format=torch.channels_last)
    assert c.dtype == torch.float32 and c.is_contiguous()  # an fp32 layer's output, planned NCHW
    assert x.dtype == torch.float32 and x.is_contiguous()  # a graph input: as the user gives it
    other = Records(layout=layout, precision=PrecisionPlan({"half": Precision.FP32, "q": Precision.INT8,
                                                            "plain": Precision.FP32}))
    assert layer_signature(g.nodes[3], g, records, Precision.FP16) != layer_signature(g.nodes[3], g, other,
                                                                                      Precision.FP16)


class _FakeJit:
    """A Triton kernel stand-in: records warm-ups (compiles started) and launches."""

    def __init__(self):
        self.warmed, self.launched = 0, 0

    def warmup(self, *args, grid, **kw):
        self.warmed += 1

    def __getitem__(self, grid):
        def run(*args, **kw):
            self.launched += 1
        return run


class _AsyncCompileMode:
    def __init__(self, pool, ignore_errors=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class TritonishBackend(FakeBackend):
    """Two Triton tactics (one fails to build) and a library one; the Triton ones launch through
    ``libs.launch``, then compute their output with torch (what the launch would have written)."""

    def __init__(self):
        super().__init__()
        self.jit = _FakeJit()

    def tactics(self, node, graph, records=None):
        return ["cudnn", "triton_good", "triton_broken"]

    def compile_node(self, node, ctx: CompileContext):
        from ember.backends.cuda import libs

        self.compiled.append(ctx.tactic)
        if ctx.tactic == "triton_broken":
            raise RuntimeError("no such tile here")

        def run(ins):
            if ctx.tactic.startswith("triton"):
                libs.launch(self.jit, (1,), ins[0])
            return [torch.softmax(ins[0], -1)]
        return run


def test_precompile_starts_only_the_triton_tactics_compiles_then_timing_runs_as_before(monkeypatch):
    """``CudaTacticTimer.precompile`` builds and runs each Triton tactic once inside
    ``compiling_ahead`` (its launch only starts a compile), leaves library tactics and tactics that
    fail to build to their timing (which refuses them with the reason), and keeps no input or
    reference of that pass: the timing afterwards chooses as it would without it."""
    from ember.backends.cuda import libs

    class Triton:
        AsyncCompileMode = _AsyncCompileMode

    monkeypatch.setattr(libs, "triton_modules", lambda: (Triton, None))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("EMBER_TRITON_PRECOMPILE", raising=False)
    node, g = _node()
    backend = TritonishBackend()
    ms = {"cudnn": 2.0, "triton_good": 1.0}
    timer = CudaTacticTimer(backend, {}, torch.device("cpu"), Records(),
                            measure=lambda fn: ms[backend.compiled[-1]])
    selector = TacticSelector(timer)
    selector.precompile(g, [(node, backend.tactics(node, g), Precision.FP16, set())])
    assert backend.compiled == ["triton_good", "triton_broken"]  # no library tactic, no reference
    assert backend.jit.warmed == 1 and backend.jit.launched == 0
    assert timer._inputs == {} and timer._refs == {}  # inputs drawn again; no reference made here
    backend.compiled.clear()
    choice = selector.select(node, g, backend.tactics(node, g), Precision.FP16)
    assert choice.tactic == "triton_good" and backend.jit.launched > 0 and backend.jit.warmed == 1
    assert "no such tile" in timer.rejected[(node.name, "triton_broken")]

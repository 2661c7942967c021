"""Concat slices, layout and precision assignment: the typed records handed to backends and the
runtime (``ember.plan.records``)."""
from onnx import helper as oh

from ember.frontends.onnx import import_onnx
from ember.passes.layout import NCHW, NHWC, assign, preferred_layout
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import OUTPUT_READER, ConcatSlice, LayoutPlan

from passkit import onnx_model, optimize, optimized, optimized_against_ort, rng_const


def inception_like():
    nodes = [oh.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="a/conv", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c0"], ["r0"], name="a/relu"),
             oh.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("Conv", ["p", "w1"], ["c1"], name="b/conv"),
             oh.make_node("Concat", ["r0", "c1", "x"], ["cat"], name="concat", axis=1),
             oh.make_node("Flatten", ["cat"], ["y"], name="flatten")]
    inits = {"w0": rng_const(4, 3, 3, 3), "b0": rng_const(4), "w1": rng_const(2, 3, 1, 1)}
    return onnx_model(nodes, {"x": (1, 3, 5, 5)}, ["y"], inits)


def test_concat_inputs_written_in_place_are_recorded():
    out = optimized_against_ort(inception_like())
    plan = out.records.concat.concats["concat"]
    assert plan.axis == 1 and plan.contiguous and plan.output == "cat"
    assert plan.slices == (ConcatSlice("r0", 0, 4, True), ConcatSlice("c1", 4, 6, True),
                           ConcatSlice("x", 6, 9, False))
    assert any(r.name == "plan_concat_slices" and r.changed for r in out.stats)


def test_concat_input_with_another_reader_is_copied():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="r1"), oh.make_node("Sigmoid", ["x"], ["b"], name="s1"),
             oh.make_node("Concat", ["a", "b"], ["y"], name="concat", axis=1),
             oh.make_node("Neg", ["a"], ["z"], name="other")]
    out = optimized_against_ort(onnx_model(nodes, {"x": (2, 3)}, ["y", "z"]))
    entry = out.records.concat.concats["concat"]
    assert [s.in_place for s in entry.slices] == [False, True]
    assert entry.contiguous is False


def test_channels_last_plan_converts_only_at_the_edges():
    graph = optimize(import_onnx(inception_like()))
    plan = assign(graph)
    assert {"r0", "p", "c1", "cat"} <= plan.nhwc
    assert plan.weights == {n.inputs[1] for n in graph.nodes if n.op.value in ("Conv", "FusedConv")}
    readers = sorted((c.tensor, c.to, c.reader) for c in plan.conversions)
    # the input enters the two convs' branches and the concat; the concat leaves for Flatten
    assert ("cat", NCHW, "flatten") in readers
    assert all(c.to == NHWC for c in plan.conversions if c.tensor == "x")
    assert all(c.reader != OUTPUT_READER for c in plan.conversions)  # y is 2-D


def test_layout_preference_follows_device_and_config():
    assert preferred_layout(BuildConfig(device="cpu")) == NHWC
    assert preferred_layout(BuildConfig(device="cpu", layout="nchw")) == NCHW
    assert preferred_layout(BuildConfig(device="cuda")) == NHWC
    assert preferred_layout(BuildConfig(device="cpu", layout="nhwc")) == NHWC
    out = optimized(import_onnx(inception_like()), layout="nchw")
    assert out.records.layout == LayoutPlan(NCHW)
    assert optimized(import_onnx(inception_like()), optimize=False).records.layout is None


def test_precisions_recorded_per_float_layer():
    out = optimized(import_onnx(inception_like()))
    assert set(out.records.precision.layers) == {n.name for n in out.graph.nodes}
    assert set(out.records.precision.layers.values()) == {Precision.FP32}


def test_gpu_precisions_follow_the_config_and_per_layer_overrides():
    cfg = dict(device="cuda", precision="fp16", layer_precisions={"a/relu": "fp32", "MaxPool": "bf16"})
    out = optimized(import_onnx(inception_like()), **cfg)
    p = out.records.precision.layers
    fused = next(n for n in out.graph.nodes if n.display_name == "a/conv + a/relu")
    assert p[fused.name] == "fp32" and p["pool"] == "bf16" and p["b/conv"] == "fp16"


def test_unknown_layer_precision_key_is_an_error():
    import pytest

    from ember.errors import BuildError
    with pytest.raises(BuildError, match="no_such_layer"):
        optimize(import_onnx(inception_like()), device="cuda", layer_precisions={"no_such_layer": "fp32"})

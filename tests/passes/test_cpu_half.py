"""``assign_precisions`` (CPU branch) and ``plan_half_dtypes`` (``ember.passes.cpu_half``) on small
IR graphs: which layers a CPU bf16 build runs in bf16, where the conversions go (Before / After),
that the rule fired and that the graph computes what it did (the casts are float32 -> float32 in
IR terms: storage is the layers' precisions' business, so fp32 evaluation is unchanged)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ember.errors import BuildError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import AxisAttrs, ConvAttrs, FusedElementwiseAttrs, FusedStep, PoolAttrs, TopKAttrs
from ember.plan.config import Precision

from passkit import assert_same_outputs, ir_graph, ops, rng_const, run_pass_ctx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "cpu"))
from bf16kit import NATIVE, PLAIN, faked_cpu  # noqa: E402

PASSES = ("assign_precisions", "plan_half_dtypes")


def _graph():
    """x -> conv -> relu -> maxpool -> topk (no half kernel) ; x -> exp (no half kernel)."""
    conv = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    nodes = [Node("conv", OpType.CONV, ("x", "w"), ("c",), conv),
             Node("relu", OpType.RELU, ("c",), ("r",)),
             Node("pool", OpType.MAX_POOL, ("r",), ("p",), PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1))),
             Node("flat", OpType.FLATTEN, ("p",), ("f",), AxisAttrs(axis=1)),
             Node("topk", OpType.TOP_K, ("f", "k"), ("v", "i"), TopKAttrs(axis=-1)),
             Node("exp", OpType.EXP, ("x",), ("e",))]
    return ir_graph(nodes, {"x": (1, 4, 8, 8)}, ["v", "e", "r"],
                    {"w": rng_const(8, 4, 3, 3), "k": np.array([3], np.int64)})


def test_half_layers_and_planned_conversions():
    before = _graph()
    with faked_cpu(NATIVE):
        after, ctx = run_pass_ctx(before, *PASSES, device="cpu", precision="bf16")
    layers = ctx.records.precision.layers
    assert {n: str(layers[n]) for n in ("conv", "relu", "pool", "flat", "topk", "exp")} == {
        "conv": "bf16", "relu": "bf16", "pool": "bf16", "flat": "bf16", "topk": "fp32", "exp": "fp32"}
    # Before: conv relu pool flat topk exp. After: one conversion in; the relu writes its graph
    # output "r" in float32 and the pool reads it converted; one conversion back for TopK
    assert ops(after) == ["Cast", "Conv", "Relu", "Cast", "MaxPool", "Flatten", "Cast", "TopK", "Exp"]
    casts = [n for n in after.nodes if n.op is OpType.CAST]
    assert [(n.inputs[0], n.outputs[0], str(layers[n.name])) for n in casts] == [
        ("x", "x::bf16", "bf16"), ("r", "r::bf16", "bf16"), ("f", "f::fp32", "fp32")]
    assert after.node_by_name("conv").inputs[0] == "x::bf16" and after.node_by_name("exp").inputs == ("x",)
    assert ctx.fired["tensor read in another precision => Cast"] == 3
    assert all(t.dtype.value != "bfloat16" for t in after.types.values())  # IR types stay the model's
    assert_same_outputs(before, after)


def test_fp32_builds_and_cpus_without_bf16_are_left_alone():
    before = _graph()
    after, ctx = run_pass_ctx(before, *PASSES, device="cpu", precision="fp32")
    assert after is before and set(ctx.records.precision.layers.values()) == {Precision.FP32}
    with faked_cpu(PLAIN), pytest.warns(UserWarning, match="has no native bf16"):
        after, ctx = run_pass_ctx(before, *PASSES, device="cpu", precision="bf16")
    assert after is before and set(ctx.records.precision.layers.values()) == {Precision.FP32}
    with faked_cpu(NATIVE), pytest.raises(BuildError, match="needs AMX-FP16"):
        run_pass_ctx(before, *PASSES, device="cpu", precision="fp16")


def test_a_fused_elementwise_runs_half_only_when_every_step_can():
    steps_ok = (FusedStep(OpType.RELU, (0,)), FusedStep(OpType.MUL, (1, 1)))
    steps_no = (FusedStep(OpType.RELU, (0,)), FusedStep(OpType.EXP, (1,)))
    conv = ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
    nodes = [Node("conv", OpType.CONV, ("x", "w"), ("c",), conv),
             Node("ok", OpType.FUSED_ELEMENTWISE, ("c",), ("a",), FusedElementwiseAttrs(steps_ok)),
             Node("no", OpType.FUSED_ELEMENTWISE, ("c",), ("b",), FusedElementwiseAttrs(steps_no))]
    g = ir_graph(nodes, {"x": (1, 4, 4, 4)}, ["a", "b"], {"w": rng_const(4, 4, 1, 1)})
    with faked_cpu(NATIVE):
        _, ctx = run_pass_ctx(g, *PASSES, device="cpu", precision="bf16")
    layers = ctx.records.precision.layers
    assert layers["ok"] is Precision.BF16 and layers["no"] is Precision.FP32


def _residual_block():
    """x -> matmul -> m ; SkipLayerNorm(m, x) -> s (the residual stream) -> matmul -> y."""
    from ember.ops.attrs import LayerNormAttrs

    nodes = [Node("mm1", OpType.MATMUL, ("x", "w1"), ("m",)),
             Node("sln", OpType.SKIP_LAYER_NORM, ("m", "x", "g", "b"), ("s",), LayerNormAttrs()),
             Node("mm2", OpType.MATMUL, ("s", "w2"), ("y",))]
    return ir_graph(nodes, {"x": (2, 8, 16)}, ["y"],
                    {"w1": rng_const(16, 16), "w2": rng_const(16, 16), "g": rng_const(16), "b": rng_const(16)})


def test_the_residual_layernorms_keep_fp32_unless_named():
    """A half build keeps LayerNorm / SkipLayerNorm in fp32 (``CPU_HALF_FP32_NORMS``): the norm
    reads its GEMM's half output converted, writes the residual stream in fp32, and the next GEMM
    reads it converted; named in ``layer_precisions`` it runs half with no conversion between."""
    before = _residual_block()
    with faked_cpu(NATIVE):
        after, ctx = run_pass_ctx(before, *PASSES, device="cpu", precision="bf16")
        named, named_ctx = run_pass_ctx(before, *PASSES, device="cpu", precision="bf16",
                                        layer_precisions={"SkipLayerNormalization": "bf16"})
    layers = ctx.records.precision.layers
    assert (str(layers["mm1"]), str(layers["sln"]), str(layers["mm2"])) == ("bf16", "fp32", "bf16")
    assert ops(after) == ["Cast", "MatMul", "Cast", "SkipLayerNormalization", "Cast", "MatMul"]
    assert after.node_by_name("sln").inputs[:2] == ("m::fp32", "x")  # the skip is read as it is
    assert_same_outputs(before, after)
    assert str(named_ctx.records.precision.layers["sln"]) == "bf16"
    # the skip input x (a graph input, fp32) is converted once, for mm1 and the norm alike
    assert ops(named) == ["Cast", "MatMul", "SkipLayerNormalization", "MatMul"]


def test_a_pre_ln_residual_stream_stays_fp32():
    """Pre-LN blocks (``r1 = x + mm(LN(x))``): the residual Add reads the fp32 stream and a half
    GEMM output, so it runs fp32 (the GEMM output converted up) and the stream stays fp32 through
    every block; an Add of two half tensors still runs half."""
    from ember.ops.attrs import LayerNormAttrs

    nodes = [Node("ln1", OpType.LAYER_NORM, ("x", "g", "b"), ("n1",), LayerNormAttrs()),
             Node("mm1", OpType.MATMUL, ("n1", "w1"), ("m1",)),
             Node("add1", OpType.ADD, ("x", "m1"), ("r1",)),
             Node("ln2", OpType.LAYER_NORM, ("r1", "g", "b"), ("n2",), LayerNormAttrs()),
             Node("mm2", OpType.MATMUL, ("n2", "w2"), ("m2",)),
             Node("add2", OpType.ADD, ("r1", "m2"), ("r2",)),
             Node("mm3", OpType.MATMUL, ("r2", "w3"), ("m3",)),
             Node("both", OpType.ADD, ("m3", "m2"), ("y",))]
    before = ir_graph(nodes, {"x": (2, 8, 16)}, ["y"],
                      {f"w{i}": rng_const(16, 16) for i in (1, 2, 3)} | {"g": rng_const(16), "b": rng_const(16)})
    with faked_cpu(NATIVE):
        after, ctx = run_pass_ctx(before, *PASSES, device="cpu", precision="bf16")
    layers = {k: str(v) for k, v in ctx.records.precision.layers.items()}
    assert [layers[n] for n in ("ln1", "mm1", "add1", "ln2", "mm2", "add2", "mm3", "both")] == [
        "fp32", "bf16", "fp32", "fp32", "bf16", "fp32", "bf16", "bf16"]
    assert after.node_by_name("add2").inputs == ("r1", "m2::fp32")
    assert_same_outputs(before, after)

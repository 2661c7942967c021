"""Elementwise chains -> one FusedElementwise layer, checked against ONNX Runtime (CPU backend)."""
import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as oh

import ember
from ember.frontends.onnx import import_onnx
from ember.ir.optype import OpType
from ember.passes.fuse_elementwise import RULE

from passkit import check_against_ort, onnx_model, ops, optimized_against_ort, ort_run, rng_const, run_pass


def node(op, ins, out, **attrs):
    return oh.make_node(op, ins, [out], name=out, **attrs)


def steps(n):
    return [s.op.value for s in n.attrs.steps]


X = {"x": (2, 3, 4, 5)}
BIAS = {"b": rng_const(3, 1, 1, seed=1), "s": rng_const(5, seed=2, low=0.5, high=2.0),
        "lo": np.float32(-0.5), "hi": np.float32(0.75)}

# chains of 2..5 ops whose operands broadcast ([3,1,1] and [5] against [2,3,4,5])
CHAINS = {
    2: [node("Add", ["x", "b"], "a"), node("Relu", ["a"], "y")],
    3: [node("Sub", ["x", "b"], "a"), node("Mul", ["a", "s"], "m"), node("Sigmoid", ["m"], "y")],
    4: [node("Mul", ["x", "s"], "m"), node("Add", ["m", "b"], "a"), node("Tanh", ["a"], "t"),
        node("Clip", ["t", "lo", "hi"], "y")],
    5: [node("Div", ["x", "s"], "d"), node("Add", ["d", "b"], "a"), node("LeakyRelu", ["a"], "l", alpha=0.2),
        node("Abs", ["l"], "e"), node("Sqrt", ["e"], "y")],
}


@pytest.mark.parametrize("length", sorted(CHAINS))
def test_chain_fuses_into_one_layer(length):
    nodes = CHAINS[length]
    out = check_against_ort(onnx_model(nodes, X, ["y"], BIAS))
    assert ops(out) == ["FusedElementwise"]
    fused = out.nodes[0]
    assert steps(fused) == [n.op_type for n in nodes]
    assert fused.display_name == " + ".join(n.name for n in nodes)
    assert fused.outputs == ("y",) and fused.rule == RULE
    assert fused.inputs[0] == "x"
    assert "lo" not in fused.inputs and "hi" not in fused.inputs  # constant Clip bounds folded
    assert out.types["y"].shape == (2, 3, 4, 5)


def test_chain_fired_count_is_recorded():
    out = optimized_against_ort(onnx_model(CHAINS[3], X, ["y"], BIAS))
    fired = {k: v for r in out.stats if r.name == "fuse_elementwise" for k, v in r.fired.items()}
    assert fired == {RULE: 1}


def test_diamond_inside_a_group():
    nodes = [node("Neg", ["x"], "n"), node("Sigmoid", ["n"], "g"), node("Tanh", ["n"], "t"),
             node("Mul", ["n", "g"], "m"), node("Add", ["m", "t"], "y")]
    out = check_against_ort(onnx_model(nodes, X, ["y"]))
    assert ops(out) == ["FusedElementwise"]
    fused = out.nodes[0]
    assert fused.inputs == ("x",)
    # operand 0 is x, step i's result is operand 1 + i; Neg's result is read three times
    assert [s.operands for s in fused.attrs.steps] == [(0,), (1,), (1,), (1, 2), (4, 3)]


def test_second_reader_outside_splits_the_chain():
    nodes = [node("Relu", ["x"], "r"), node("Exp", ["r"], "e"), node("Neg", ["e"], "y"),
             oh.make_node("ReduceSum", ["r"], ["z"], name="z", keepdims=1)]
    out = check_against_ort(onnx_model(nodes, X, ["y", "z"]))
    assert sorted(ops(out)) == ["FusedElementwise", "ReduceSum", "Relu"]
    fused = [n for n in out.nodes if n.op is OpType.FUSED_ELEMENTWISE][0]
    assert steps(fused) == ["Exp", "Neg"] and fused.inputs == ("r",)


def test_graph_output_in_the_middle_is_not_absorbed():
    nodes = [node("Add", ["x", "b"], "a"), node("Relu", ["a"], "r"), node("Exp", ["r"], "e"),
             node("Neg", ["e"], "y")]
    out = check_against_ort(onnx_model(nodes, X, ["y", "r"], BIAS))
    assert ops(out) == ["FusedElementwise", "FusedElementwise"]
    first, second = out.nodes
    assert steps(first) == ["Add", "Relu"] and first.outputs == ("r",)
    assert steps(second) == ["Exp", "Neg"] and second.inputs == ("r",)


def test_kept_tensor_is_not_absorbed():
    graph = import_onnx(onnx_model(CHAINS[3], X, ["y"], BIAS))
    out, fired = run_pass(graph, "fuse_elementwise", keep=["m"])
    assert "m" in {o for n in out.nodes for o in n.outputs}
    assert ops(out) == ["FusedElementwise", "Sigmoid"] and fired == {RULE: 1}


def test_single_op_and_siblings_stay_alone():
    # two activations of one tensor are not connected through the group: nothing to fuse
    nodes = [node("Relu", ["x"], "y"), node("Sigmoid", ["x"], "z")]
    out = check_against_ort(onnx_model(nodes, X, ["y", "z"]))
    assert ops(out) == ["Relu", "Sigmoid"]


def test_clip_with_run_time_bound_is_not_a_step():
    nodes = [node("Exp", ["x"], "e"), node("Clip", ["e", "lo"], "c"), node("Neg", ["c"], "y")]
    model = onnx_model(nodes, {**X, "lo": ()}, ["y"])
    out = check_against_ort(model)
    assert ops(out) == ["Exp", "Clip", "Neg"]


def test_integer_and_float_mix_like_a_bert_mask():
    # mask: int64 -> Cast -> (1 - m) * -10000 + scores, exactly as exporters write it
    nodes = [node("Cast", ["mask"], "mf", to=TensorProto.FLOAT), node("Sub", ["one", "mf"], "inv"),
             node("Mul", ["inv", "big"], "neg"), node("Add", ["scores", "neg"], "y")]
    consts = {"one": np.float32(1.0), "big": np.float32(-10000.0)}
    model = onnx_model(nodes, {"scores": (2, 4, 6), "mask": (2, 1, 6)}, ["y"], consts,
                       input_types={"mask": TensorProto.INT64})
    out = check_against_ort(model)
    assert ops(out) == ["FusedElementwise"]
    assert steps(out.nodes[0]) == ["Cast", "Sub", "Mul", "Add"]


def test_integer_chain_into_a_float_where():
    nodes = [node("Add", ["i", "j"], "s"), node("Mul", ["s", "three"], "m"),
             node("Greater", ["m", "four"], "g"), node("Not", ["g"], "ng"),
             node("Where", ["ng", "x", "z"], "y")]
    consts = {"three": np.int64(3), "four": np.int64(4)}
    model = onnx_model(nodes, {"i": (3, 1, 5), "j": (5,), "x": (3, 4, 5), "z": (1, 4, 1)}, ["y"], consts,
                       input_types={"i": TensorProto.INT64, "j": TensorProto.INT64})
    feeds = {"i": np.arange(15, dtype=np.int64).reshape(3, 1, 5) - 7, "j": np.arange(5, dtype=np.int64),
             "x": rng_const(3, 4, 5), "z": rng_const(1, 4, 1, seed=3)}
    out = check_against_ort(model, feeds)
    assert ops(out) == ["FusedElementwise"]
    fused = out.nodes[0]
    assert steps(fused) == ["Add", "Mul", "Greater", "Not", "Where"]
    assert out.types["y"].shape == (3, 4, 5)


def test_integer_division_keeps_truncation():
    nodes = [node("Sub", ["i", "j"], "d"), node("Div", ["d", "three"], "q"),
             node("Cast", ["q"], "y", to=TensorProto.FLOAT)]
    model = onnx_model(nodes, {"i": (7,), "j": (7,)}, ["y"], {"three": np.int32(3)},
                       input_types={"i": TensorProto.INT32, "j": TensorProto.INT32})
    feeds = {"i": np.array([-7, -5, -3, 0, 3, 5, 7], np.int32), "j": np.array([1, 0, 0, 0, 0, 0, -1], np.int32)}
    out = check_against_ort(model, feeds, rtol=0, atol=0)
    assert ops(out) == ["FusedElementwise"]


def test_cpu_engine_runs_the_fused_layer():
    model = onnx_model(CHAINS[5], X, ["y"], BIAS)
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"))
    assert [layer.kind for layer in engine.plan.layers] == ["FusedElementwise"]
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)}
    with engine.create_context() as ctx:
        got = ctx.infer(feeds)["y"]
    np.testing.assert_allclose(got, ort_run(model, feeds)["y"], rtol=1e-5, atol=1e-6)


def test_layer_precisions_by_op_type_reach_the_steps_of_a_fused_chain():
    from ember.passes.pipeline import run_pipeline
    from ember.plan.config import BuildConfig

    graph = import_onnx(onnx_model(CHAINS[3], X, ["y"], BIAS))
    for key, want in (("Sigmoid", "fp32"), ("Mul", "fp32"), ("Relu", "fp16")):
        out = run_pipeline(graph, BuildConfig(device="cuda", precision="fp16", layer_precisions={key: "fp32"}))
        fused = next(n for n in out.graph.nodes if n.op is OpType.FUSED_ELEMENTWISE)
        assert out.records.precision.layers[fused.name] == want, key

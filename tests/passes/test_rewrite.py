"""The rewrite engine: patterns (alternatives, DAGs, optional inputs), safety checks, composition."""
import numpy as np
import pytest

from ember.errors import GraphError
from ember.ir import Node, OpType
from ember.passes.manager import PassContext
from ember.passes.rewrite import Absent, Const, Op, Rule, Var, alt, apply_rules, optional

from passkit import assert_same_outputs, ir_graph, ops


def chain():
    nodes = [Node("n", OpType.NEG, ("x",), ("a",)), Node("e", OpType.EXP, ("a",), ("b",)),
             Node("r", OpType.RELU, ("b",), ("y",))]
    return ir_graph(nodes, {"x": (3,)}, ["y"])


def exp_neg_to_sigmoid_like(m):
    # a rule that replaces exp(neg(x)) by a Sigmoid-free but equal graph: reciprocal(exp(x))
    e = m.add_tensor("ex", m.type(m["x"]))
    return [m.fuse(OpType.EXP, [m["x"]], outputs=[e], name=m.fresh_node_name("exp")),
            m.fuse(OpType.RECIPROCAL, [e])]


RULE = Rule("exp(neg(x)) => 1 / exp(x)", Op(OpType.EXP, (Op(OpType.NEG, (Var("x"),)),)), exp_neg_to_sigmoid_like)


def test_rule_fires_keeps_outputs_and_records_origin_and_rule():
    g = chain()
    ctx = PassContext()
    out = apply_rules(g, [RULE], ctx)
    assert ops(out) == ["Exp", "Reciprocal", "Relu"] and ctx.fired[RULE.name] == 1
    assert out.nodes[1].outputs == ("b",) and out.nodes[1].origin == ("n", "e") and out.nodes[1].rule == RULE.name
    assert "a" not in out.types
    assert_same_outputs(g, out)


def test_interior_tensor_with_another_reader_blocks_the_rule():
    g = chain()
    g = ir_graph(g.nodes + [Node("other", OpType.ABS, ("a",), ("z",))], {"x": (3,)}, ["y", "z"])
    out = apply_rules(g, [RULE], PassContext())
    assert ops(out) == ["Neg", "Exp", "Relu", "Abs"]


def test_kept_interior_tensor_blocks_the_rule():
    out = apply_rules(chain(), [RULE], PassContext(keep=frozenset({"a"})))
    assert ops(out) == ["Neg", "Exp", "Relu"]


def test_declining_callback_leaves_the_graph_unchanged():
    rule = Rule("never", RULE.pattern, lambda m: None)
    g = chain()
    assert apply_rules(g, [rule], PassContext()) is g


def test_replacement_reading_an_undefined_tensor_is_refused():
    def bad(m):
        return [m.fuse(OpType.RELU, ["y"])]  # reads a tensor defined after the insertion point

    out = apply_rules(chain(), [Rule("bad", RULE.pattern, bad)], PassContext())
    assert ops(out) == ["Neg", "Exp", "Relu"]


def test_commutative_ops_match_either_order_and_named_ops_must_be_the_same_node():
    nodes = [Node("s", OpType.SIGMOID, ("x",), ("g",)), Node("m", OpType.MUL, ("g", "x"), ("y",))]
    g = ir_graph(nodes, {"x": (3,)}, ["y"])
    pat = Op(OpType.MUL, (Var("x"), Op(OpType.SIGMOID, (Var("x"),))))
    seen = []
    apply_rules(g, [Rule("swish", pat, lambda m: seen.append(m["x"]))], PassContext())
    assert seen == ["x"]
    pat2 = Op(OpType.MUL, (Var("a"), Op(OpType.SIGMOID, (Var("a"),))))
    nodes2 = [Node("s", OpType.SIGMOID, ("x",), ("g",)), Node("m", OpType.MUL, ("g", "z"), ("y",))]
    seen.clear()
    apply_rules(ir_graph(nodes2, {"x": (3,), "z": (3,)}, ["y"]), [Rule("swish", pat2, lambda m: seen.append(1))],
                PassContext())
    assert seen == []


def test_alternatives_constants_and_optional_inputs():
    pat = Op(OpType.CLIP, (Var("x"), optional(Const("lo", lambda v: v == 0)), alt(Absent(), Const("hi"))))
    hits = []
    rule = Rule("clip", pat, lambda m: hits.append((m.get("lo"), m.get("hi"))))
    nodes = [Node("c1", OpType.CLIP, ("x", "zero"), ("a",)), Node("c2", OpType.CLIP, ("a", "", "six"), ("b",)),
             Node("c3", OpType.CLIP, ("b", "six"), ("y",))]
    g = ir_graph(nodes, {"x": (3,)}, ["y"], {"zero": np.float32(0), "six": np.float32(6)})
    apply_rules(g, [rule], PassContext())
    assert hits == [("zero", ""), ("", "six")]


def test_rules_that_never_settle_are_reported():
    def flip(m):
        return [m.fuse(OpType.RELU, [m["x"]])]

    rule = Rule("relu => relu", Op(OpType.RELU, (Var("x"),)), flip)
    with pytest.raises(GraphError, match="still firing"):
        apply_rules(chain(), [rule], PassContext(), max_sweeps=5)


def test_root_must_be_an_op():
    with pytest.raises(TypeError):
        Rule("bad", Var("x"), lambda m: None)

"""BatchNorm folding and per-channel scale/shift folding into Conv, ConvTranspose, Gemm, MatMul."""
import numpy as np
import pytest

from ember.ir import Node, OpType
from ember.ops.attrs import BatchNormAttrs, ConvAttrs, ConvTransposeAttrs, GemmAttrs

from passkit import assert_same_outputs, ir_graph, ops, rng_const, run_pass

BN_RULE = "batchnorm(conv(x, w, b)) => conv(x, w * s, b * s + t)"


def bn_consts(c, seed=1):
    return {"gamma": rng_const(c, seed=seed, low=0.5, high=1.5), "beta": rng_const(c, seed=seed + 1),
            "mean": rng_const(c, seed=seed + 2), "var": rng_const(c, seed=seed + 3, low=0.5, high=2.0)}


def conv_bn(extra_reader=False, bias=True):
    conv = Node("conv", OpType.CONV, ("x", "w", "b") if bias else ("x", "w"), ("c",),
                ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)))
    nodes = [conv, Node("bn", OpType.BATCH_NORM, ("c", "gamma", "beta", "mean", "var"), ("y",), BatchNormAttrs(1e-3))]
    outputs = ["y"]
    if extra_reader:
        nodes.append(Node("relu", OpType.RELU, ("c",), ("z",)))
        outputs.append("z")
    consts = {"w": rng_const(6, 3, 3, 3), "b": rng_const(6, seed=9), **bn_consts(6)}
    return ir_graph(nodes, {"x": (1, 3, 5, 5)}, outputs, consts)


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_folds_into_conv(bias):
    g = conv_bn(bias=bias)
    out, fired = run_pass(g, "fold_batchnorm")
    assert ops(out) == ["Conv"] and fired[BN_RULE] == 1
    conv = out.nodes[0]
    assert conv.outputs == ("y",) and conv.origin == ("conv", "bn") and conv.rule == BN_RULE
    assert conv.display_name == "conv + bn"
    assert not ({"gamma", "beta", "mean", "var"} & set(out.constants))
    assert_same_outputs(g, out)


def test_batchnorm_not_folded_when_conv_output_has_a_second_reader():
    out, fired = run_pass(conv_bn(extra_reader=True), "fold_batchnorm")
    assert ops(out) == ["Conv", "BatchNormalization", "Relu"] and not fired


def test_batchnorm_with_non_constant_params_not_folded():
    conv = Node("conv", OpType.CONV, ("x", "w"), ("c",), ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)))
    bn = Node("bn", OpType.BATCH_NORM, ("c", "gamma", "beta", "mean", "var"), ("y",), BatchNormAttrs())
    consts = {"w": rng_const(4, 3, 1, 1), **bn_consts(4)}
    del consts["var"]
    g = ir_graph([conv, bn], {"x": (1, 3, 4, 4), "var": (4,)}, ["y"], consts)
    out, fired = run_pass(g, "fold_batchnorm")
    assert ops(out) == ["Conv", "BatchNormalization"] and not fired


def test_batchnorm_folds_into_grouped_conv_transpose():
    ct = Node("ct", OpType.CONV_TRANSPOSE, ("x", "w"), ("c",),
              ConvTransposeAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), (0, 0), group=2))
    bn = Node("bn", OpType.BATCH_NORM, ("c", "gamma", "beta", "mean", "var"), ("y",), BatchNormAttrs())
    g = ir_graph([ct, bn], {"x": (1, 4, 3, 3)}, ["y"], {"w": rng_const(4, 3, 2, 2), **bn_consts(6)})
    out, fired = run_pass(g, "fold_batchnorm")
    assert ops(out) == ["ConvTranspose"]
    assert_same_outputs(g, out)


@pytest.mark.parametrize("trans_b", [False, True])
def test_batchnorm_folds_into_gemm(trans_b):
    w = rng_const(5, 4) if trans_b else rng_const(4, 5)
    gemm = Node("fc", OpType.GEMM, ("x", "w", "c"), ("f",), GemmAttrs(alpha=0.5, beta=2.0, trans_b=trans_b))
    bn = Node("bn", OpType.BATCH_NORM, ("f", "gamma", "beta", "mean", "var"), ("y",), BatchNormAttrs())
    g = ir_graph([gemm, bn], {"x": (3, 4)}, ["y"], {"w": w, "c": rng_const(5, seed=4), **bn_consts(5)})
    out, _ = run_pass(g, "fold_batchnorm")
    assert ops(out) == ["Gemm"] and out.nodes[0].attrs.beta == 1.0
    assert_same_outputs(g, out)


def test_batchnorm_folds_into_2d_matmul_as_gemm():
    mm = Node("mm", OpType.MATMUL, ("x", "w"), ("f",))
    bn = Node("bn", OpType.BATCH_NORM, ("f", "gamma", "beta", "mean", "var"), ("y",), BatchNormAttrs())
    g = ir_graph([mm, bn], {"x": (3, 4)}, ["y"], {"w": rng_const(4, 5), **bn_consts(5)})
    out, _ = run_pass(g, "fold_batchnorm")
    assert ops(out) == ["Gemm"]
    assert_same_outputs(g, out)


def test_per_channel_mul_and_add_fold_into_conv():
    conv = Node("conv", OpType.CONV, ("x", "w", "b"), ("c",), ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)))
    nodes = [conv, Node("mul", OpType.MUL, ("s", "c"), ("m",)), Node("add", OpType.SUB, ("m", "t"), ("y",))]
    consts = {"w": rng_const(4, 3, 1, 1), "b": rng_const(4), "s": rng_const(4, 1, 1, seed=3),
              "t": rng_const(1, 4, 1, 1, seed=5)}
    g = ir_graph(nodes, {"x": (2, 3, 4, 4)}, ["y"], consts)
    out, fired = run_pass(g, "fold_scales")
    assert ops(out) == ["Conv"] and out.nodes[0].origin == ("conv", "mul", "add")
    assert fired == {"conv(x, w, b) * c => conv(x, w * c, b * c)": 1, "conv(x, w, b) + c => conv(x, w, b + c)": 1}
    assert_same_outputs(g, out)


def test_mul_by_a_spatial_constant_is_not_folded():
    conv = Node("conv", OpType.CONV, ("x", "w"), ("c",), ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)))
    g = ir_graph([conv, Node("mul", OpType.MUL, ("c", "s"), ("y",))], {"x": (1, 3, 4, 4)}, ["y"],
                 {"w": rng_const(4, 3, 1, 1), "s": rng_const(4, 4)})
    out, fired = run_pass(g, "fold_scales")
    assert ops(out) == ["Conv", "Mul"] and not fired


def test_scalar_mul_folds_into_nd_matmul_weights():
    g = ir_graph([Node("mm", OpType.MATMUL, ("x", "w"), ("f",)), Node("mul", OpType.MUL, ("f", "s"), ("y",))],
                 {"x": (2, 3, 4)}, ["y"], {"w": rng_const(4, 5), "s": np.float32(0.125)})
    out, _ = run_pass(g, "fold_scales")
    assert ops(out) == ["MatMul"]
    assert_same_outputs(g, out)

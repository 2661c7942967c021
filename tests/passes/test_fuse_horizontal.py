"""Horizontal fusion: Inception-style 1x1 siblings and Q/K/V projections, vs ONNX Runtime."""
from onnx import helper as oh

from passkit import check_against_ort, onnx_model, ops, rng_const


def branch(i, k=1):
    return [oh.make_node("Conv", ["x", f"w{i}", f"b{i}"], [f"c{i}"], name=f"b{i}/conv", pads=[k // 2] * 4),
            oh.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"b{i}/relu")]


def test_sibling_1x1_convs_become_one_wide_conv_and_a_split():
    nodes = branch(0) + branch(1) + branch(2) + [
        oh.make_node("Conv", ["r1", "w3"], ["c3"], name="b1/3x3", pads=[1, 1, 1, 1]),
        oh.make_node("Concat", ["r0", "c3", "r2"], ["y"], name="concat", axis=1)]
    inits = {}
    for i, c in enumerate((4, 3, 2)):
        inits[f"w{i}"], inits[f"b{i}"] = rng_const(c, 5, 1, 1, seed=i), rng_const(c, seed=10 + i)
    inits["w3"] = rng_const(6, 3, 3, 3, seed=7)
    out = check_against_ort(onnx_model(nodes, {"x": (1, 5, 6, 6)}, ["y"], inits))
    assert ops(out) == ["FusedConv", "Split", "Conv", "Concat"]
    wide, split = out.nodes[0], out.nodes[1]
    assert wide.display_name == "b0/conv + b0/relu + b1/conv + b1/relu + b2/conv + b2/relu"
    assert split.attrs.split == (4, 3, 2) and split.outputs == ("r0", "r1", "r2")


def test_convs_with_different_kernels_stay_apart():
    nodes = branch(0) + branch(1, k=3) + [oh.make_node("Add", ["r0", "r1"], ["y"], name="add")]
    inits = {"w0": rng_const(4, 5, 1, 1), "b0": rng_const(4), "w1": rng_const(4, 5, 3, 3), "b1": rng_const(4)}
    out = check_against_ort(onnx_model(nodes, {"x": (1, 5, 6, 6)}, ["y"], inits))
    assert ops(out) == ["FusedConv", "FusedConv", "Add"]


def test_qkv_projections_become_one_gemm_and_a_split():
    nodes = []
    for p in "qkv":
        nodes += [oh.make_node("MatMul", ["x", f"w{p}"], [f"m{p}"], name=f"{p}/matmul"),
                  oh.make_node("Add", [f"b{p}", f"m{p}"], [p], name=f"{p}/add")]
    inits = {}
    for i, p in enumerate("qkv"):
        inits[f"w{p}"], inits[f"b{p}"] = rng_const(8, 8, seed=i), rng_const(8, seed=20 + i)
    out = check_against_ort(onnx_model(nodes, {"x": (2, 3, 8)}, ["q", "k", "v"], inits))
    assert ops(out) == ["FusedGemm", "Split"]
    assert out.nodes[0].display_name == "q/matmul + q/add + k/matmul + k/add + v/matmul + v/add"
    assert out.nodes[1].attrs.axis == 2 and out.nodes[1].attrs.split == (8, 8, 8)


def test_projections_of_different_inputs_stay_apart():
    nodes = [oh.make_node("MatMul", ["x", "w"], ["a"], name="p1"), oh.make_node("MatMul", ["z", "w"], ["b"], name="p2")]
    out = check_against_ort(onnx_model(nodes, {"x": (3, 8), "z": (3, 8)}, ["a", "b"], {"w": rng_const(8, 8)}))
    assert ops(out) == ["MatMul", "MatMul"]

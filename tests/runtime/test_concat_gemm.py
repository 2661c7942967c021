"""Concat elimination through 1x1 convolutions written as GEMMs into their Concat slices
(``ember.backends.gemm_into``): which inputs are written, which are copied, and outputs equal to
ONNX Runtime. The CPU writes them only when ``BuildConfig.cpu_gemm_into_max_macs`` allows (off by
default, where it did not pay: BENCHMARKS.md), so these tests switch it on."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.runtime.summary import concat_text

RNG = np.random.default_rng(0)


GEMM_INTO = 1 << 40  # every 1x1 conv slice as a GEMM


@pytest.fixture
def gemm_into_on():
    return GEMM_INTO


def _w(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def _model(nodes, inits, x_shape, outputs=("y",)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    g = helper.make_graph(nodes, "concat_gemm", [x], outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, x, device="cpu", rtol=1e-5, atol=1e-5, macs=GEMM_INTO):
    engine = ember.build(model, ember.BuildConfig(device=device, cpu_gemm_into_max_macs=macs))
    program = engine.compile() if device == "cpu" else None
    feeds = {"x": x}
    if program is not None:
        stats: dict = {}
        with torch.inference_mode():
            out = {k: v.numpy() for k, v in program.run({"x": torch.from_numpy(x)}, stats).items()}
    else:
        stats = None
        with engine.create_context() as ctx:
            out = ctx.infer(feeds)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for name, r in zip([o.name for o in model.graph.output], ref):
        np.testing.assert_allclose(np.asarray(out[name], dtype=np.float32), r, rtol=rtol, atol=atol)
    return engine, program, stats


def _mixed_branches(cin=8):
    """x [N, 8, 9, 9] -> x5 (MaxPool s2, 5x5); Concat of: a = ReLU(1x1 conv + bias) of x5, b = 1x1
    conv without bias of a 3x3 s1 MaxPool of x5 (Inception's pool projection), c = 3x3 conv of x5,
    d = strided 1x1 conv of x, e = grouped 1x1 conv of x5. a and b are GEMMs into their slices;
    c, d, e are not 1x1/stride-1/ungrouped and are copied."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["x5"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x5", "wa", "ba"], ["a0"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["a0"], ["a"]),
        helper.make_node("MaxPool", ["x5"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "wb"], ["b"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["x5", "wc", "bc"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wd", "bd"], ["d"], kernel_shape=[1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["x5", "we"], ["e"], kernel_shape=[1, 1], group=2),
        helper.make_node("Concat", ["a", "b", "c", "d", "e"], ["y"], axis=1),
    ]
    inits = [_w("wa", 6, cin, 1, 1), _w("ba", 6), _w("wb", 5, cin, 1, 1), _w("wc", 4, cin, 3, 3), _w("bc", 4),
             _w("wd", 3, cin, 1, 1), _w("bd", 3), _w("we", 4, cin // 2, 1, 1)]
    return nodes, inits


@pytest.mark.parametrize("batch", [1, 3])
def test_1x1_convs_write_their_slices_others_are_copied(gemm_into_on, batch):
    nodes, inits = _mixed_branches()
    x = RNG.standard_normal((batch, 8, 9, 9)).astype(np.float32)
    engine, program, stats = _run(_model(nodes, inits, x.shape), x)
    (report,) = program.concat.report.values()
    assert report["written"] == ["a", "b"]
    assert stats == {"written": 2, "copied": 3, "concats": 1}
    assert "concat elimination: 1 of 1 Concats written in place (2 of 5 inputs)" in concat_text(engine.plan)


def test_default_cpu_keeps_the_copies():
    """Off by default on the CPU (the GEMM did not pay there): same answer, plain copies."""
    nodes, inits = _mixed_branches()
    x = RNG.standard_normal((1, 8, 9, 9)).astype(np.float32)
    engine, program, stats = _run(_model(nodes, inits, x.shape), x, macs=ember.BuildConfig().cpu_gemm_into_max_macs)
    assert not program.concat.targets and stats == {}
    assert "concat elimination: 0 of 1 Concats written in place" in concat_text(engine.plan)


def test_second_reader_graph_output_and_epilogues(gemm_into_on):
    """a (ReLU) is also read by Neg: not in place; b is a graph output: not in place; c (1x1 +
    LeakyReLU) and r (1x1 + residual add + ReLU, one FusedConv) are written into their slices."""
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a0"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["a0"], ["a"]),
        helper.make_node("Neg", ["a"], ["z"]),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["x", "wc", "bc"], ["c0"], kernel_shape=[1, 1]),
        helper.make_node("LeakyRelu", ["c0"], ["c"], alpha=0.1),
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Conv", ["x", "wr", "br"], ["r0"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["r0", "s"], ["r1"]),
        helper.make_node("Relu", ["r1"], ["r"]),
        helper.make_node("Concat", ["a", "b", "c", "r"], ["y"], axis=1),
    ]
    inits = [_w("wa", 4, 8, 1, 1), _w("wb", 5, 8, 1, 1), _w("bb", 5), _w("wc", 6, 8, 1, 1), _w("bc", 6),
             _w("wr", 8, 8, 1, 1), _w("br", 8)]
    x = RNG.standard_normal((2, 8, 4, 5)).astype(np.float32)
    engine, program, stats = _run(_model(nodes, inits, x.shape, outputs=("y", "z", "b")), x)
    g = engine.plan.graph
    fused = {n.outputs[0]: n for n in g.nodes}
    assert fused["r"].op.value == "FusedConv" and fused["r"].attrs.has_residual  # the residual case is tested
    (entry,) = engine.plan.records.concat.concats.values()
    assert [s.in_place for s in entry.slices] == [False, False, True, True]
    (report,) = program.concat.report.values()
    assert report["written"] == ["c", "r"]
    assert stats == {"written": 2, "copied": 2, "concats": 1}


def test_horizontally_merged_1x1_convs_are_copied(gemm_into_on):
    """Two 1x1 convs of one input with one epilogue are merged into one wide conv + Split
    (fuse_horizontal); Split outputs are views and are copied into the Concat: the merge is
    kept (measured cheaper than unmerging to write the slice: BENCHMARKS.md)."""
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a0"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["a0"], ["a"]),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b0"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["b0"], ["b"]),
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "wc"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Concat", ["a", "b", "c"], ["y"], axis=1),
    ]
    inits = [_w("wa", 4, 8, 1, 1), _w("ba", 4), _w("wb", 6, 8, 1, 1), _w("bb", 6), _w("wc", 3, 8, 1, 1)]
    x = RNG.standard_normal((1, 8, 6, 6)).astype(np.float32)
    engine, program, stats = _run(_model(nodes, inits, x.shape), x)
    assert any(n.op.value == "Split" for n in engine.plan.graph.nodes)
    (report,) = program.concat.report.values()
    assert report["written"] == ["c"]
    assert stats == {"written": 1, "copied": 2, "concats": 1}


def _googlenet(batch=1):
    from ember import zoo

    return zoo.export_onnx("googlenet", batch=batch), zoo.sample_inputs("googlenet", batch=batch)


def test_googlenet_writes_its_pool_projections_in_place(gemm_into_on):
    """Every Inception block's pool projection (MaxPool 3x3 s1 -> 1x1 conv) writes its slice: 9
    of 36 inputs; branch 1 is a Split output of the merged 1x1 convs and the 3x3/5x5 convs are
    not GEMMs, so those are copied."""
    path, feeds = _googlenet()
    engine = ember.build(str(path), ember.BuildConfig(device="cpu", cpu_gemm_into_max_macs=GEMM_INTO))
    assert concat_text(engine.plan) == "concat elimination: 9 of 9 Concats written in place (9 of 36 inputs)"
    program = engine.compile()
    stats: dict = {}
    with torch.inference_mode():
        out = program.run({k: torch.from_numpy(v) for k, v in feeds.items()}, stats)
    assert stats == {"written": 9, "copied": 27, "concats": 9}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = out["output"].numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert sorted(r["written"][0].split("/")[1] for r in program.concat.report.values()) == [
        "inception_3a", "inception_3b", "inception_4a", "inception_4b", "inception_4c", "inception_4d",
        "inception_4e", "inception_5a", "inception_5b"]


# ---- CUDA ------------------------------------------------------------------------------------------
def _force_cublaslt_1x1(engine):
    """The engine with every 1x1 conv layer on the ``cublaslt_1x1`` tactic (tuning picks by time)."""
    from dataclasses import replace

    from ember.backends.cuda.registry import cuda_candidates
    from ember.runtime.engine import Engine

    plan = engine.plan
    layers = [replace(lay, tactic="cublaslt_1x1") if "cublaslt_1x1" in cuda_candidates(node, plan.graph) else lay
              for node, lay in zip(plan.graph.nodes, plan.layers)]
    assert sum(lay.tactic == "cublaslt_1x1" for lay in layers) > 0
    return Engine(replace(plan, layers=layers))


@pytest.mark.cuda
def test_cuda_googlenet_pool_projections_written_with_the_gemm_tactic():
    path, feeds = _googlenet(batch=2)
    engine = _force_cublaslt_1x1(ember.build(str(path), ember.BuildConfig(device="cuda", precision="fp32",
                                                                          tactic_tuning=False)))
    assert concat_text(engine.plan).startswith("concat elimination: 9 of 9 Concats written in place (")
    written = {t for r in engine.compile().concat.report.values() for t in r["written"]}
    assert {t for t in written if "pool_proj" in t} == {
        f"/inception_{b}/relu_pool_proj/Relu_output_0" for b in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")}
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)["output"]
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.abs(np.asarray(out) - ref).max() <= 5e-3 * np.abs(ref).max()


@pytest.mark.cuda
def test_cuda_mixed_branches_with_the_gemm_tactic():
    nodes, inits = _mixed_branches()
    x = RNG.standard_normal((3, 8, 9, 9)).astype(np.float32)
    model = _model(nodes, inits, x.shape)
    engine = _force_cublaslt_1x1(ember.build(model, ember.BuildConfig(device="cuda", precision="fp32",
                                                                      tactic_tuning=False)))
    written = {t for r in engine.compile().concat.report.values() for t in r["written"]}
    assert {"a", "b"} <= written  # c, d, e may be written by other CUDA tactics (not by this GEMM)
    with engine.create_context() as ctx:
        out = ctx.infer({"x": x})["y"]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-3, atol=2e-3)

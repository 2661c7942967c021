"""Concat elimination at run time (``Records.concat`` honoured by the programs):
producers whose kernel writes into a given tensor fill their slice of the Concat's buffer, the
rest are copied into their slice, and results match ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import ember
from ember.backends.base import WriteInto, write_into_of
from ember.backends.concat_exec import report_line
from ember.runtime.summary import format_engine


def _model(nodes, x_shape, outputs=("y",), opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    g = helper.make_graph(nodes, "concat_test", [x], outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _branches(axis=1, pool=True, extra=()):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"])]
    names = ["a", "b"]
    if pool:
        nodes.append(helper.make_node("MaxPool", ["x"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        names.append("c")
    names += list(extra)
    nodes.append(helper.make_node("Concat", names, ["y"], axis=axis))
    return nodes


def _run(model, x, shapes=None):
    engine = ember.build(model, ember.BuildConfig(device="cpu", shapes=shapes or {}))
    program = engine.compile()
    stats: dict = {}
    with torch.inference_mode():
        out = program.run({"x": torch.from_numpy(x)}, stats)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for name, r in zip([o.name for o in model.graph.output], ref):
        np.testing.assert_allclose(out[name].numpy(), r, rtol=1e-5, atol=1e-6)
    return engine, program, stats, out


def test_batch1_producers_write_into_their_slices_and_graph_input_is_copied():
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6)).astype(np.float32)
    _, program, stats, out = _run(_model(_branches(extra=["x"]), x.shape), x)
    assert program.concat.report["y"]["written"] == ["a", "b", "c"]
    assert stats == {"written": 3, "copied": 1, "concats": 1}  # x (a graph input) is copied
    assert program.concat.summary() == {"concats": 1, "planned": 1, "eliminated": 1, "inputs": 4, "written": 3}


def test_written_slices_are_views_of_the_output():
    """The producers' outputs are the Concat's buffer: capture them through the kernels."""
    x = np.random.default_rng(1).standard_normal((1, 4, 5, 5)).astype(np.float32)
    engine = ember.build(_model(_branches(pool=False), x.shape), ember.BuildConfig(device="cpu"))
    program = engine.compile()
    seen = {}
    for i, step in enumerate(program.steps):
        target = program.concat.targets.get(i)
        if target is not None:
            inner = target.write

            def spy(inputs, out, _inner=inner, _name=step.name):
                seen[_name] = out
                return _inner(inputs, out)

            program.concat.targets[i] = type(target)(target.output, target.axis, target.start,
                                                     target.length, WriteInto(spy, inner.accepts))
    with torch.inference_mode():
        y = program.run({"x": torch.from_numpy(x)})["y"]
    assert len(seen) == 2
    base = y.untyped_storage().data_ptr()
    for view in seen.values():
        assert view.untyped_storage().data_ptr() == base
    assert sorted(v.data_ptr() - y.data_ptr() for v in seen.values()) == [0, 4 * 5 * 5 * 4]


def test_batch_greater_than_one_strided_slices():
    """Batch 3: channel slices are strided. Elementwise kernels write them; MaxPool's out= kernel
    would go through a temporary, so it declines and is copied (same answer)."""
    x = np.random.default_rng(2).standard_normal((3, 8, 6, 6)).astype(np.float32)
    _, program, stats, _ = _run(_model(_branches(), x.shape), x)
    assert stats == {"written": 2, "declined": 1, "copied": 0, "concats": 1}


def test_producer_with_second_reader_is_not_in_place():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1),
             helper.make_node("Neg", ["a"], ["z"])]
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 3)).astype(np.float32)
    engine, program, stats, _ = _run(_model(nodes, x.shape, outputs=("y", "z")), x)
    slices = engine.plan.records.concat.concats["y"].slices
    assert [s.in_place for s in slices] == [False, True]
    assert stats == {"written": 1, "copied": 1, "concats": 1}


def test_last_axis_concat():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Tanh", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=-1)]
    x = np.random.default_rng(4).standard_normal((2, 3, 5)).astype(np.float32)
    _, program, stats, out = _run(_model(nodes, x.shape), x)
    assert out["y"].shape == (2, 3, 10)
    assert stats == {"written": 2, "copied": 0, "concats": 1}


def test_elementwise_binary_writes_into_slice():
    nodes = [helper.make_node("Add", ["x", "x"], ["a"]), helper.make_node("Mul", ["x", "x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=0)]
    x = np.random.default_rng(5).standard_normal((2, 4, 3, 3)).astype(np.float32)
    _, _, stats, _ = _run(_model(nodes, x.shape), x)
    assert stats["written"] == 2


def test_dynamic_batch_is_not_planned():
    x = np.random.default_rng(6).standard_normal((2, 8, 6, 6)).astype(np.float32)
    model = _model(_branches(), ("batch", 8, 6, 6))
    engine, program, stats, _ = _run(model, x)
    assert not engine.plan.records.concat
    assert stats == {} and not program.concat.targets


def test_no_capable_producer_keeps_the_concat():
    """Conv producers (oneDNN) cannot write into a slice without a temporary: plain Concat."""
    rng = np.random.default_rng(7)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 3, 3], rng.standard_normal(144).astype(np.float32).tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w"], ["b"], pads=[1, 1, 1, 1], dilations=[1, 1], strides=[1, 1],
                              group=1, kernel_shape=[3, 3]),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=1)]
    model = _model(nodes, (1, 4, 6, 6))
    model.graph.initializer.append(w)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    engine, program, stats, _ = _run(model, x)
    if engine.plan.records.concat:
        assert not program.concat.targets and stats == {}
    assert "concat elimination: 0 of 1 Concats" in format_engine(engine.plan, layers=False)


def test_summary_line():
    x = np.zeros((1, 8, 6, 6), np.float32)
    engine = ember.build(_model(_branches(extra=["x"]), x.shape), ember.BuildConfig(device="cpu"))
    text = format_engine(engine.plan, layers=False)
    assert "concat elimination: 1 of 1 Concats written in place (3 of 4 inputs)" in text
    assert report_line({"concats": 0}) == "concat elimination: no Concat"


def test_kernel_capabilities():
    """Which CPU kernels say they can write into a view, and that they decline what they cannot."""
    from ember.backends.base import CompileContext
    from ember.backends.cpu import CPUBackend
    from ember.ir import Graph, Node, OpType
    from ember.ops.attrs import PoolAttrs

    def kernel(node):
        return CPUBackend().compile_node(node, CompileContext(Graph("g", [node], [], [], {}), {}, torch.device("cpu")))

    relu = kernel(Node("r", OpType.RELU, ("x",), ("y",)))
    assert write_into_of(relu) is not None
    x = torch.randn(2, 3, 4, 4)
    buf = torch.empty(2, 6, 4, 4)
    assert write_into_of(relu)([x], buf[:, 3:])
    torch.testing.assert_close(buf[:, 3:], torch.relu(x))
    assert not write_into_of(relu)([x.double()], buf[:, 3:])  # dtype mismatch: declined
    pool_attrs = PoolAttrs(kernel_shape=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dilations=(1, 1))
    pool = kernel(Node("p", OpType.MAX_POOL, ("x",), ("y",), pool_attrs))
    out = torch.empty(1, 6, 2, 2)
    assert write_into_of(pool)([x[:1]], out[:, :3])  # batch 1: the slice is dense
    torch.testing.assert_close(out[:, :3], torch.nn.functional.max_pool2d(x[:1], 2))
    strided = torch.empty(2, 6, 2, 2)[:, :3]
    assert not write_into_of(pool)([x], strided)


def test_googlenet_end_to_end_matches_ort():
    from ember import zoo

    path = zoo.export_onnx("googlenet")
    feeds = zoo.sample_inputs("googlenet", batch=1)
    engine = ember.build(str(path), ember.BuildConfig(device="cpu"))
    assert len(engine.plan.records.concat) == 9
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(out.values(), ref):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    text = format_engine(engine.plan, layers=False)
    assert "concat elimination:" in text and "of 9 Concats" in text


@pytest.mark.cuda
def test_cuda_concat_elimination_matches_ort():
    """On the GPU: elementwise producers (generic kernels) write into the buffer inside the
    captured graph and on several streams; results match ORT."""
    x = np.random.default_rng(8).standard_normal((1, 8, 6, 6)).astype(np.float32)
    model = _model(_branches(extra=["x"]), x.shape)
    engine = ember.build(model, ember.BuildConfig(device="cuda"))
    program = engine.compile()
    assert program.concat.targets, program.concat.report
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with engine.create_context() as ctx:
        for _ in range(3):  # capture, then replays
            np.testing.assert_allclose(ctx.infer({"x": x})["y"], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_conv_writes_packed_channels_last_slices():
    """A 1x1-spatial conv pair concatenated on channels (packed channels-last slices): the cuDNN
    tactic writes through aten::cudnn_convolution.out; strided slices are declined."""
    rng = np.random.default_rng(9)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8, 1, 1], rng.standard_normal(64).astype(np.float32).tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Conv", ["x", "w"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["y"], axis=0)]
    model = _model(nodes, (2, 8, 4, 4))
    model.graph.initializer.append(w)
    x = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    engine = ember.build(model, ember.BuildConfig(device="cuda", precision="fp32"))
    program = engine.compile()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with engine.create_context() as ctx:
        for _ in range(3):
            np.testing.assert_allclose(ctx.infer({"x": x})["y"], ref, rtol=1e-4, atol=1e-4)
    report = program.concat.report
    if engine.plan.records.concat:
        tactics = {layer.name: layer.tactic for layer in engine.plan.layers}
        if all(t == "cudnn" for n, t in tactics.items() if n.startswith("Conv")):
            assert report[next(iter(report))]["eliminated"]


@pytest.mark.cuda
def test_cuda_googlenet_matches_ort_with_concat_plan():
    from ember import zoo

    path = zoo.export_onnx("googlenet")
    feeds = zoo.sample_inputs("googlenet", batch=1)
    engine = ember.build(str(path), ember.BuildConfig(device="cuda", precision="fp32"))
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    for got, want in zip(out.values(), ref):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)
    assert "of 9 Concats" in format_engine(engine.plan, layers=False)

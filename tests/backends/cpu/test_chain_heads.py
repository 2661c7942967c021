"""Chain heads (``ember.backends.cpu.chains``, the extension's ``HeadLayer`` / ``Head``): the global
average pooling after a chain of persistent convolutions, and the classifier after it, run in the
chain's C++ call on the last output as the chain lays it out. Every exporter's spelling of a
classifier head (GlobalAveragePool or ReduceMean; Flatten, Reshape or Squeeze; Gemm in either
orientation, with a bias of any broadcast shape, or MatMul) computes what ONNX Runtime computes;
what is not a head (a pooled tensor that is also a graph output, a Gemm with alpha, a
non-constant weight) stays outside the chain and is still right."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import onnx
import pytest
from cpukit import blocked_layout  # tests/backends/cpu/cpukit.py
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.cpu.chains import HEAD_ENV, LAYOUT_ENV
from ember.tools.runners import max_rel_error

pytestmark = pytest.mark.usefixtures("fresh_native")

N, C, HW, OUT = 2, 24, 10, 7


@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_head_pools_and_classifies_as_pytorch_does(ext: Any, layout: str, with_bias: bool):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(OUT, C, generator=g), torch.randn(OUT, generator=g)
    x = torch.randn(N, C, HW, HW, generator=g).contiguous(memory_format=torch.channels_last)
    head = ext.HeadLayer(w, b if with_bias else None).prepare([N, C, HW, HW], layout)
    assert head.has_classifier and head.dst_dims == [N, OUT]
    y = head.run(x if layout == "nhwc" else blocked_layout(x))
    want = F.linear(x.mean((2, 3)), w, b if with_bias else None)
    assert tuple(y.shape) == (N, OUT) and y.is_contiguous()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flat", [False, True])
def test_a_head_without_a_classifier_only_pools(ext: Any, flat: bool):
    import torch

    x = torch.randn(N, C, HW, HW).contiguous(memory_format=torch.channels_last)
    head = ext.HeadLayer().prepare([N, C, HW, HW], "nhwc", flat)
    assert not head.has_classifier
    y = head.run(x)
    want = x.mean((2, 3)) if flat else x.mean((2, 3), keepdim=True)
    assert tuple(y.shape) == tuple(want.shape)
    torch.testing.assert_close(y, want.contiguous(), rtol=1e-6, atol=1e-6)


def test_a_chain_ends_in_its_head_and_a_mismatched_head_is_refused(ext: Any):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    w1, w2 = torch.randn(C, C, 3, 3, generator=g) * 0.2, torch.randn(C, C, 1, 1, generator=g) * 0.2
    wc, bc = torch.randn(OUT, C, generator=g), torch.randn(OUT, generator=g)
    dims = [N, C, HW, HW]
    a = ext.Layer(w1, None, [1, 1], [1, 1], 1, "relu").prepare(dims, [1, 1], [1, 1])
    b = ext.Layer(w2, None, [1, 1], [1, 1], 1, "relu").prepare(dims, [0, 0], [0, 0])
    head = ext.HeadLayer(wc, bc).prepare(dims, "nhwc")
    x = torch.randn(*dims, generator=g).contiguous(memory_format=torch.channels_last)
    y = ext.run_chain([a, b], x, [-1, 0], [-2, -2], [-2, -2], [1, 1], [True, True], [0, 0], head)
    want = F.linear(F.conv2d(F.conv2d(x, w1, padding=1).relu(), w2).relu().mean((2, 3)), wc, bc)
    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
    other = ext.HeadLayer(wc, bc).prepare([N, C, HW, HW], "blocked")  # the chain's output is channels-last
    with pytest.raises(ValueError, match="head was made for another layout, type or shape"):
        ext.run_chain([a, b], x, [-1, 0], [-2, -2], [-2, -2], [1, 1], [True, True], [0, 0], other)


def test_head_layers_refuse_what_they_cannot_compute_with_errors_that_say_why(ext: Any):
    import torch

    with pytest.raises(ValueError, match=r"non-empty 2-D float32 tensor \[O, C\], got Double"):
        ext.HeadLayer(torch.ones(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="the head's bias has 2 values for 3 outputs"):
        ext.HeadLayer(torch.ones(3, 4), torch.ones(2))
    with pytest.raises(ValueError, match="without a classifier weight takes no bias"):
        ext.HeadLayer(None, torch.ones(3))
    with pytest.raises(ValueError, match="input has 5 channels, its classifier weight expects 4"):
        ext.HeadLayer(torch.ones(3, 4)).prepare([1, 5, 2, 2], "nhwc")
    with pytest.raises(ValueError, match="non-empty"):
        ext.HeadLayer().prepare([1, 5, 0, 2], "nhwc")
    head = ext.HeadLayer(torch.ones(3, 4)).prepare([1, 4, 2, 2], "nhwc")
    with pytest.raises(ValueError, match=r"input has shape \[1, 4, 2, 3\], the primitive was made for \[1, 4, 2, 2\]"):
        head.run(torch.ones(1, 4, 2, 3).contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="input must be channels-last"):
        head.run(torch.ones(1, 4, 2, 2))


# ----------------------------------------------------------------------------- whole engines


def _init(rng: np.random.Generator, name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(head: list, inits: list, out_shape: list, opset: int = 17,
           extra_outputs: Optional[list] = None) -> onnx.ModelProto:
    """Two Conv+Relu layers (a chain) on [N, 3, HW, HW], then ``head`` (nodes reading "r1",
    writing "y")."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r1"])] + head
    inits = [_init(rng, "w0", C, 3, 3, 3), _init(rng, "b0", C), _init(rng, "w1", C, C, 1, 1),
             _init(rng, "b1", C)] + inits
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)] + (extra_outputs or [])
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, 3, HW, HW])],
                          outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _classifier(kind: str) -> tuple[list, list]:
    """Nodes reading "flat" [N, C], writing "y" [N, OUT], and their initializers."""
    rng = np.random.default_rng(1)
    if kind == "gemm":
        return [helper.make_node("Gemm", ["flat", "wc", "bc"], ["y"], transB=1)], \
            [_init(rng, "wc", OUT, C), _init(rng, "bc", OUT)]
    if kind == "gemm-b-not-transposed-bias-row":
        return [helper.make_node("Gemm", ["flat", "wc", "bc"], ["y"])], \
            [_init(rng, "wc", C, OUT), _init(rng, "bc", 1, OUT)]
    if kind == "gemm-scalar-bias":
        return [helper.make_node("Gemm", ["flat", "wc", "bc"], ["y"], transB=1)], \
            [_init(rng, "wc", OUT, C), _init(rng, "bc", 1)]
    if kind == "gemm-no-bias":
        return [helper.make_node("Gemm", ["flat", "wc"], ["y"], transB=1)], [_init(rng, "wc", OUT, C)]
    if kind == "matmul":
        return [helper.make_node("MatMul", ["flat", "wc"], ["y"])], [_init(rng, "wc", C, OUT)]
    raise AssertionError(kind)


def _pool_flatten(kind: str, opset: int) -> tuple[list, list]:
    """Nodes reading "r1", writing "flat" [N, C]."""
    if kind == "gap-flatten":
        return [helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
                helper.make_node("Flatten", ["p"], ["flat"], axis=1)], []
    if kind == "gap-reshape":  # the dynamo exporter's spelling
        return [helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
                helper.make_node("Reshape", ["p", "shape"], ["flat"])], \
            [numpy_helper.from_array(np.array([N, C], np.int64), "shape")]
    if kind == "gap-squeeze":
        return [helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
                helper.make_node("Squeeze", ["p", "axes"], ["flat"])], \
            [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    if kind == "mean-keepdims-0":  # torch.mean(x, (2, 3)) at opset 18+: axes an input
        return [helper.make_node("ReduceMean", ["r1", "axes"], ["flat"], keepdims=0)], \
            [numpy_helper.from_array(np.array([-1, -2], np.int64), "axes")]
    raise AssertionError(kind)


def _engine(model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch, layout: str = "nhwc", heads: str = "1",
            **config: Any) -> Any:
    monkeypatch.setenv(LAYOUT_ENV, layout)
    monkeypatch.setenv(HEAD_ENV, heads)
    return ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu", **config), progress=False)


def _chain_names(engine: Any) -> list[str]:
    return [s.name for s in engine.compile().chained or () if s.kind == "Chain"]


def _check_against_ort(engine: Any, model: onnx.ModelProto, seed: int = 2) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).standard_normal((N, 3, HW, HW)).astype(np.float32)
    bad = x.copy()
    bad[1, 0, 3, 3] = np.nan  # a NaN run goes layer by layer: NaN out where ONNX Runtime has it
    with engine.create_context() as ctx:
        for feed in (x, bad, x):
            got, want = ctx.infer({"x": feed}), sess.run(None, {"x": feed})
            for name, w in zip([o.name for o in model.graph.output], want):
                np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(w))
                assert got[name].shape == w.shape
                assert max_rel_error(np.nan_to_num(got[name]), np.nan_to_num(w)) < 1e-5, name


@pytest.mark.parametrize("pool", ["gap-flatten", "gap-reshape", "gap-squeeze", "mean-keepdims-0"])
@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
def test_every_spelling_of_a_classifier_head_runs_in_the_chain(ext: Any, monkeypatch: pytest.MonkeyPatch,
                                                                pool: str, layout: str):
    p_nodes, p_inits = _pool_flatten(pool, 18)
    c_nodes, c_inits = _classifier("gemm")
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT], opset=18)
    engine = _engine(model, monkeypatch, layout)
    steps = 2 if pool == "mean-keepdims-0" else 3
    blocked = ", blocked" if layout == "blocked" else ""
    first, last = engine.plan.layers[0].name, engine.plan.layers[-1].name
    assert _chain_names(engine) == [f"{first} .. {last} (2 layers chained and a head of {steps}{blocked})"]
    _check_against_ort(engine, model)


@pytest.mark.parametrize("kind", ["gemm-b-not-transposed-bias-row", "gemm-scalar-bias", "gemm-no-bias", "matmul"])
def test_every_form_of_the_classifier_runs_in_the_head(ext: Any, monkeypatch: pytest.MonkeyPatch, kind: str):
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier(kind)
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT])
    engine = _engine(model, monkeypatch)
    assert _chain_names(engine)[0].endswith("(2 layers chained and a head of 3)")
    _check_against_ort(engine, model)


def test_a_head_that_only_pools(ext: Any, monkeypatch: pytest.MonkeyPatch):
    model = _model([helper.make_node("GlobalAveragePool", ["r1"], ["y"])], [], [N, C, 1, 1])
    for layout in ("nhwc", "blocked"):
        engine = _engine(model, monkeypatch, layout)
        blocked = ", blocked" if layout == "blocked" else ""
        assert _chain_names(engine)[0].endswith(f"(2 layers chained and a head of 1{blocked})")
        _check_against_ort(engine, model)


def test_what_is_not_a_head_stays_outside_the_chain_and_is_still_right(ext: Any, monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(3)
    # the pooled tensor is also a graph output: the head stops before it is read elsewhere
    p_nodes, _ = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier("gemm")
    model = _model(p_nodes + c_nodes, c_inits, [N, OUT],
                   extra_outputs=[helper.make_tensor_value_info("p", TensorProto.FLOAT, [N, C, 1, 1])])
    engine = _engine(model, monkeypatch)
    assert _chain_names(engine)[0].endswith("(2 layers chained and a head of 1)")  # the pooling, no further
    _check_against_ort(engine, model)
    # a Gemm with alpha: pooled and flattened in the head, the Gemm on its own
    model = _model(p_nodes + [helper.make_node("Gemm", ["flat", "wc", "bc"], ["y"], transB=1, alpha=0.5)],
                   c_inits, [N, OUT])
    engine = _engine(model, monkeypatch)
    assert _chain_names(engine)[0].endswith("(2 layers chained and a head of 2)")
    _check_against_ort(engine, model)
    # a classifier whose weight is an input, not a constant
    model = _model(p_nodes + [helper.make_node("MatMul", ["flat", "wc"], ["y"])], [], [N, OUT])
    model.graph.input.append(helper.make_tensor_value_info("wc", TensorProto.FLOAT, [C, OUT]))
    engine = _engine(model, monkeypatch)
    assert _chain_names(engine)[0].endswith("(2 layers chained and a head of 2)")
    import onnxruntime as ort

    x = rng.standard_normal((N, 3, HW, HW)).astype(np.float32)
    wc = rng.standard_normal((C, OUT)).astype(np.float32)
    with engine.create_context() as ctx:
        got = ctx.infer({"x": x, "wc": wc})["y"]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "wc": wc})[0]
    assert max_rel_error(got, want) < 1e-5
    # heads switched off: the chain ends at its last convolution
    p_nodes, _ = _pool_flatten("gap-flatten", 17)
    model = _model(p_nodes + c_nodes, c_inits, [N, OUT])
    assert _chain_names(_engine(model, monkeypatch, heads="0"))[0].endswith("(2 layers chained)")


@pytest.mark.parametrize("winner", ["nhwc", "blocked"])
def test_a_tuned_engine_keeps_one_packed_weight_per_layer_and_a_loaded_one_runs_its_head(
        ext: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, winner: str):
    """Whichever layout the build's timing picks, the program it tuned (the one the built engine
    runs) keeps one packed weight per convolution and one for the classifier: the other layout's
    primitives, which the steps' chain kernels held until they were made again, are gone."""
    import ember.backends.cpu.chains as chains

    def timed(variants: Any, ext: Any, x: Any, budget_s: float = 2.0) -> dict:
        return {k: (1.0 if k == winner else 2.0) for k in variants}

    monkeypatch.setattr(chains, "time_layouts", timed)
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier("gemm")
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT])
    engine = _engine(model, monkeypatch, "auto")
    assert next(iter(engine.plan.build_info["chain_layouts"].values()))["layout"] == winner
    program = engine.compile()
    assert [c.layout for c in program._chains] == [winner]
    assert [c.head_layer.weight_copies for c in program._chains] == [1]
    assert [link.layer.weight_copies for link in chains.links(program.steps, program._chains[0])] == [1, 1]
    _check_against_ort(engine, model)
    engine.save(tmp_path / "head.ember")
    loaded = ember.load(str(tmp_path / "head.ember"))
    assert "head of 3" in _chain_names(loaded)[0]
    _check_against_ort(loaded, model)


def test_an_int8_chain_ends_in_a_head_that_pools_its_float_output(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """In an INT8 engine the last convolution writes float32 for the pooling: the head pools and
    flattens in the chain, the INT8 classifier stays on its own, and the outputs are those of the
    engine without heads (within a step of the classifier's 8-bit input)."""
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier("gemm")
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT])
    rng = np.random.default_rng(5)
    calib = [{"x": rng.standard_normal((N, 3, HW, HW)).astype(np.float32)} for _ in range(4)]
    engines = {}
    for heads in ("1", "0"):
        monkeypatch.setenv(HEAD_ENV, heads)
        monkeypatch.setenv(LAYOUT_ENV, "nhwc")
        engines[heads] = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu", precision="int8"),
                                     calibration_data=calib, progress=False)
    names = _chain_names(engines["1"])
    if not names:
        pytest.skip("no INT8 chain here (the INT8 convolutions took another tactic)")
    assert names[0].endswith("(2 layers chained and a head of 2)")
    assert _chain_names(engines["0"])[0].endswith("(2 layers chained)")
    x = calib[0]["x"]
    with engines["1"].create_context() as a, engines["0"].create_context() as b:
        got, want = a.infer({"x": x})["y"], b.infer({"x": x})["y"]
    assert max_rel_error(got, want) < 2e-2


def test_a_layers_head_role_holds_its_constants_without_copying_them(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """Every Gemm / MatMul by a constant gets a head role, most never run in a head (BERT's): the
    role refers to the program's constants; only a head's own layer packs a copy."""
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _classifier("matmul")
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT])
    program = _engine(model, monkeypatch).compile()
    (role,) = [s.head for s in program.steps if s.head is not None and s.head.kind == "gemm"]
    assert role.b.data_ptr() == program.constants["wc"].data_ptr()
    assert tuple(role.weight().shape) == (OUT, C) and role.bias() is None


# ----------------------------------------------------------------------------- classifiers of several layers


def test_a_head_runs_dense_layers_one_after_another_with_their_activations(ext: Any):
    """``HeadLayer.then`` adds a dense layer reading the previous one's output, each with its
    activation fused (MobileNetV3's Linear -> HardSwish -> Linear, VGG's Linear -> ReLU -> ...)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    w1, b1 = torch.randn(16, C, generator=g), torch.randn(16, generator=g)
    w2, w3, b3 = torch.randn(12, 16, generator=g), torch.randn(OUT, 12, generator=g), torch.randn(OUT, generator=g)
    x = (torch.randn(N, C, HW, HW, generator=g) * 4).contiguous(memory_format=torch.channels_last)
    for layout in ("nhwc", "blocked"):
        layer = ext.HeadLayer(w1, b1, "hardswish", 1.0 / 6.0, 0.5)
        layer.then(w2, None, "clip", -0.5, 2.0)
        layer.then(w3, b3)
        head = layer.prepare([N, C, HW, HW], layout)
        assert head.dense_layers == 3 and head.dst_dims == [N, OUT]
        y = head.run(x if layout == "nhwc" else blocked_layout(x))
        want = F.linear(F.linear(F.hardswish(F.linear(x.mean((2, 3)), w1, b1)), w2).clamp(-0.5, 2.0), w3, b3)
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)


def test_a_dense_layer_that_does_not_fit_the_one_before_is_refused(ext: Any):
    import torch

    layer = ext.HeadLayer(torch.ones(4, 3), None, "relu")
    with pytest.raises(ValueError, match="dense layer 1 reads 5 values, the layer before writes 4"):
        layer.then(torch.ones(2, 5))
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        layer.then(torch.ones(2, 4), None, "gelu")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        ext.HeadLayer(torch.ones(4, 3), None, "softplus")
    with pytest.raises(ValueError, match="takes no bias and no activation"):
        ext.HeadLayer(None, None, "relu")


def _mlp(acts: list[str]) -> tuple[list, list]:
    """A classifier of ``len(acts) + 1`` Gemms reading "flat", an activation (ONNX op) after each
    but the last, writing "y" [N, OUT]."""
    rng = np.random.default_rng(6)
    widths = [C] + [20 - 3 * k for k in range(len(acts))] + [OUT]
    nodes, inits, x = [], [], "flat"
    for k in range(len(widths) - 1):
        out = "y" if k == len(acts) else f"g{k}"
        nodes.append(helper.make_node("Gemm", [x, f"wm{k}", f"bm{k}"], [out], transB=1))
        inits += [_init(rng, f"wm{k}", widths[k + 1], widths[k], scale=0.5), _init(rng, f"bm{k}", widths[k + 1])]
        if k < len(acts):
            nodes.append(helper.make_node(acts[k], [out], [f"a{k}"]))
            x = f"a{k}"
    return nodes, inits


@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
@pytest.mark.parametrize("acts", [["HardSwish"], ["Relu", "Relu"], ["LeakyRelu", "HardSigmoid", "Relu"],
                                  ["Sigmoid", "Tanh"]])
def test_a_classifier_of_several_layers_runs_in_the_head(ext: Any, monkeypatch: pytest.MonkeyPatch, layout: str,
                                                        acts: list[str]):
    """Gemm + activation layers (FusedGemm after the optimizer) and the last Gemm all run in the
    head; a run with NaN goes layer by layer and keeps NaN where ONNX Runtime does."""
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _mlp(acts)
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT])
    engine = _engine(model, monkeypatch, layout)
    blocked = ", blocked" if layout == "blocked" else ""
    assert _chain_names(engine)[0].endswith(f"(2 layers chained and a head of {3 + len(acts)}{blocked})")
    _check_against_ort(engine, model)


def test_a_dense_layer_whose_activation_is_not_fused_ends_the_head(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """GELU is no head activation (oneDNN's turns +inf into NaN): the head stops before that layer,
    which runs on its own, as does everything after it."""
    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _mlp(["Gelu"])
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT], opset=20)
    engine = _engine(model, monkeypatch)
    assert _chain_names(engine)[0].endswith("(2 layers chained and a head of 2)")
    _check_against_ort(engine, model)


def test_a_head_activation_is_fused_only_where_nothing_upstream_makes_infinity(ext: Any,
                                                                              monkeypatch: pytest.MonkeyPatch):
    """An Exp between the chain and the classifier can turn finite values into infinity (then NaN
    in the GEMM), which a fused ReLU would turn into 0: that layer runs on its own."""
    c_nodes, c_inits = _mlp(["Relu"])
    model = _model([helper.make_node("Exp", ["r1"], ["e"]), helper.make_node("GlobalAveragePool", ["e"], ["p"]),
                    helper.make_node("Flatten", ["p"], ["flat"], axis=1)] + c_nodes, c_inits, [N, OUT])
    engine = _engine(model, monkeypatch)
    program = engine.compile()
    roles = [s.head.kind for s in program.steps if s.head is not None]
    assert roles == ["pool", "flatten", "gemm"]  # the last Gemm only: the FusedGemm + Relu has no role
    _check_against_ort(engine, model)


def test_a_profile_gives_a_heads_dense_time_to_its_first_layer_and_the_steps_of_a_chain_theirs(
        ext: Any, monkeypatch: pytest.MonkeyPatch):
    """``ember profile`` of a chain with a squeeze-free tail and a two-layer classifier: each
    convolution its own time, the pooling and the first dense layer the head's, the second dense
    layer 0 ms "in chain head", so the layers add up to the chain's time once."""
    from ember.tools.profile import profile_engine

    p_nodes, p_inits = _pool_flatten("gap-flatten", 17)
    c_nodes, c_inits = _mlp(["Relu"])
    model = _model(p_nodes + c_nodes, p_inits + c_inits, [N, OUT])
    engine = _engine(model, monkeypatch)
    x = np.random.default_rng(4).standard_normal((N, 3, HW, HW)).astype(np.float32)
    layers, _ = profile_engine(engine, {"x": x}, iterations=3, warmup=1)
    notes = [lay.tactic.partition(" (")[2].rstrip(")") for lay in layers]
    assert notes == ["chained", "chained", "chain head", "chain head", "chain head", "in chain head"]
    ms = [lay.median for lay in layers]
    assert ms[0] > 0 and ms[1] > 0 and ms[4] > 0 and ms[5] == 0.0

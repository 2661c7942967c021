"""NaN in means NaN out, as ONNX Runtime does, on every CPU tactic of a fused layer: oneDNN's relu
and hardtanh post-ops turn NaN into 0, so those activations run after the call (issue 17).

Every epilogue activation (each ONNX spelling the fusion passes recognize) after every kind of
producer (convolutions 3x3, 1x1, depthwise and residual; MatMul+Add and Gemm; alone), and every
pooling op, alone and after a fused conv, runs on every CPU tactic its layers have, with NaN,
+inf and -inf inputs; NaN, +inf and -inf must land where ONNX Runtime puts them."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.runtime.engine import Engine

RNG = np.random.default_rng(0)


def _model(kind: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(RNG.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(0, 0.1, 8).astype(np.float32), "b")
    lo = numpy_helper.from_array(np.array(0, np.float32), "lo")
    hi = numpy_helper.from_array(np.array(6, np.float32), "hi")
    wm = numpy_helper.from_array(RNG.normal(0, 0.3, (4, 6)).astype(np.float32), "wm")
    bm = numpy_helper.from_array(RNG.normal(0, 0.1, 6).astype(np.float32), "bm")
    inits, shape = [w, b, lo, hi, wm, bm], [1, 4, 6, 6]
    conv = helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])
    if kind == "conv_relu":
        nodes, out = [conv, helper.make_node("Relu", ["c"], ["y"])], [1, 8, 6, 6]
    elif kind == "conv_relu6":
        nodes, out = [conv, helper.make_node("Clip", ["c", "lo", "hi"], ["y"])], [1, 8, 6, 6]
    elif kind == "conv_add_relu":  # a residual block: relu(conv(x) + x)
        inits[0] = numpy_helper.from_array(RNG.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w")
        nodes = [conv, helper.make_node("Add", ["c", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
        shape, out = [1, 8, 6, 6], [1, 8, 6, 6]
    else:  # gemm_relu
        shape, out = [3, 4], [3, 6]
        nodes = [helper.make_node("MatMul", ["x", "wm"], ["m"]), helper.make_node("Add", ["m", "bm"], ["s"]),
                 helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older ONNX Runtimes too (the GPU machine's)
    return model


@pytest.mark.parametrize("kind", ["conv_relu", "conv_relu6", "conv_add_relu", "gemm_relu"])
@pytest.mark.parametrize("fill", [np.nan, np.inf, "one_nan"])
def test_non_finite_inputs_stay_non_finite_like_onnxruntime(kind, fill):
    model = _model(kind)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.normal(0, 1, shape).astype(np.float32)
    if fill == "one_nan":
        x.reshape(-1)[5] = np.nan
    else:
        x[:] = fill
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    assert any(layer.kind in ("FusedConv", "FusedGemm") for layer in engine.plan.layers)
    with engine.create_context() as ctx:
        got = ctx.infer({"x": x})["y"]
    nans = (int(np.isnan(got).sum()), int(np.isnan(want).sum()))
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{kind}: NaN count {nans[0]}, ONNX Runtime's {nans[1]}"
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-5)


def test_an_index_out_of_range_is_the_inputs_fault():
    """A Gather index past the table is an ``IndexRangeError``: an ``InputError`` (the values given
    are at fault; ``ember serve`` answers 400) and the node's ``GraphError``."""
    table = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2), "t")
    graph = helper.make_graph([helper.make_node("Gather", ["t", "ids"], ["y"], name="lookup")], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])], [table])
    engine = ember.build(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                         ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        assert ctx.infer({"ids": np.array([0, 1, 2, 3])})["y"].shape == (4, 2)
        with pytest.raises(ember.IndexRangeError, match="'lookup'.*index out of range") as info:
            ctx.infer({"ids": np.array([0, 1, 2, 99])})
    assert isinstance(info.value, ember.InputError) and isinstance(info.value, ember.GraphError)


# ---- every activation epilogue, every producer and every CPU tactic ---------------------------------
#: ONNX spellings of each epilogue ``Activation``: (opset, nodes from "c" to "y", initializers)
def _act_nodes(kind: str) -> tuple[int, list, list]:
    make, const = helper.make_node, numpy_helper.from_array
    one = {"relu": [make("Relu", ["c"], ["y"])],
           "leaky_relu": [make("LeakyRelu", ["c"], ["y"], alpha=0.1)],
           "sigmoid": [make("Sigmoid", ["c"], ["y"])],
           "tanh": [make("Tanh", ["c"], ["y"])],
           "hard_sigmoid": [make("HardSigmoid", ["c"], ["y"], alpha=0.2, beta=0.5)],
           "hard_swish": [make("HardSwish", ["c"], ["y"])],
           "gelu_erf": [make("Gelu", ["c"], ["y"])],
           "gelu_tanh": [make("Gelu", ["c"], ["y"], approximate="tanh")],
           "silu": [make("Sigmoid", ["c"], ["g"]), make("Mul", ["c", "g"], ["y"])],
           "hard_swish_pattern": [make("HardSigmoid", ["c"], ["g"], alpha=1 / 6, beta=0.5),
                                  make("Mul", ["c", "g"], ["y"])],
           "clip": [make("Clip", ["c", "lo", "hi"], ["y"])],
           "relu6": [make("Clip", ["c", "zero", "six"], ["y"])],
           "none": [make("Identity", ["c"], ["y"])]}[kind]
    bounds = {"clip": [const(np.array(-1.5, np.float32), "lo"), const(np.array(2.5, np.float32), "hi")],
              "relu6": [const(np.array(0, np.float32), "zero"), const(np.array(6, np.float32), "six")]}
    return 20, one, bounds.get(kind, [])


ACTIVATIONS = ["relu", "relu6", "clip", "leaky_relu", "sigmoid", "silu", "hard_swish", "hard_swish_pattern",
               "hard_sigmoid", "tanh", "gelu_erf", "gelu_tanh", "none"]
PRODUCERS = ["conv3x3", "conv1x1", "depthwise", "conv_residual", "matmul_add", "gemm", "alone"]


def _producer(kind: str) -> tuple[list[int], list, list]:
    """(input shape, nodes from "x" to "c", initializers) of the layer the activation is fused into."""
    make, const = helper.make_node, numpy_helper.from_array
    rng = np.random.default_rng(1)

    def w(*shape: int):  # the first half of the outputs only adds: +-inf inputs give +-inf before the act
        v = rng.normal(0, 0.3, shape).astype(np.float32)
        half = shape[0] // 2
        v[:half] = np.abs(v[:half])
        return v
    if kind == "conv3x3":
        return [4, 4, 6, 6], [make("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])], \
            [const(w(8, 4, 3, 3), "w"), const(w(8), "b")]
    if kind == "conv1x1":
        return [4, 8, 5, 5], [make("Conv", ["x", "w", "b"], ["c"])], [const(w(16, 8, 1, 1), "w"), const(w(16), "b")]
    if kind == "depthwise":
        return [4, 8, 6, 6], [make("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], group=8)], \
            [const(w(8, 1, 3, 3), "w"), const(w(8), "b")]
    if kind == "conv_residual":  # act(conv(x) + x)
        nodes = [make("Conv", ["x", "w", "b"], ["r"], pads=[1, 1, 1, 1]), make("Add", ["r", "x"], ["c"])]
        return [4, 8, 6, 6], nodes, [const(w(8, 8, 3, 3), "w"), const(w(8), "b")]
    if kind == "matmul_add":
        return [4, 12], [make("MatMul", ["x", "w"], ["m"]), make("Add", ["m", "b"], ["c"])], \
            [const(np.ascontiguousarray(w(6, 12).T), "w"), const(w(6), "b")]
    if kind == "gemm":
        return [4, 12], [make("Gemm", ["x", "w", "b"], ["c"], transB=1)], [const(w(6, 12), "w"), const(w(6), "b")]
    return [4, 3, 5], [make("Identity", ["x"], ["c"])], []  # the activation alone (elementwise kernels)


def _epilogue_model(producer: str, act: str) -> onnx.ModelProto:
    shape, nodes, inits = _producer(producer)
    opset, act_nodes, act_inits = _act_nodes(act)
    graph = helper.make_graph(nodes + act_nodes, f"{producer}_{act}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits + act_inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def _non_finite_batch(shape: list[int]) -> np.ndarray:
    """Sample 0 all NaN, 1 all +inf, 2 all -inf, 3 finite with one NaN, one +inf and one -inf (every
    producer keeps the samples of a batch apart, so each row checks one kind of input)."""
    x = np.random.default_rng(2).normal(0, 1, shape).astype(np.float32)
    x[0], x[1], x[2] = np.nan, np.inf, -np.inf
    flat = x[3].reshape(-1)
    flat[[1, flat.size // 2, flat.size - 2]] = [np.nan, np.inf, -np.inf]
    return x


def _with_tactic(engine: ember.Engine, index: int, tactic: str) -> ember.Engine:
    layers = list(engine.plan.layers)
    layers[index] = dataclasses.replace(layers[index], tactic=tactic)
    return Engine(dataclasses.replace(engine.plan, layers=layers))


def _tactic_runs(engine: ember.Engine) -> list[tuple[str, ember.Engine]]:
    """The engine as built, and once more for every other CPU tactic of each of its layers."""
    from ember.backends.cpu.registry import candidates

    plan, runs = engine.plan, [("built", engine)]
    for i, (node, layer) in enumerate(zip(plan.graph.nodes, plan.layers)):
        for tactic in candidates(node, plan.graph, plan.records):
            if tactic != layer.tactic:
                runs.append((f"{layer.name}:{tactic}", _with_tactic(engine, i, tactic)))
    return runs


def _onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def assert_like_onnxruntime(model: onnx.ModelProto, x: np.ndarray, label: str, fused: tuple[str, ...] = (),
                            want: np.ndarray | None = None) -> None:
    """Every CPU tactic of the engine gives NaN, +inf and -inf where ONNX Runtime does (or where
    ``want`` has them), and its finite values within fp32 tolerance."""
    want = _onnxruntime(model, x) if want is None else want
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    if fused:
        assert any(layer.kind in fused for layer in engine.plan.layers), [layer.kind for layer in engine.plan.layers]
    for tactic, e in _tactic_runs(engine):
        with e.create_context() as ctx:
            got = np.asarray(ctx.infer({"x": x})["y"])
        where = f"{label}, tactic {tactic}"
        assert got.shape == want.shape, where
        for what, mask in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
            bad = np.argwhere(mask(got) != mask(want))
            assert not len(bad), (f"{where}: {what} at {len(bad)} places where ONNX Runtime differs, first "
                                  f"{tuple(bad[0])}: got {got[tuple(bad[0])]}, ONNX Runtime {want[tuple(bad[0])]}")
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-5, err_msg=where)


@pytest.mark.parametrize("producer, act", [(p, a) for p in PRODUCERS for a in ACTIVATIONS
                                            if (p, a) != ("alone", "none")])  # that one has no layer
def test_every_activation_epilogue_keeps_non_finite_values_like_onnxruntime(producer, act):
    model = _epilogue_model(producer, act)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    fused = ("FusedConv",) if producer.startswith(("conv", "depth")) else \
        ("FusedGemm",) if producer in ("matmul_add", "gemm") else ()
    if act == "none" and producer != "conv_residual":
        fused += ("Conv", "Gemm", "MatMul")
    assert_like_onnxruntime(model, _non_finite_batch(shape), f"{producer} + {act}", fused)


# ---- pooling ---------------------------------------------------------------------------------------
POOLS = {
    "maxpool_2x2": lambda: helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    "maxpool_3x3_pad_ceil": lambda: helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                                     pads=[1, 1, 1, 1], ceil_mode=1),
    "maxpool_dilated": lambda: helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]),
    "avgpool_2x2": lambda: helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    "avgpool_pad_exclude": lambda: helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                    pads=[1, 1, 1, 1], count_include_pad=0),
    "avgpool_pad_include": lambda: helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                                    pads=[1, 1, 1, 1], count_include_pad=1),
    "avgpool_asymmetric": lambda: helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                                   pads=[0, 0, 1, 2]),
    "global_avgpool": lambda: helper.make_node("GlobalAveragePool", ["x"], ["y"]),
    "global_maxpool": lambda: helper.make_node("GlobalMaxPool", ["x"], ["y"]),
    "lppool_p2": lambda: helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], p=2),
}


def _pool_model(kind: str, after_conv: bool) -> onnx.ModelProto:
    nodes, inits = [POOLS[kind]()], []
    if after_conv:  # conv + relu + pool: the pool reads a fused layer's output (and may be written into)
        nodes[0].input[0] = "a"
        w = numpy_helper.from_array(np.random.default_rng(3).normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w")
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["a"])] + nodes
        inits = [w]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4, 7, 7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def _max_pool_expected(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's max pooling with a NaN in the window made NaN.

    ONNX Runtime's MaxPool and GlobalMaxPool compare with ``>``, so a window's NaN is dropped or
    kept by where it lies (and a padded window of NaN alone gives -FLT_MAX): no rule to follow.
    Ember's max pooling propagates NaN from any place in the window, as PyTorch, NumPy's ``max``
    and ONNX's ReduceMax do; windows without NaN must match ONNX Runtime exactly (infinities too).
    """
    want = _onnxruntime(model, x)
    first = model.graph.node[0]
    if first.op_type == "Conv":  # the pool reads relu(conv(x)): find its NaN with ONNX Runtime
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.node[2:]
        probe.graph.output[0].name = "a"
        pooled_in = _onnxruntime(probe, x)
    else:
        pooled_in = x
    indicator = onnx.ModelProto()
    indicator.CopyFrom(model)
    if first.op_type == "Conv":
        del indicator.graph.node[:2]
        indicator.graph.node[0].input[0] = "x"
        del indicator.graph.initializer[:]
    has_nan = _onnxruntime(indicator, np.isnan(pooled_in).astype(np.float32)) > 0
    want[has_nan] = np.nan
    # ONNX Runtime starts a window's max at -FLT_MAX, so a window of -inf alone gives -FLT_MAX; the
    # max of -inf values is -inf (ONNX's reference implementation, PyTorch, NumPy)
    want[want == np.finfo(np.float32).min] = -np.inf
    return want


@pytest.mark.parametrize("after_conv", [False, True], ids=["alone", "after_conv_relu"])
@pytest.mark.parametrize("kind", list(POOLS))
def test_pooling_keeps_non_finite_values_like_onnxruntime(kind, after_conv):
    x = _non_finite_batch([4, 4, 7, 7])
    model = _pool_model(kind, after_conv)
    want = _max_pool_expected(model, x) if "maxpool" in kind else None
    assert_like_onnxruntime(model, x, f"{kind} ({'after conv' if after_conv else 'alone'})", want=want)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["conv_relu", "conv_relu6", "conv_add_relu", "gemm_relu"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_non_finite_inputs_stay_non_finite_on_cuda(kind, precision):
    """The same on CUDA, every tactic the build picks (cuDNN, cuBLASLt, Triton epilogues); see
    bench/probes/cuda_nan.py for what each did before the Triton and fp16 cuBLASLt fixes."""
    model = _model(kind)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.normal(0, 1, shape).astype(np.float32)
    x.reshape(-1)[5] = np.nan
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    engine = ember.build(model, ember.BuildConfig(device="cuda", precision=precision))
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer({"x": x})["y"])
    assert np.array_equal(np.isnan(got), np.isnan(want)), [layer.tactic for layer in engine.plan.layers]


UNARY_ONNX = ["Sign", "Abs", "Neg", "Floor", "Ceil", "Round", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt",
              "Erf", "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "LeakyRelu",
              "Sin", "Cos", "Atan", "Asinh", "Sinh", "Reciprocal", "Mish", "Gelu"]


@pytest.mark.parametrize("op", UNARY_ONNX)
def test_unary_ops_keep_nan_like_onnxruntime(op):
    """A one-input op on NaN, infinities and ordinary values: NaN exactly where ONNX Runtime has it
    (``torch.sign`` alone gave 0 for NaN)."""
    import onnxruntime as ort

    opset = 20 if op == "Gelu" else 18
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "unary",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString()
    x = np.array([np.nan, -np.inf, np.inf, -2.5, -0.5, 0.0, 0.5, 3.0], np.float32)
    with ember.build(model, ember.BuildConfig(device="cpu"), progress=False).create_context() as ctx:
        got = ctx.infer({"x": x})["y"]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0])


def _attention_model(mask_shape: list[int]) -> bytes:
    """softmax(q @ k^T * s + mask) @ v written out, as exporters write it (Ember fuses it)."""
    b, h, s, d = 2, 2, 4, 8
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]), helper.make_node("Mul", ["qk", "sc"], ["qks"]),
             helper.make_node("Add", ["qks", "mask"], ["qkm"]), helper.make_node("Softmax", ["qkm"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [b, h, s, d]) for n in "qkv"]
    inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, mask_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, h, s, d])
    scale = numpy_helper.from_array(np.array(d ** -0.5, np.float32), "sc")
    g = helper.make_graph(nodes, "attention", inputs, [y], [scale])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older ONNX Runtimes too (the GPU machine's)
    return model.SerializeToString()


def _attention_feeds(mask_shape: list[int]) -> dict[str, np.ndarray]:
    r = np.random.default_rng(5)
    feeds = {n: r.standard_normal((2, 2, 4, 8)).astype(np.float32) for n in "qkv"}
    mask = np.zeros(mask_shape, np.float32)
    if mask_shape[2] > 1:
        mask[0, 0, 1, :] = -np.inf  # query 1 of batch 0 sees no key
        mask[1, 0, 2, 3] = -np.inf  # a partly masked row
        mask[1, 0, 3, :] = np.finfo(np.float32).min  # Hugging Face's mask value: a uniform row, not NaN
    else:
        mask[1, 0, 0, :] = -np.inf  # batch 1 sees no key at all
    feeds["mask"] = mask
    return feeds


@pytest.mark.parametrize("mask_shape", [[2, 1, 4, 4], [2, 1, 1, 4]], ids=["per_query", "per_key"])
def test_attention_rows_a_mask_hides_entirely_are_nan_like_onnxruntime(mask_shape):
    """ONNX's softmax of a row of -inf is NaN, and so is that query's output (ONNX Runtime on the
    written-out graph); PyTorch's fused attention gave 0. A row of float32's minimum (Hugging
    Face's masks) is no NaN: a uniform average. The fused kernel and the written-out one (the
    ``math`` tactic) agree."""
    from ember.backends.cpu.kernels.linalg import attention_math

    model = _attention_model(mask_shape)
    feeds = _attention_feeds(mask_shape)
    engine = ember.build(model, ember.BuildConfig(device="cpu"), progress=False)
    assert [lay.kind for lay in engine.plan.layers].count("FusedAttention") == 1
    with engine.create_context() as ctx:
        got = ctx.infer(feeds)["y"]
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-5, atol=1e-5)
    written_out = attention_math(*(torch.from_numpy(feeds[n]) for n in ("q", "k", "v", "mask")), 8 ** -0.5, False)
    np.testing.assert_array_equal(np.isnan(written_out.numpy()), np.isnan(want))


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_attention_rows_a_mask_hides_entirely_are_nan_on_cuda(precision):
    model = _attention_model([2, 1, 4, 4])
    feeds = _attention_feeds([2, 1, 4, 4])
    engine = ember.build(model, ember.BuildConfig(device="cuda", precision=precision), progress=False)
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer(feeds)["y"], np.float32)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_the_cuda_attention_mask_marks_hidden_rows_nan_and_clamps_the_rest():
    """The CUDA kernels' mask (``_mask``, checked here on CPU tensors): a row of -inf becomes NaN
    (which SDPA propagates to that query's output), other -inf entries and float32's minimum clamp
    to the half type's minimum, and a float32 layer's mask keeps its values."""
    from ember.backends.cuda.kernels.attention import _mask

    m = torch.zeros(2, 1, 3, 4)
    m[0, 0, 1, :] = float("-inf")
    m[0, 0, 2, 0] = float("-inf")
    m[1, 0, 0, :] = torch.finfo(torch.float32).min
    half = _mask(m, torch.float16)
    assert half is not None and half.dtype == torch.float16
    assert bool(half[0, 0, 1].isnan().all()) and int(half.isnan().sum()) == 4
    assert float(half[0, 0, 2, 0]) == torch.finfo(torch.float16).min
    assert bool((half[1, 0, 0] == torch.finfo(torch.float16).min).all())
    full = _mask(m, torch.float32)
    assert full is not None and int(full.isnan().sum()) == 4
    assert float(full[1, 0, 0, 0]) == torch.finfo(torch.float32).min
    assert _mask(None, torch.float16) is None
    b = torch.ones(2, 4, dtype=torch.bool)
    assert _mask(b, torch.float16) is b  # boolean masks pass as they are

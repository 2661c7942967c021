"""Tiny ONNX models, one per op and opset variant, with random inputs (reusable by any test).

``all_cases()`` returns ``OpCase(name, model, inputs)`` items; the model's graph inputs are
exactly the keys of ``inputs``, parameters given as initializers are constants. Output types
come from ONNX shape inference. Data is drawn from a fixed seed, so cases are reproducible.

    from tests.conformance.op_models import all_cases
    for case in all_cases():
        ember.build(case.model, ...)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

F32 = np.float32
I64 = np.int64


@dataclass
class OpCase:
    name: str
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    rtol: float = 1e-4
    atol: float = 1e-5
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class _In:
    name: str
    value: np.ndarray
    const: bool


def feed(name: str, value: np.ndarray) -> _In:
    """A graph input (fed at run time)."""
    return _In(name, np.asarray(value), False)


def const(name: str, value) -> _In:
    """An initializer."""
    return _In(name, np.asarray(value), True)


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(sum(map(ord, name)))


def rnd(rng: np.random.Generator, *shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return rng.uniform(lo, hi, size=shape).astype(F32)


def graph_model(name: str, nodes: Sequence[onnx.NodeProto], ins: Sequence[_In],
                outputs: Sequence[str], opset: int) -> OpCase:
    """A model of several nodes; output types by ONNX shape inference."""
    feeds = [i for i in ins if not i.const]
    inits = [numpy_helper.from_array(i.value, i.name) for i in ins if i.const]
    g_inputs = [helper.make_tensor_value_info(
        i.name, helper.np_dtype_to_tensor_dtype(i.value.dtype), list(i.value.shape)) for i in feeds]
    g_outputs = [helper.make_value_info(o, onnx.TypeProto()) for o in outputs]
    graph = helper.make_graph(list(nodes), name, g_inputs, g_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="ember-tests")
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    if all(o.type.tensor_type.HasField("shape") for o in model.graph.output):
        onnx.checker.check_model(model)  # (outputs of data-dependent rank have no shape)
    return OpCase(name, model, {i.name: i.value for i in feeds})


def single(name: str, op: str, ins: Sequence[Optional[_In]], opset: int = 17, n_out: int = 1,
           **attrs) -> OpCase:
    """A one-node model; ``None`` in ``ins`` marks an omitted optional input."""
    names = [i.name if i is not None else "" for i in ins]
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    return graph_model(name, [node], [i for i in ins if i is not None], outs, opset)


# ---- families --------------------------------------------------------------------------
def activation_cases() -> list[OpCase]:
    r = _rng("act")
    x = rnd(r, 2, 3, 4, 5)
    pos = rnd(r, 2, 3, 4, lo=0.1, hi=3.0)
    cases = [single(f"{op}", op, [feed("x", x)]) for op in
             ("Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Neg", "Abs", "Identity")]
    cases += [single(op, op, [feed("x", pos)]) for op in ("Sqrt", "Log", "Reciprocal")]
    cases += [
        single("HardSwish-14", "HardSwish", [feed("x", x * 3)], opset=14),
        single("Not", "Not", [feed("x", r.random((3, 4)) > 0.5)]),
        single("PRelu-channel", "PRelu", [feed("x", x), const("slope", rnd(r, 3, 1, 1))]),
        single("PRelu-scalar", "PRelu", [feed("x", x), const("slope", np.array([0.2], F32))]),
        single("LeakyRelu", "LeakyRelu", [feed("x", x)], alpha=0.3),
        single("LeakyRelu-default", "LeakyRelu", [feed("x", x)]),
        single("HardSigmoid", "HardSigmoid", [feed("x", x)], alpha=0.3, beta=0.4),
        single("Gelu-20", "Gelu", [feed("x", x)], opset=20),
        single("Gelu-20-tanh", "Gelu", [feed("x", x)], opset=20, approximate="tanh"),
        single("Clip-10-attrs", "Clip", [feed("x", x)], opset=10, min=-0.5, max=0.7),
        single("Clip-10-max-only", "Clip", [feed("x", x)], opset=10, max=0.5),
        single("Clip-11-const", "Clip", [feed("x", x), const("lo", np.array(0, F32)),
                                         const("hi", np.array(6, F32))], opset=11),
        single("Clip-13-min-only", "Clip", [feed("x", x), const("lo", np.array(-1, F32))], opset=13),
        single("Clip-13-max-only", "Clip", [feed("x", x), None, const("hi", np.array(1, F32))], opset=13),
        single("Clip-13-none", "Clip", [feed("x", x)], opset=13),
        single("Clip-13-dynamic", "Clip", [feed("x", x), feed("lo", np.array(-0.3, F32)),
                                           feed("hi", np.array(0.9, F32))], opset=13),
        single("Dropout-10", "Dropout", [feed("x", x)], opset=10, ratio=0.5),
        single("Dropout-13-ratio", "Dropout", [feed("x", x), const("r", np.array(0.3, F32))], opset=13),
        single("Dropout-13-mask", "Dropout", [feed("x", x)], opset=13, n_out=2),
        single("Cast-float-int64", "Cast", [feed("x", x * 10)], to=onnx.TensorProto.INT64),
        single("Cast-int-float", "Cast", [feed("x", r.integers(-9, 9, (3, 4)))], to=onnx.TensorProto.FLOAT),
        single("Cast-float-bool", "Cast", [feed("x", np.round(x))], to=onnx.TensorProto.BOOL),
        single("Cast-float-fp16", "Cast", [feed("x", x)], to=onnx.TensorProto.FLOAT16),
    ]
    for c in cases:
        if c.name.startswith("Cast-float-fp16"):
            c.rtol, c.atol = 1e-3, 1e-3
    return cases


def elementwise_cases() -> list[OpCase]:
    r = _rng("elt")
    a, b = rnd(r, 2, 3, 4), rnd(r, 4)
    ia, ib = r.integers(-3, 3, (2, 3, 4)), r.integers(-3, 3, (3, 1))
    cases = []
    for op in ("Add", "Sub", "Mul"):
        cases.append(single(f"{op}-broadcast", op, [feed("a", a), feed("b", b)]))
        cases.append(single(f"{op}-bidirectional", op, [feed("a", rnd(r, 2, 1, 4)), feed("b", rnd(r, 3, 1))]))
    cases += [
        single("Add-const-scalar", "Add", [feed("a", a), const("b", np.array(1.5, F32))]),
        single("Add-int64", "Add", [feed("a", ia), feed("b", ib)]),
        single("Div", "Div", [feed("a", a), feed("b", rnd(r, 3, 1, lo=0.5, hi=2))]),
        single("Div-int64", "Div", [feed("a", ia * 7), const("b", np.array([2, 3, 5, 7], I64))]),
        single("Pow", "Pow", [feed("a", rnd(r, 2, 3, lo=0.5, hi=2)), feed("b", rnd(r, 3))]),
        single("Pow-const-2", "Pow", [feed("a", a), const("b", np.array(2.0, F32))]),
        single("Pow-12-int-exponent", "Pow", [feed("a", a), const("b", np.array(3, I64))], opset=12),
        single("Max-3", "Max", [feed("a", a), feed("b", b), feed("c", rnd(r, 3, 1))], opset=13),
        single("Min-2", "Min", [feed("a", a), feed("b", b)]),
        single("Max-1", "Max", [feed("a", a)]),
        single("Equal-int64", "Equal", [feed("a", ia), feed("b", ib)]),
        single("Equal-float-11", "Equal", [feed("a", np.round(a)), feed("b", np.round(b))], opset=11),
        single("Less", "Less", [feed("a", a), feed("b", b)]),
        single("Greater", "Greater", [feed("a", a), feed("b", b)]),
        single("Where", "Where", [feed("c", r.random((3, 4)) > 0.5), feed("a", a), feed("b", b)]),
    ]
    return cases


def conv_cases() -> list[OpCase]:
    r = _rng("conv")
    x = rnd(r, 1, 4, 9, 9)
    w, b = rnd(r, 6, 4, 3, 3), rnd(r, 6)
    cases = [
        single("Conv-pads-strides", "Conv", [feed("x", x), const("w", w), const("b", b)],
               kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        single("Conv-no-bias-no-kernel-attr", "Conv", [feed("x", x), const("w", w)]),
        single("Conv-asym-pads", "Conv", [feed("x", x), const("w", w), const("b", b)], pads=[0, 1, 2, 1]),
        single("Conv-group-dilation", "Conv", [feed("x", x), const("w", rnd(r, 4, 2, 3, 3))],
               group=2, dilations=[2, 2], pads=[2, 2, 2, 2]),
        single("Conv-depthwise", "Conv", [feed("x", x), const("w", rnd(r, 4, 1, 3, 3)), const("b", rnd(r, 4))],
               group=4, pads=[1, 1, 1, 1]),
        single("Conv-1x1", "Conv", [feed("x", x), const("w", rnd(r, 8, 4, 1, 1))]),
        single("Conv-1d", "Conv", [feed("x", rnd(r, 2, 3, 10)), const("w", rnd(r, 5, 3, 3))], pads=[1, 1]),
        single("Conv-dynamic-weight", "Conv", [feed("x", x), feed("w", w)], pads=[1, 1, 1, 1]),
    ]
    for ap in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        cases.append(single(f"Conv-{ap}-stride2", "Conv", [feed("x", rnd(r, 1, 4, 8, 8)), const("w", w)],
                            auto_pad=ap, strides=[2, 2]))
    wt = rnd(r, 4, 3, 3, 3)
    cases += [
        single("ConvTranspose-stride2-outpad", "ConvTranspose", [feed("x", x), const("w", wt), const("b", rnd(r, 3))],
               strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]),
        single("ConvTranspose-basic", "ConvTranspose", [feed("x", x), const("w", wt)]),
        single("ConvTranspose-group", "ConvTranspose", [feed("x", x), const("w", rnd(r, 4, 2, 2, 2))],
               group=2, strides=[2, 2]),
        single("ConvTranspose-output-shape", "ConvTranspose", [feed("x", x), const("w", wt)],
               strides=[2, 2], output_shape=[18, 18]),
        single("ConvTranspose-SAME_UPPER", "ConvTranspose", [feed("x", x), const("w", wt)],
               strides=[2, 2], auto_pad="SAME_UPPER"),
    ]
    bn = [const("s", rnd(r, 4, lo=0.5)), const("bb", rnd(r, 4)), const("m", rnd(r, 4)), const("v", rnd(r, 4, lo=0.5))]
    cases += [
        single("BatchNormalization-9", "BatchNormalization", [feed("x", x), *bn], opset=9, epsilon=1e-3),
        single("BatchNormalization-15", "BatchNormalization", [feed("x", x), *bn], opset=15),
        single("BatchNormalization-2d", "BatchNormalization", [feed("x", rnd(r, 3, 4)), *bn], opset=15),
    ]
    return cases


def pool_cases() -> list[OpCase]:
    r = _rng("pool")
    x = rnd(r, 1, 3, 9, 9)
    cases = [
        single("MaxPool", "MaxPool", [feed("x", x)], kernel_shape=[3, 3], strides=[2, 2]),
        single("MaxPool-pads", "MaxPool", [feed("x", x)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        single("MaxPool-ceil", "MaxPool", [feed("x", rnd(r, 1, 3, 8, 8))], kernel_shape=[3, 3], strides=[2, 2],
               ceil_mode=1),
        single("MaxPool-ceil-pads-last-window", "MaxPool", [feed("x", rnd(r, 1, 3, 5, 5))], kernel_shape=[2, 2],
               strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        single("AveragePool-ceil-pads-last-window", "AveragePool", [feed("x", rnd(r, 1, 3, 5, 5))],
               kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        single("MaxPool-12-dilations", "MaxPool", [feed("x", x)], opset=12, kernel_shape=[2, 2], dilations=[2, 2]),
        single("MaxPool-SAME_UPPER", "MaxPool", [feed("x", x)], kernel_shape=[2, 2], strides=[2, 2],
               auto_pad="SAME_UPPER"),
        single("MaxPool-1d", "MaxPool", [feed("x", rnd(r, 2, 3, 10))], kernel_shape=[2], strides=[2]),
        single("AveragePool", "AveragePool", [feed("x", x)], kernel_shape=[3, 3], strides=[2, 2]),
        single("AveragePool-pads-exclude", "AveragePool", [feed("x", x)], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        single("AveragePool-pads-include", "AveragePool", [feed("x", x)], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
               count_include_pad=1),
        single("AveragePool-ceil", "AveragePool", [feed("x", rnd(r, 1, 3, 8, 8))], kernel_shape=[3, 3], strides=[2, 2],
               ceil_mode=1),
        single("GlobalAveragePool", "GlobalAveragePool", [feed("x", x)]),
    ]
    return cases


def norm_cases() -> list[OpCase]:
    r = _rng("norm")
    x3 = rnd(r, 2, 3, 5)
    return [
        single("LRN", "LRN", [feed("x", rnd(r, 1, 6, 4, 4))], size=5, alpha=1e-3, beta=0.75, bias=2.0),
        single("LRN-default", "LRN", [feed("x", rnd(r, 1, 6, 4, 4))], size=3),
        single("LayerNormalization-17", "LayerNormalization",
               [feed("x", x3), const("g", rnd(r, 5)), const("b", rnd(r, 5))], opset=17, epsilon=1e-5),
        single("LayerNormalization-17-statistics", "LayerNormalization",
               [feed("x", x3), const("g", rnd(r, 5)), const("b", rnd(r, 5))], opset=17, n_out=3),
        single("LayerNormalization-axis1-nobias", "LayerNormalization",
               [feed("x", x3), const("g", rnd(r, 3, 5))], opset=17, axis=1),
        single("Softmax-11-legacy-axis1", "Softmax", [feed("x", x3)], opset=11),
        single("Softmax-11-last", "Softmax", [feed("x", x3)], opset=11, axis=2),
        single("Softmax-13-axis1", "Softmax", [feed("x", x3)], opset=13, axis=1),
        single("Softmax-13-default", "Softmax", [feed("x", x3)], opset=13),
        single("LogSoftmax-11-legacy", "LogSoftmax", [feed("x", x3)], opset=11, axis=1),
        single("LogSoftmax-13", "LogSoftmax", [feed("x", x3)], opset=13, axis=-2),
    ]


def linalg_cases() -> list[OpCase]:
    r = _rng("linalg")
    return [
        single("Gemm", "Gemm", [feed("a", rnd(r, 3, 4)), const("b", rnd(r, 4, 5)), const("c", rnd(r, 5))]),
        single("Gemm-trans-alpha-beta", "Gemm", [feed("a", rnd(r, 4, 3)), const("b", rnd(r, 5, 4)),
                                                 const("c", rnd(r, 3, 5))], transA=1, transB=1, alpha=0.5, beta=2.0),
        single("Gemm-13-no-c", "Gemm", [feed("a", rnd(r, 3, 4)), const("b", rnd(r, 4, 5))], opset=13),
        single("Gemm-c-scalar", "Gemm",
               [feed("a", rnd(r, 3, 4)), feed("b", rnd(r, 4, 5)), const("c", np.array(1.0, F32))]),
        single("MatMul-2d", "MatMul", [feed("a", rnd(r, 3, 4)), const("b", rnd(r, 4, 5))]),
        single("MatMul-batch-broadcast", "MatMul", [feed("a", rnd(r, 2, 1, 3, 4)), feed("b", rnd(r, 5, 4, 6))]),
        single("MatMul-1d-left", "MatMul", [feed("a", rnd(r, 4)), feed("b", rnd(r, 2, 4, 3))]),
        single("MatMul-1d-right", "MatMul", [feed("a", rnd(r, 2, 3, 4)), feed("b", rnd(r, 4))]),
        single("MatMul-1d-both", "MatMul", [feed("a", rnd(r, 4)), feed("b", rnd(r, 4))]),
    ]


def reduce_cases() -> list[OpCase]:
    r = _rng("reduce")
    x = rnd(r, 2, 3, 4)
    axes = lambda *a: const("axes", np.array(a, I64))  # noqa: E731
    cases = []
    for op in ("ReduceMean", "ReduceMax"):
        cases += [
            single(f"{op}-13-attr", op, [feed("x", x)], opset=13, axes=[1]),
            single(f"{op}-13-neg-nokeep", op, [feed("x", x)], opset=13, axes=[-1, 0], keepdims=0),
            single(f"{op}-13-all", op, [feed("x", x)], opset=13),
            single(f"{op}-18-input", op, [feed("x", x), axes(2)], opset=18),
            single(f"{op}-18-input-nokeep", op, [feed("x", x), axes(0, -1)], opset=18, keepdims=0),
            single(f"{op}-18-none", op, [feed("x", x)], opset=18),
            single(f"{op}-18-noop", op, [feed("x", x)], opset=18, noop_with_empty_axes=1),
        ]
    cases += [
        single("ReduceSum-11-attr", "ReduceSum", [feed("x", x)], opset=11, axes=[1, 2]),
        single("ReduceSum-13-input", "ReduceSum", [feed("x", x), axes(-2)], opset=13),
        single("ReduceSum-13-nokeep", "ReduceSum", [feed("x", x), axes(1)], opset=13, keepdims=0),
        single("ReduceSum-13-all", "ReduceSum", [feed("x", x)], opset=13),
        single("ReduceSum-13-noop", "ReduceSum", [feed("x", x)], opset=13, noop_with_empty_axes=1),
        single("ReduceSum-13-runtime-axes", "ReduceSum", [feed("x", x), feed("axes", np.array([1], I64))], opset=13),
    ]
    return cases


from tests.conformance.op_models_extra import extra_cases  # noqa: E402
from tests.conformance.op_models_quant import quant_cases  # noqa: E402
from tests.conformance.op_models_shape import shape_cases  # noqa: E402

FAMILIES: dict[str, Callable[[], list[OpCase]]] = {
    "activation": activation_cases, "elementwise": elementwise_cases, "conv": conv_cases,
    "pool": pool_cases, "norm": norm_cases, "linalg": linalg_cases, "reduce": reduce_cases,
    "shape": shape_cases, "extra": extra_cases, "quant": quant_cases,
}


def all_cases() -> list[OpCase]:
    """Every case of every family, names unique."""
    cases = [c for make in FAMILIES.values() for c in make()]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases

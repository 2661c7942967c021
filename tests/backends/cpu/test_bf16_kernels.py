"""bf16 on the CPU, op by op (issue 19): each layer kind a bf16 engine runs against the same
model's fp32 engine, within what one bf16 layer may add (``bf16kit.ONE_LAYER``); every tactic a
bf16 layer has (the 16-bit oneDNN kernels and their fp32 alternatives) on the tensors that layer
met in a real run; reductions, normalizations and softmax accumulating in fp32; NaN kept NaN.

The CPU is faked as one with native bf16 (``bf16kit.NATIVE``): oneDNN emulates bf16 where the real
CPU has no AVX512-BF16 or AMX, so the results are the same, only slower. Where it has no bf16
kernels at all (AVX2 at most: ``bf16kit.ONEDNN_BF16``) the tests that build bf16 layers skip."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from bf16kit import (
    NATIVE,
    NO_TORCH_FP16_CONV,
    ONE_LAYER,
    TORCH_FP16_CONV,
    casts,
    engines,
    faked_cpu,
    model,
    needs_onednn_bf16,
    precisions,
    run,
    stored,
)
from onnx import helper

from ember.backends.base import CompileContext
from ember.backends.cpu import CPUBackend
from ember.backends.tensors import max_relative_error
from ember.plan.config import Precision

RNG = np.random.default_rng(0)
mk = helper.make_node


def _w(*shape: int, scale: float | None = None) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return RNG.normal(0, scale if scale is not None else (2 / fan_in) ** 0.5, shape).astype(np.float32)


def _x(*shape: int) -> np.ndarray:
    return RNG.normal(0, 1, shape).astype(np.float32)


X4 = (2, 16, 12, 12)
CONV = dict(pads=[1, 1, 1, 1])

#: name -> (nodes, inputs, outputs, initializers, layer kinds that must run bf16)
CASES = {
    "conv3x3_relu": ([mk("Conv", ["x", "w", "b"], ["c"], **CONV), mk("Relu", ["c"], ["y"])],
                     {"x": X4}, {"y": None}, {"w": _w(32, 16, 3, 3), "b": _w(32, scale=0.1)}, {"FusedConv"}),
    "conv1x1_stride2": ([mk("Conv", ["x", "w"], ["y"], strides=[2, 2])],
                        {"x": X4}, {"y": None}, {"w": _w(24, 16, 1, 1)}, {"Conv"}),
    "depthwise_relu6": ([mk("Conv", ["x", "w", "b"], ["c"], group=16, **CONV),
                         mk("Clip", ["c", "lo", "hi"], ["y"])],
                        {"x": X4}, {"y": None},
                        {"w": _w(16, 1, 3, 3), "b": _w(16, scale=0.1), "lo": np.float32(0), "hi": np.float32(6)},
                        {"FusedConv"}),
    "stem7x7_maxpool": ([mk("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[3, 3, 3, 3]),
                         mk("Relu", ["c"], ["r"]),
                         mk("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                          pads=[1, 1, 1, 1])],
                        {"x": (2, 3, 32, 32)}, {"y": None}, {"w": _w(16, 3, 7, 7)}, {"FusedConv", "MaxPool"}),
    "residual_block": ([mk("Conv", ["x", "w"], ["c"], **CONV), mk("Relu", ["c"], ["r"]),
                        mk("Conv", ["r", "w2"], ["c2"], **CONV), mk("Add", ["c2", "x"], ["s"]),
                        mk("Relu", ["s"], ["y"])],
                       {"x": X4}, {"y": None}, {"w": _w(16, 16, 3, 3), "w2": _w(16, 16, 3, 3)}, {"FusedConv"}),
    "gemm_transb": ([mk("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)],
                    {"x": (4, 64)}, {"y": None}, {"w": _w(48, 64), "b": _w(48, scale=0.1)}, {"Gemm"}),
    "matmul3d_bias_relu": ([mk("MatMul", ["x", "w"], ["m"]), mk("Add", ["m", "b"], ["s"]),
                            mk("Relu", ["s"], ["y"])],
                           {"x": (2, 8, 64)}, {"y": None}, {"w": _w(64, 96), "b": _w(96, scale=0.1)}, {"FusedGemm"}),
    "matmul_activations": ([mk("MatMul", ["a", "bt"], ["y"])],
                           {"a": (2, 4, 8, 32), "bt": (2, 4, 32, 8)}, {"y": None}, {}, {"MatMul"}),
    "gemm_layernorm": ([mk("MatMul", ["x", "w"], ["m"]),
                        mk("LayerNormalization", ["m", "g", "be"], ["y"], axis=-1)],
                       {"x": (2, 8, 64)}, {"y": None}, {"w": _w(64, 128), "g": _w(128, scale=1.0), "be": _w(128)},
                       {"MatMul", "LayerNormalization"}),
    "gemm_softmax": ([mk("MatMul", ["x", "w"], ["m"]), mk("Softmax", ["m"], ["y"], axis=-1)],
                     {"x": (4, 64)}, {"y": None}, {"w": _w(64, 512, scale=0.3)}, {"MatMul", "Softmax"}),
    "conv_lrn_pools": ([mk("Conv", ["x", "w"], ["c"], **CONV),
                        mk("LRN", ["c"], ["n"], size=5, alpha=1e-3, beta=0.75, bias=1.0),
                        mk("AveragePool", ["n"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                        mk("GlobalAveragePool", ["p"], ["y"])],
                       {"x": X4}, {"y": None}, {"w": _w(32, 16, 3, 3)},
                       {"Conv", "LRN", "AveragePool", "GlobalAveragePool"}),
    "conv_instancenorm": ([mk("Conv", ["x", "w"], ["c"], **CONV),
                           mk("InstanceNormalization", ["c", "s", "bb"], ["y"])],
                          {"x": X4}, {"y": None}, {"w": _w(16, 16, 3, 3), "s": _w(16, scale=1.0), "bb": _w(16)},
                          {"Conv", "InstanceNormalization"}),
    "concat_mixed": ([mk("Conv", ["x", "w"], ["c"], **CONV), mk("Concat", ["c", "x"], ["y"], axis=1)],
                     {"x": X4}, {"y": None}, {"w": _w(8, 16, 3, 3)}, {"Conv", "Concat"}),
}


def _case(name: str):
    nodes, inputs, outputs, inits, kinds = CASES[name]
    feeds = {k: _x(*v) for k, v in inputs.items()}
    return model(nodes, inputs, outputs, inits, name=name), feeds, kinds


#: Cases of only PyTorch's bf16 matmul of two activations (no weight to pack): they run on any CPU.
NO_ONEDNN = {"matmul_activations"}
#: Layers a case names bf16 that a bf16 build keeps fp32 by default (``CPU_HALF_FP32_NORMS``).
NAMED_HALF = {"gemm_layernorm": {"LayerNormalization": "bf16"}}


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in NO_ONEDNN else needs_onednn_bf16)
                                  for name in sorted(CASES)])
def test_bf16_layer_matches_fp32_within_bf16_rounding(name):
    m, feeds, kinds = _case(name)
    fp32, bf16 = engines(m, half_layers=NAMED_HALF.get(name))
    runs = precisions(bf16)
    assert all(runs[k] == "bf16" for k in kinds), runs
    ref, got = run(fp32, feeds), run(bf16, feeds)
    for k, want in ref.items():
        assert got[k].dtype == np.float32 and got[k].shape == want.shape  # outputs keep the model's type
        err = max_relative_error(got[k], want)
        assert 0 < err <= ONE_LAYER, f"{name}: {k} off by {err:.2e}"  # > 0: it did compute in bf16


@needs_onednn_bf16
@pytest.mark.parametrize("name", ["conv3x3_relu", "residual_block", "depthwise_relu6", "gemm_transb",
                                  "matmul3d_bias_relu"])
def test_every_tactic_of_a_bf16_layer_agrees_on_the_tensors_it_met(name):
    """Each candidate tactic (16-bit oneDNN, aten channels-last, the fp32 alternative) of each bf16
    layer, compiled as the engine compiles it and run on the inputs the layer got in a real run."""
    m, feeds, _ = _case(name)
    _, bf16 = engines(m)
    program, plan = bf16.compile(), bf16.plan
    seen: dict[str, torch.Tensor] = {}
    program.run({k: torch.from_numpy(v) for k, v in feeds.items()}, observe=lambda n, t: seen.__setitem__(n, t.clone()))
    backend, tried = CPUBackend(), set()
    for node, layer in zip(plan.graph.nodes, plan.layers):
        if layer.precision is not Precision.BF16 or node.op.value in ("MaxPool", "Relu"):
            continue
        args = [seen.get(i, program.constants.get(i)) if i else None for i in node.inputs]
        want = seen[node.outputs[0]]
        assert want.dtype == torch.bfloat16 or node.outputs[0] in plan.graph.outputs
        for tactic in backend.tactics(node, plan.graph, plan.records):
            ctx = CompileContext(plan.graph, program.constants, torch.device("cpu"), tactic, layer.precision,
                                 plan.records, plan.config)
            with torch.inference_mode():
                out = backend.compile_node(node, ctx)(args)[0]
            assert out.dtype == want.dtype, (node.name, tactic, out.dtype)
            assert max_relative_error(out, want) <= ONE_LAYER, (node.name, tactic)
            tried.add(tactic)
    assert "mkldnn_prepacked" in tried and "mkldnn_prepacked_fp32" in tried, tried


def _reduction_model(op: str, n: int):
    """x[2, 16] @ w[16, n] (non-negative: the sum only grows) -> ``op`` over the n values."""
    nodes = [mk("MatMul", ["x", "w"], ["m"])]
    if op == "ReduceSum":
        nodes.append(mk(op, ["m", "axes"], ["y"], keepdims=1))
        inits = {"axes": np.array([-1], np.int64)}
    elif op == "LayerNormalization":
        nodes.append(mk(op, ["m", "g"], ["y"], axis=-1))
        inits = {"g": np.ones(n, np.float32)}
    elif op == "GlobalAveragePool":
        nodes = [mk("MatMul", ["x", "w"], ["m0"]),
                 mk("Reshape", ["m0", "shape"], ["m"]), mk(op, ["m"], ["y"])]
        inits = {"shape": np.array([2, 1, n // 128, 128], np.int64)}
    else:
        nodes.append(mk(op, ["m"], ["y"], axis=-1))
        inits = {}
    w = np.abs(_w(16, n, scale=0.25)) + 0.01
    if op == "Softmax":  # logits near 1: their own bf16 rounding moves exp() by under 0.4%
        w *= 0.1
    x = np.abs(_x(2, 16)) + 0.5
    return model(nodes, {"x": (2, 16)}, {"y": None}, {"w": w, **inits}, opset=17, name=op), {"x": x}


@needs_onednn_bf16
@pytest.mark.parametrize("op", ["ReduceSum", "Softmax", "LayerNormalization", "GlobalAveragePool"])
def test_reductions_accumulate_in_fp32(op):
    """32768 values reduced in a bf16 layer: summed in bf16 the total would stall once the step
    between bf16 numbers passes the addends (at 256 for values near 1) and be off by far more
    than 1e-2; accumulated in fp32 it is off by about one bf16 rounding."""
    m, feeds = _reduction_model(op, 32768)
    fp32, bf16 = engines(m, half_layers={op: "bf16"} if op == "LayerNormalization" else None)
    assert precisions(bf16)[op] == "bf16", precisions(bf16)
    err = max_relative_error(run(bf16, feeds)["y"], run(fp32, feeds)["y"])
    assert err <= 1e-2, f"{op}: {err:.2e}"


@needs_onednn_bf16
def test_instance_norm_and_lrn_compute_in_fp32():
    """PyTorch's bf16 instance normalization accumulates in bf16; Ember's half wrapper computes it,
    and LRN, from float32 copies of the 16-bit inputs: on the very bf16 tensors the layers read in
    a run, their outputs are within one bf16 rounding of a float64 computation."""
    import torch.nn.functional as F

    from ember.backends.cpu.kernels.pool import lrn

    nodes = [mk("Conv", ["x", "w"], ["c"]), mk("InstanceNormalization", ["c", "s", "b"], ["i"]),
             mk("LRN", ["i"], ["y"], size=5, alpha=1e-2, beta=0.75, bias=1.0)]
    m = model(nodes, {"x": (1, 8, 128, 128)}, {"y": None},
              {"w": np.eye(8, dtype=np.float32).reshape(8, 8, 1, 1), "s": np.ones(8, np.float32),
               "b": np.zeros(8, np.float32)})
    x = 4.0 + 0.5 * _x(1, 8, 128, 128)  # a large mean next to a small spread: hard to sum in bf16
    _, bf16 = engines(m)
    assert precisions(bf16)["InstanceNormalization"] == "bf16" and precisions(bf16)["LRN"] == "bf16"
    seen: dict[str, torch.Tensor] = {}
    bf16.compile().run({"x": torch.from_numpy(x)}, observe=lambda n, t: seen.__setitem__(n, t.clone()))
    c, i = seen["c"], seen["i"]
    assert c.dtype == torch.bfloat16 and i.dtype == torch.bfloat16
    assert max_relative_error(i, F.instance_norm(c.double(), eps=1e-5)) <= 4e-3
    assert max_relative_error(seen["y"], lrn(i.double(), bf16.plan.graph.nodes[-1].attrs)) <= 4e-3


@needs_onednn_bf16
def test_conversions_are_planned_once_per_tensor_and_dtype():
    """A graph input read by two bf16 convolutions is converted once; a bf16 tensor read by an
    op without a half kernel (TopK) gets one conversion back to fp32; the output keeps float32."""
    nodes = [mk("Conv", ["x", "w"], ["a"], **CONV), mk("Conv", ["x", "w2"], ["b"], **CONV),
             mk("Add", ["a", "b"], ["s"]), mk("Flatten", ["s"], ["f"]),
             mk("TopK", ["f", "k"], ["y", "idx"], axis=-1)]
    m = helper.make_model(helper.make_graph(
        nodes, "casts", [helper.make_tensor_value_info("x", 1, list(X4))],
        [helper.make_tensor_value_info("y", 1, None), helper.make_tensor_value_info("idx", 7, None)],
        [helper.make_tensor("w", 1, [8, 16, 3, 3], _w(8, 16, 3, 3).ravel()),
         helper.make_tensor("w2", 1, [8, 16, 3, 3], _w(8, 16, 3, 3).ravel()),
         helper.make_tensor("k", 7, [1], [5])]), opset_imports=[helper.make_opsetid("", 17)])
    fp32, bf16 = engines(m)
    assert sorted(casts(bf16)) == [("f", "fp32"), ("x", "bf16")], casts(bf16)
    assert stored(bf16, "s") == "bfloat16" and stored(bf16, "f") == "bfloat16" and stored(bf16, "y") == "float32"
    assert precisions(bf16)["TopK"] == "fp32" and precisions(bf16)["Flatten"] == "bf16"
    feeds = {"x": _x(*X4)}
    got, want = run(bf16, feeds), run(fp32, feeds)
    assert max_relative_error(got["y"], want["y"]) <= ONE_LAYER and got["y"].dtype == np.float32


@needs_onednn_bf16
@pytest.mark.parametrize("kind", ["conv_relu", "conv_relu6", "conv_add_relu", "gemm_relu"])
@pytest.mark.parametrize("fill", [np.nan, np.inf, "one_nan"])
def test_non_finite_values_stay_where_onnxruntime_puts_them(kind, fill):
    """NaN in, NaN out (and infinities) through bf16 convolutions and GEMMs with fused ReLU / Clip
    and residual adds, as the fp32 layers do (issue 17); bf16 has NaN and infinities too."""
    from test_nan_propagation import _model

    m = _model(kind)
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    x = RNG.normal(0, 1, shape).astype(np.float32)
    if fill == "one_nan":
        x.reshape(-1)[5] = np.nan
    else:
        x[:] = fill
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    _, bf16 = engines(m)
    assert any(layer.precision is Precision.BF16 and layer.kind in ("FusedConv", "FusedGemm")
               for layer in bf16.plan.layers)
    got = run(bf16, {"x": x})["y"]
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"NaN: {np.isnan(got).sum()}, ORT {np.isnan(want).sum()}"
    assert np.array_equal(np.isposinf(got), np.isposinf(want)) and np.array_equal(np.isneginf(got), np.isneginf(want))


@pytest.mark.skipif(not TORCH_FP16_CONV, reason=NO_TORCH_FP16_CONV)
def test_fp16_layers_run_fp16_on_a_cpu_with_amx_fp16():
    """With AMX-FP16 (faked, on a CPU where PyTorch runs fp16 convolutions at all, slowly)
    precision fp16 builds fp16 layers the same way, within fp16's finer rounding."""
    from bf16kit import NATIVE_FP16

    m, feeds, kinds = _case("residual_block")
    fp32, fp16 = engines(m, "fp16", NATIVE_FP16)
    assert precisions(fp16)["FusedConv"] == "fp16"
    assert sorted(casts(fp16)) == [("x", "fp16")], casts(fp16)
    assert max_relative_error(run(fp16, feeds)["y"], run(fp32, feeds)["y"]) <= 3e-3


def test_the_fp32_alternative_wins_where_the_timer_says_it_is_faster():
    """Tactic timing (``tune_cpu``) may keep a bf16 layer's arithmetic in fp32: a timer that finds
    the fp32 tactic faster makes it the layer's tactic; the layer stays a bf16 layer (its tensors
    are 16-bit) and its result matches."""
    import ember

    m, feeds, _ = _case("conv3x3_relu")

    def fake_timer(backend, constants, device, records, config):
        return lambda node, graph, tactic, precision: 1.0 if tactic.endswith("_fp32") else 2.0

    original = CPUBackend.make_timer
    CPUBackend.make_timer = fake_timer  # type: ignore[method-assign]
    try:
        with faked_cpu(NATIVE):
            engine = ember.build(m, ember.BuildConfig(device="cpu", precision="bf16", tune_cpu=True), progress=False)
    finally:
        CPUBackend.make_timer = original  # type: ignore[method-assign]
    conv = next(layer for layer in engine.plan.layers if layer.kind == "FusedConv")
    assert conv.tactic == "mkldnn_prepacked_fp32" and conv.precision is Precision.BF16
    fp32 = ember.build(m, ember.BuildConfig(device="cpu"), progress=False)
    assert max_relative_error(run(engine, feeds)["y"], run(fp32, feeds)["y"]) <= ONE_LAYER


@needs_onednn_bf16
def test_epilogues_fuse_only_where_finite_inputs_keep_a_layer_finite():
    """oneDNN's fused ReLU turns NaN into 0, so a bf16 layer fuses it only in runs whose inputs
    are all finite, and only where nothing upstream can make a finite value non-finite (a Log
    can: log(0) = -inf), every constant being finite."""
    from ember.backends.cpu.half import finite_safe, inputs_finite

    nodes = [mk("Conv", ["x", "w"], ["a0"], **CONV), mk("Relu", ["a0"], ["a"]),
             mk("Abs", ["x"], ["ax"]), mk("Log", ["ax"], ["lx"]),
             mk("Conv", ["lx", "w"], ["b0"], **CONV), mk("Relu", ["b0"], ["b"]),
             mk("Add", ["a", "big"], ["c0"]), mk("Conv", ["c0", "w2"], ["c1"], **CONV), mk("Relu", ["c1"], ["c"])]
    big = np.full((1, 16, 1, 1), np.inf, np.float32)
    m = model(nodes, {"x": X4}, {"a": None, "b": None, "c": None},
              {"w": _w(16, 16, 3, 3), "w2": _w(16, 16, 3, 3), "big": big})
    _, bf16 = engines(m)
    graph = bf16.plan.graph
    convs = {n.outputs[0]: finite_safe(n, graph) for n in graph.nodes if n.op.value == "FusedConv"}
    assert convs == {"a": True, "b": False, "c": False}, convs
    flags = []
    program = bf16.compile()
    for x in (_x(*X4), np.full(X4, np.nan, np.float32)):
        program.run({"x": torch.from_numpy(x)}, observe=lambda n, t: flags.append(inputs_finite()))
    half = len(flags) // 2
    assert set(flags[:half]) == {True} and set(flags[half:]) == {False}
    assert not inputs_finite()  # outside a run


def test_a_run_is_finite_exactly_when_no_input_holds_nan_or_infinity():
    """``finite_run``'s check by the inputs' sum: a NaN, an infinity, or infinities of both signs
    are caught in any float dtype; half inputs sum in float32 (a float16 image of large values is
    finite); a float32 sum that overflows answers "not finite" (the NaN-safe path: only slower)."""
    import torch

    from ember.backends.cpu.half import _all_finite

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.randn(3, 50, dtype=dtype)
        assert _all_finite(x)
        for bad in (float("nan"), float("inf"), -float("inf")):
            y = x.clone()
            y[1, 7] = bad
            assert not _all_finite(y), (dtype, bad)
        y = x.clone()
        y[0, 0], y[2, 2] = float("inf"), -float("inf")
        assert not _all_finite(y)
    assert _all_finite(torch.full((1000,), 60000.0, dtype=torch.float16))  # sums past fp16's range
    assert not _all_finite(torch.full((4,), 3e38))  # overflowing float32: conservative
    assert _all_finite(torch.empty(0))

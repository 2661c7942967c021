"""Chains of persistent oneDNN convolutions run in one C++ call (``ember.backends.cpu.chains``):
which layers form a chain, and that a chained engine computes what the layers one by one and
ONNX Runtime compute, NaN and infinities included (those runs go layer by layer)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import onnx
import pytest
from bf16kit import needs_onednn_bf16  # tests/backends/cpu/bf16kit.py
from cpukit import assert_runs_like_ort  # tests/backends/cpu/cpukit.py
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.cpu.chains import LAYOUT_ENV, SWITCH_ENV, ChainLink, plan_chains
from ember.backends.cpu.features import cpu_features
from ember.plan.config import Precision
from ember.tools.runners import max_rel_error

pytestmark = pytest.mark.usefixtures("fresh_native")


@dataclass
class _Step:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    kernel: Any
    special: bool = False


def _k(link: Optional[ChainLink]) -> Any:
    def kernel(inputs: Any) -> list:
        return []

    if link is not None:
        kernel.chain_link = link  # type: ignore[attr-defined]
    return kernel


def _conv(name: str, x: str, out: str, residual: str = "", fused: bool = True) -> _Step:
    inputs = (x, f"{name}_w", f"{name}_b") + ((residual,) if residual else ())
    return _Step(name, inputs, (out,), _k(ChainLink(f"conv:{name}", bool(residual), fused)))


def test_a_chain_is_the_longest_run_of_chainable_layers_read_only_inside():
    steps = [_Step("pre", ("img",), ("x",), _k(None)),
             _conv("a", "x", "a"), _conv("b", "a", "b"), _conv("c", "b", "c", residual="a"),
             _conv("d", "c", "d", residual="x", fused=False),
             _Step("pool", ("d",), ("p",), _k(None)),
             _conv("e", "p", "e"), _Step("cat", ("e",), ("f",), _k(None), special=True)]
    chains = plan_chains(steps, ["f"])
    assert len(chains) == 1
    ch = chains[0]
    assert (ch.start, ch.end, ch.input, ch.output) == (1, 5, "x", "d")
    assert ch.convs == ("conv:a", "conv:b", "conv:c", "conv:d")
    assert ch.src == (-1, 0, 1, 2) and ch.res == (-2, -2, 0, -1) and ch.fused == (True, True, True, False)
    assert ch.sum == (-2, -2, -2, -2) and ch.dtypes == (0, 0, 0, 0)
    assert ch.last == (2, 2, 3, 3)  # a: last read by c (its residual); b by c; c by d; d: the output


def test_an_output_read_outside_or_a_model_output_ends_the_chain_there():
    steps = [_conv("a", "x", "a"), _conv("b", "a", "b"), _conv("c", "b", "c"), _Step("use", ("b",), ("u",), _k(None))]
    chains = plan_chains(steps, ["c", "u"])
    assert [(c.start, c.end) for c in chains] == [(0, 2)]  # b is read by `use`: the chain ends with b
    assert [(c.start, c.end) for c in plan_chains(steps[:3], ["b", "c"])] == [(0, 2)]  # b a model output
    # an input from outside the chain (not its input, not an earlier output) starts a new one
    steps = [_conv("a", "x", "a"), _conv("b", "a", "b"), _conv("c", "y", "c"), _conv("d", "c", "d")]
    assert [(c.start, c.end) for c in plan_chains(steps, ["b", "d"])] == [(0, 2), (2, 4)]
    assert plan_chains([_conv("a", "x", "a")], ["a"]) == []  # one layer is no chain


def _model() -> onnx.ModelProto:
    """conv+relu -> depthwise+clip -> 1x1 (+ the first conv's output) -> 3x3+relu, and the
    depthwise output also a model output (the chain ends there)."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
             helper.make_node("Add", ["c3", "r1"], ["s3"]),
             helper.make_node("Conv", ["s3", "w4", "b4"], ["c4"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c4"], ["y"])]
    inits = [init("w1", 16, 8, 3, 3), init("b1", 16), init("w2", 16, 1, 3, 3), init("b2", 16),
             init("w3", 16, 16, 1, 1), init("b3", 16), init("w4", 16, 16, 3, 3), init("b4", 16),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_chained_engine_computes_what_its_layers_and_onnx_runtime_compute(ext: Any, monkeypatch: pytest.MonkeyPatch):
    import onnxruntime as ort

    # channels-last, the layout of the layers alone (a build that timed oneDNN's blocked form faster
    # would run other primitives, not bitwise the same)
    monkeypatch.setenv(LAYOUT_ENV, "nhwc")
    model = _model()
    chained = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    monkeypatch.setenv(SWITCH_ENV, "0")
    alone = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    monkeypatch.delenv(SWITCH_ENV)
    with chained.create_context() as c1, alone.create_context() as c2:
        steps = c1.executor.program.chained
        assert steps is not None and [s.kind for s in steps].count("Chain") == 1
        assert c2.executor.program.chained is None
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32) * 3
        bad = x.copy()
        bad[0, 0, 2, 3], bad[0, 3, 7, 7] = np.nan, np.inf
        for feed in (x, bad, x):
            got, one_by_one = c1.infer({"x": feed})["y"], c2.infer({"x": feed})["y"]
            want = sess.run(None, {"x": feed})[0]
            np.testing.assert_array_equal(got, one_by_one)  # the same primitives, the same order
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            assert max_rel_error(np.nan_to_num(got), np.nan_to_num(want)) < 1e-4


def test_run_chain_computes_its_steps_and_refuses_a_step_reading_a_later_one(ext: Any):
    import torch

    w = torch.randn(4, 4, 1, 1)
    conv = ext.Layer(w, None, [1, 1], [1, 1], 1).prepare([1, 4, 3, 3], [0, 0], [0, 0])
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    y = ext.run_chain([conv, conv], x, [-1, 0], [-2, -2], [-2, -2], [1, 1], [False, False], [0, 0])
    want = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w), w)
    assert tuple(y.shape) == (1, 4, 3, 3) and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="earlier steps"):
        ext.run_chain([conv, conv], x, [-1, 1], [-2, -2], [-2, -2], [1, 1], [False, False], [0, 0])
    with pytest.raises(ValueError, match="another width"):  # a u8 output cannot start as a float32 copy
        ext.run_chain([conv], x, [-1], [-2], [-1], [0], [False], [1])


@pytest.mark.parametrize("size", [3, 96], ids=["small", "pooled"])  # below / above the pool's 0.25 MB
def test_a_chains_output_is_an_ordinary_tensor_its_caller_owns(ext: Any, size: int):
    """The chain makes its step tensors without the dispatcher (``BufferPool.wrap``): the output it
    returns is an ordinary float32 channels-last CPU tensor on its own resizable storage, and the
    next run writes elsewhere."""
    import torch

    w = torch.randn(8, 8, 1, 1)
    conv = ext.Layer(w, None, [1, 1], [1, 1], 1).prepare([1, 8, size, size], [0, 0], [0, 0])
    x = torch.randn(1, 8, size, size).contiguous(memory_format=torch.channels_last)
    y = ext.run_chain([conv, conv], x, [-1, 0], [-2, -2], [-2, -2], [1, 1], [False, False], [0, 0])
    kept = y.clone()
    again = ext.run_chain([conv, conv], x * 2, [-1, 0], [-2, -2], [-2, -2], [1, 1], [False, False], [0, 0])
    assert y.dtype == torch.float32 and y.device.type == "cpu" and y.storage_offset() == 0
    assert y.is_contiguous(memory_format=torch.channels_last) and y.untyped_storage().resizable()
    assert y.untyped_storage().data_ptr() != again.untyped_storage().data_ptr() and torch.equal(y, kept)
    torch.testing.assert_close(again, 2 * y, rtol=1e-5, atol=1e-5)
    y.resize_(y.numel() * 2)  # its own storage: the caller may even grow it
    assert y.numel() == 2 * kept.numel()


def test_a_chain_plan_checks_once_keeps_its_steps_and_runs_as_run_chain(ext: Any):
    """``ChainPlan`` takes ``run_chain``'s description once (refusing a bad one when made), keeps
    its steps alive after Python drops them, and each run computes what ``run_chain`` computes."""
    import gc

    import torch

    w = torch.randn(4, 4, 1, 1)
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="earlier steps"):
        conv = ext.Layer(w, None, [1, 1], [1, 1], 1).prepare([1, 4, 3, 3], [0, 0], [0, 0])
        ext.ChainPlan([conv, conv], [-1, 1], [-2, -2], [-2, -2], [1, 1], [False, False], [0, 0])
    plan = ext.ChainPlan([ext.Layer(w, None, [1, 1], [1, 1], 1, "relu").prepare([1, 4, 3, 3], [0, 0], [0, 0]),
                          ext.Layer(w, None, [1, 1], [1, 1], 1).prepare([1, 4, 3, 3], [0, 0], [0, 0])],
                         [-1, 0], [-2, -2], [-2, -2], [1, 1], [True, False], [0, 0])
    gc.collect()  # the steps' and layers' only references are the plan's
    want = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w).relu(), w)
    for _ in range(2):
        torch.testing.assert_close(plan.run(x), want, rtol=1e-5, atol=1e-5)
    times = torch.zeros(4, dtype=torch.float64)
    plan.run(x, times)
    assert times[0] > 0 and times[1] > 0


def test_a_chain_plan_checks_at_run_only_the_steps_it_cannot_trust(ext: Any):
    """A plan skips the per-run argument checks of a step whose arguments fit it by construction (it
    reads earlier steps' outputs of the descriptors it wants); the steps reading the chain's input,
    and a step wired to a producer of another shape, are still checked on every run."""
    import torch

    w = torch.randn(4, 4, 1, 1)
    small = ext.Layer(w, None, [1, 1], [1, 1], 1).prepare([1, 4, 3, 3], [0, 0], [0, 0])
    large = ext.Layer(w, None, [1, 1], [1, 1], 1).prepare([1, 4, 5, 5], [0, 0], [0, 0])
    plan = ext.ChainPlan([small, small, small], [-1, 0, 1], [-2] * 3, [-2] * 3, [1, 2, 2], [False] * 3, [0] * 3)
    assert [plan.trusted(i) for i in range(3)] == [False, True, True]
    with pytest.raises(ValueError, match="3 steps, not 4"):
        plan.trusted(3)
    miswired = ext.ChainPlan([small, large], [-1, 0], [-2] * 2, [-2] * 2, [1, 1], [False] * 2, [0] * 2)
    assert not miswired.trusted(1)
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"input has shape \[1, 4, 3, 3\], the primitive was made for \[1, 4, 5, 5\]"):
        miswired.run(x)
    with pytest.raises(ValueError, match="input has shape"):  # the first step checks the caller's input
        plan.run(torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(plan.run(x), torch.nn.functional.conv2d(
        torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, w), w), w), rtol=1e-5, atol=1e-5)


def test_an_int8_engine_chains_its_8_bit_layers_and_computes_what_its_layers_compute(ext: Any,
                                                                                    monkeypatch: pytest.MonkeyPatch):
    """INT8: every layer chains, the first too (the chain stores its float input 8-bit first,
    ``quantize_nhwc``); a residual summed 8-bit (``run_chain``'s ``sum``) is summed into in place,
    since nothing after its layer reads it."""
    model = _model().SerializeToString()
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32) * 3} for _ in range(4)]
    config = ember.BuildConfig(device="cpu", precision="int8", calibrator="minmax")
    chained = ember.build(model, config, calibration_data=calib, progress=False)
    monkeypatch.setenv(SWITCH_ENV, "0")
    alone = ember.build(model, config, calibration_data=calib, progress=False)
    monkeypatch.delenv(SWITCH_ENV)
    assert sum(lay.kind == "QConv" for lay in chained.plan.layers) == 4
    with chained.create_context() as c1, alone.create_context() as c2:
        steps = c1.executor.program.chained
        assert steps is not None and [s.kind for s in steps] == ["Chain"] and "(4 layers chained)" in steps[0].name
        assert c1.executor.program.direct is not None  # the array is stored 8-bit in the native call
        for seed in (5, 6):
            x = np.random.default_rng(seed).standard_normal((1, 8, 12, 12)).astype(np.float32) * 3
            np.testing.assert_array_equal(c1.infer({"x": x})["y"], c2.infer({"x": x})["y"])


def _qconv(name: str, x: str, out: str) -> _Step:
    link = ChainLink(f"conv:{name}", False, False, quant=(2.0, 128.5, 255.5, False))
    return _Step(name, (x, f"{name}_w"), (out,), _k(link))


def test_a_layer_that_quantizes_its_float_input_only_starts_a_chain():
    steps = [_qconv("q", "x", "a"), _conv("b", "a", "b"), _conv("c", "b", "c")]
    ch = plan_chains(steps, ["c"])
    assert [(c.start, c.end) for c in ch] == [(0, 3)] and ch[0].quant == (2.0, 128.5, 255.5, False)
    # a later layer reading the chain's float input (not its 8-bit form) ends the chain before it
    steps = [_qconv("q", "x", "a"), _conv("b", "a", "b"), _conv("c", "x", "c")]
    assert [(c.start, c.end) for c in plan_chains(steps, ["b", "c"])] == [(0, 2)]
    # ... and one quantizing in the middle starts a new chain
    steps = [_conv("a", "x", "a"), _conv("b", "a", "b"), _qconv("q", "b", "c"), _conv("d", "c", "d")]
    ch = plan_chains(steps, ["d"])
    assert [(c.start, c.end, c.quant is not None) for c in ch] == [(0, 2, False), (2, 4, True)]


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_quantize_nhwc_stores_the_bytes_qlayers_quantize_stores(ext: Any, dtype: str):
    import torch

    from ember.backends.cpu.kernels.qlayers import quantize, quantize_constants
    from ember.ir.dtype import DType
    from ember.ops.attrs import QuantParams

    p = QuantParams(0.0173, 131 if dtype == "uint8" else -3, DType(dtype))
    x = torch.randn(2, 3, 9, 7) * 3
    x[0, 0, 0, :4] = torch.tensor([1e9, -1e9, 0.0, (5 - p.zero_point + 0.5) * p.scale])  # saturation, a tie
    x[1, 2] = torch.arange(63, dtype=torch.float32).reshape(9, 7) * p.scale / 2  # every half step
    for src in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :, ::1]):
        got = ext.quantize_nhwc(src, *quantize_constants(p))
        want = quantize(src, p, torch.empty(src.shape, dtype=torch.float32, memory_format=torch.channels_last))
        assert got.dtype == want.dtype and got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, want)


@pytest.mark.parametrize("in_place", ["1", "0"])
def test_an_fp32_residual_read_last_by_its_step_is_added_in_place(ext: Any, monkeypatch: pytest.MonkeyPatch,
                                                                  in_place: str):
    """A step whose residual (an earlier step's output) has no later reader adds it with oneDNN's
    ``sum`` into the residual's own buffer; a residual that is the step's input, the chain's
    input, or read later still goes through the binary-add post-op. Every form gives the same
    numbers (``EMBER_CHAIN_SUM=0`` runs all through the binary add)."""
    import torch
    import torch.nn.functional as F

    monkeypatch.setenv("EMBER_CHAIN_SUM", in_place)
    g = torch.Generator().manual_seed(0)
    w1, w2, w3 = (torch.randn(8, 8, 3, 3, generator=g) * 0.2 for _ in range(3))
    plain = ext.Layer(w1, None, [1, 1], [1, 1], 1, "relu").prepare([2, 8, 6, 6], [1, 1], [1, 1])
    res2 = ext.Layer(w2, None, [1, 1], [1, 1], 1, "relu", residual=True).prepare([2, 8, 6, 6], [1, 1], [1, 1])
    res3 = ext.Layer(w3, None, [1, 1], [1, 1], 1, "clip", 0.0, 0.5, residual=True).prepare([2, 8, 6, 6], [1, 1],
                                                                                            [1, 1])
    x = torch.randn(2, 8, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    x_before = x.clone()
    # a = relu(c1(x)); b = relu(c2(a) + x) [chain input: binary add]; c = relu(c2(b) + b) [its own
    # input: binary add]; d = clip(c3(c) + a) [a read last here: in place]; e = relu(c2(d) + c) [in place]
    y = ext.run_chain([plain, res2, res2, res3, res2], x, [-1, 0, 1, 2, 3], [-2, -1, 1, 0, 2], [-2] * 5,
                      [3, 2, 4, 4, 4], [True] * 5, [0] * 5)
    a = F.conv2d(x, w1, padding=1).relu()
    b = (F.conv2d(a, w2, padding=1) + x).relu()
    c = (F.conv2d(b, w2, padding=1) + b).relu()
    d = (F.conv2d(c, w3, padding=1) + a).clamp(0.0, 0.5)
    e = (F.conv2d(d, w2, padding=1) + c).relu()
    torch.testing.assert_close(y, e, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, x_before)  # the chain's input is never written


@pytest.mark.skipif(not cpu_features().native(Precision.BF16), reason="no native bf16 on this CPU: builds keep fp32")
def test_a_bf16_engine_chains_its_convolutions(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """A bf16 build chains its persistent bf16 convolutions (bf16 activations between them, the
    residual added in place in bf16, the model output written float32); chained and one by one
    give the same numbers, within bf16's rounding of ONNX Runtime fp32, NaN where it puts NaN."""
    import onnxruntime as ort

    model = _model()
    config = ember.BuildConfig(device="cpu", precision="bf16")
    chained = ember.build(model.SerializeToString(), config, progress=False)
    monkeypatch.setenv(SWITCH_ENV, "0")
    alone = ember.build(model.SerializeToString(), config, progress=False)
    monkeypatch.delenv(SWITCH_ENV)
    assert {layer.tactic for layer in chained.plan.layers if "Conv" in layer.kind} == {"onednn_persistent"}
    with chained.create_context() as c1, alone.create_context() as c2:
        steps = c1.executor.program.chained
        assert steps is not None and [s.kind for s in steps].count("Chain") == 1
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((1, 8, 12, 12)).astype(np.float32) * 3
        bad = x.copy()
        bad[0, 0, 2, 3] = np.nan
        for feed in (x, bad, x):
            got, one_by_one = c1.infer({"x": feed})["y"], c2.infer({"x": feed})["y"]
            want = sess.run(None, {"x": feed})[0]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, one_by_one)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            assert max_rel_error(np.nan_to_num(got), np.nan_to_num(want)) < 3e-2


@needs_onednn_bf16
def test_a_bf16_residual_is_added_in_place_in_a_chain(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """bf16 steps (``dtypes`` code 3): the residual read last by its step is summed into in place;
    a step writing float32 reads a bf16 residual through the binary add (its buffer has another
    type). Checked against PyTorch on the same bf16-rounded tensors."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    w1, w2 = (torch.randn(8, 8, 3, 3, generator=g) * 0.2 for _ in range(2))
    bf = dict(src_dtype="bf16", dst_dtype="bf16")
    plain = ext.Layer(w1, None, [1, 1], [1, 1], 1, "relu", **bf).prepare([2, 8, 6, 6], [1, 1], [1, 1])
    res = ext.Layer(w2, None, [1, 1], [1, 1], 1, "relu", residual=True, **bf).prepare([2, 8, 6, 6], [1, 1], [1, 1])
    res_f32 = ext.Layer(w2, None, [1, 1], [1, 1], 1, "relu", residual=True, src_dtype="bf16",
                        dst_dtype="f32").prepare([2, 8, 6, 6], [1, 1], [1, 1])
    x = torch.randn(2, 8, 6, 6, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    # a = relu(c1(x)); b = relu(c1(a)); c = relu(c2(b) + a) [a read last: in place]; d = relu(c2(c) + b) in f32
    for in_place in ("1", "0"):
        monkeypatch.setenv("EMBER_CHAIN_SUM", in_place)
        y = ext.run_chain([plain, plain, res, res_f32], x, [-1, 0, 1, 2], [-2, -2, 0, 1], [-2] * 4, [2, 3, 3, 3],
                          [True] * 4, [3, 3, 3, 0])
        assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)

        def conv(t: Any, w: Any) -> Any:
            return F.conv2d(t.float(), w.to(torch.bfloat16).float(), padding=1)

        a = conv(x, w1).relu().to(torch.bfloat16)
        b = conv(a, w1).relu().to(torch.bfloat16)
        c = (conv(b, w2) + a.float()).relu().to(torch.bfloat16)
        d = (conv(c, w2) + b.float()).relu()
        torch.testing.assert_close(y, d, rtol=2e-2, atol=2e-2)


def test_pooled_buffers_never_overwrite_a_returned_output(ext: Any):
    """A chain's outputs come from a per-thread pool of buffers kept across runs (no fresh pages to
    fault in each run): a run's result, and an output another step still aliases (a residual
    added in place), never go back to the pool, so a later run cannot overwrite them. The pool's
    threshold (``EMBER_CHAIN_POOL_MB``, 0.25 MB by default) is read once per thread; these
    outputs (2x16x48x48 float32, 295 kB) are over it."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    w1, w2 = (torch.randn(16, 16, 3, 3, generator=g) * 0.2 for _ in range(2))
    plain = ext.Layer(w1, None, [1, 1], [1, 1], 1, "relu").prepare([2, 16, 48, 48], [1, 1], [1, 1])
    res = ext.Layer(w2, None, [1, 1], [1, 1], 1, "relu", residual=True).prepare([2, 16, 48, 48], [1, 1], [1, 1])

    def expected(x: Any) -> Any:
        a = F.conv2d(x, w1, padding=1).relu()
        b = F.conv2d(a, w1, padding=1).relu()
        c = (F.conv2d(b, w2, padding=1) + a).relu()  # a read last here: c is written into a's buffer
        return F.conv2d(c, w1, padding=1).relu()

    results, inputs = [], []
    for seed in range(4):
        x = torch.randn(2, 16, 48, 48, generator=torch.Generator().manual_seed(seed + 1))
        x = x.contiguous(memory_format=torch.channels_last)
        inputs.append(x)
        results.append(ext.run_chain([plain, plain, res, plain], x, [-1, 0, 1, 2], [-2, -2, 0, -2], [-2] * 4,
                                     [2, 2, 3, 3], [True] * 4, [0] * 4))
    pointers = {r.data_ptr() for r in results}
    assert len(pointers) == len(results)  # every result kept its own buffer
    for x, y in zip(inputs, results):
        torch.testing.assert_close(y, expected(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 3 * 224 * 224, (1 << 20) + 5, 3 << 20])
def test_the_extensions_finite_check_finds_every_nan_and_infinity(ext: Any, n: int):
    """``all_finite`` (the finite-input check of a run): any NaN or infinity anywhere, in the
    vectorized part, the tail or any thread's share, and not the overflow of a sum of finite values."""
    import torch

    x = torch.randn(n)
    assert ext.all_finite(x)
    for value in (float("nan"), float("inf"), float("-inf")):
        for pos in sorted({0, n // 2, n - 1}) if n else []:
            y = x.clone()
            y[pos] = value
            assert not ext.all_finite(y), (value, pos)
    assert ext.all_finite(torch.full((1000,), 3e38))  # the sum overflows; every value is finite
    with pytest.raises(ValueError, match="contiguous float32 CPU tensor"):
        ext.all_finite(torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="contiguous float32 CPU tensor"):
        ext.all_finite(torch.ones(4, 4).t())


def _se_model(batch: int = 2) -> onnx.ModelProto:
    """A MobileNetV3 block on 24 channels: 1x1 expand + HardSwish -> 3x3 depthwise + HardSwish ->
    squeeze-excite (GlobalAveragePool -> 1x1 + Relu -> 1x1 + HardSigmoid(1/6, 0.5) -> Mul) ->
    1x1 project + LeakyRelu(0.1) -> 1x1 + HardSigmoid (ONNX's default 0.2, 0.5)."""
    rng = np.random.default_rng(4)
    c, e, s = 24, 48, 12

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]), helper.make_node("HardSwish", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], group=e, pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c2"], ["a2"]),
             helper.make_node("GlobalAveragePool", ["a2"], ["p"]),
             helper.make_node("Conv", ["p", "w3", "b3"], ["c3"]), helper.make_node("Relu", ["c3"], ["a3"]),
             helper.make_node("Conv", ["a3", "w4", "b4"], ["c4"]),
             helper.make_node("HardSigmoid", ["c4"], ["a4"], alpha=1.0 / 6, beta=0.5),
             helper.make_node("Mul", ["a2", "a4"], ["m"]),
             helper.make_node("Conv", ["m", "w5", "b5"], ["c5"]),
             helper.make_node("LeakyRelu", ["c5"], ["a5"], alpha=0.1),
             helper.make_node("Conv", ["a5", "w6", "b6"], ["c6"]), helper.make_node("HardSigmoid", ["c6"], ["y"])]
    inits = [init("w1", e, c, 1, 1), init("b1", e), init("w2", e, 1, 3, 3), init("b2", e),
             init("w3", s, e, 1, 1), init("b3", s), init("w4", e, s, 1, 1), init("b4", e),
             init("w5", c, e, 1, 1), init("b5", c), init("w6", c, c, 1, 1), init("b6", c)]
    g = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, 20, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_hardswish_hardsigmoid_and_leaky_relu_layers_fuse_and_chain(ext: Any, monkeypatch: pytest.MonkeyPatch):
    """HardSwish, HardSigmoid (either alpha) and LeakyRelu are oneDNN post-ops of a persistent
    convolution in finite runs, so such layers chain (here, with the squeeze-excite's pooling and
    scale kept out of chains, the expand and depthwise, the squeeze-excite's two 1x1 layers, the
    projection and the last layer): every run computes what ONNX Runtime computes, and a run with
    NaN and infinity (layer by layer, activations after the call) keeps them where ONNX Runtime does."""
    from ember.backends.cpu.kernels.chain_steps import SWITCH_ENV as SE_ENV

    monkeypatch.setenv(SE_ENV, "0")
    monkeypatch.setenv(LAYOUT_ENV, "nhwc")  # the names below are channels-last chains', whichever layout times faster
    model = _se_model()
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    chained = [s.name for s in engine.compile().chained or () if s.kind == "Chain"]
    assert len(chained) == 3 and all("(2 layers chained)" in n for n in chained), chained
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 24, 20, 20)) * 3).astype(np.float32)  # past hardswish's -3 / 3 knees
    bad = x.copy()
    bad[0, 3, 4, 4], bad[1, 5, 10, 11] = np.nan, -np.inf
    with engine.create_context() as c:
        assert_runs_like_ort(model, [c], x, bad, tol=1e-5)


def test_a_layer_rejects_an_activation_onednn_does_not_fuse_here(ext: Any):
    import torch

    with pytest.raises(ValueError, match=r"unknown activation 'gelu' \(none, relu, clip, leaky_relu, hardsigmoid"):
        ext.Layer(torch.ones(4, 4, 1, 1), None, [1, 1], [1, 1], 1, activation="gelu")

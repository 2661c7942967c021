"""Squeeze-excite blocks inside chains (``ember.backends.cpu.kernels.chain_steps``, the extension's
``GlobalPool`` and ``ChannelScale``): a block's pooling and its per-channel Mul run as chain steps
between its convolutions, in channels-last and in the blocked layout, so a MobileNetV3 block is one
chain; what is not such a step (a Mul by a constant, a Mul of equal shapes) stays on its own, and
every engine computes what ONNX Runtime computes, NaN runs included."""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from bf16kit import needs_onednn_bf16, real_cpu_is_native  # tests/backends/cpu/bf16kit.py
from cpukit import assert_runs_like_ort, blocked_layout  # tests/backends/cpu/cpukit.py
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.cpu.chains import LAYOUT_ENV
from ember.backends.cpu.kernels.chain_steps import SWITCH_ENV as SE_ENV
from ember.tools.runners import max_rel_error

pytestmark = pytest.mark.usefixtures("fresh_native")

N, C, HW = 2, 24, 9


@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
def test_pool_and_scale_steps_compute_what_pytorch_computes(ext: Any, layout: str):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, HW, HW, generator=g).contiguous(memory_format=torch.channels_last)
    s = torch.randn(N, C, 1, 1, generator=g).contiguous(memory_format=torch.channels_last)
    pool, scale = ext.GlobalPool([N, C, HW, HW], layout, layout), ext.ChannelScale([N, C, HW, HW], layout, layout)
    assert pool.dst_dims == [N, C, 1, 1] and scale.dst_dims == [N, C, HW, HW]
    assert pool.blocked_output == scale.blocked_output == (layout == "blocked")
    pooled_want, scaled_want = x.mean((2, 3), keepdim=True), x * s
    if layout == "nhwc":
        pooled = torch.empty(N, C, 1, 1).contiguous(memory_format=torch.channels_last)
        pool.run(x, pooled)
        scaled = torch.empty_like(x)
        scale.run(x, scaled, s)
        torch.testing.assert_close(pooled, pooled_want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(scaled, scaled_want, rtol=0, atol=0)
        scale.run(x, x, s)  # in place, as a chain runs it over an input no later step reads
        torch.testing.assert_close(x, scaled_want, rtol=0, atol=0)
    else:
        xb, sb = blocked_layout(x), blocked_layout(s)
        pooled, scaled = torch.empty_like(sb), torch.empty_like(xb)
        pool.run(xb, pooled)
        scale.run(xb, scaled, sb)
        torch.testing.assert_close(pooled, blocked_layout(pooled_want), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(scaled, blocked_layout(scaled_want), rtol=0, atol=0)


def test_pool_and_scale_steps_refuse_what_they_cannot_run_with_errors_that_say_why(ext: Any):
    import torch

    with pytest.raises(ValueError, match="reads and writes one layout, nhwc or blocked: got nchw -> blocked"):
        ext.GlobalPool([N, C, HW, HW], "nchw", "blocked")
    with pytest.raises(ValueError, match=r"channel scale's input must be a non-empty \[N, C, H, W\]"):
        ext.ChannelScale([N, C, 0, HW])
    with pytest.raises(ValueError, match="unknown activation layout 'nchw16'"):
        ext.ChannelScale([N, C, HW, HW], "nchw16", "nchw16")
    scale = ext.ChannelScale([N, C, HW, HW])
    x = torch.ones(N, C, HW, HW).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="multiplies by its second input: pass it"):
        scale.run(x, torch.empty_like(x))
    with pytest.raises(ValueError, match=r"scale has shape \[2, 24, 1, 2\], the primitive was made for \[2, 24, 1"):
        scale.run(x, torch.empty_like(x), torch.ones(N, C, 1, 2).contiguous(memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="no activation and no second input"):
        ext.GlobalPool([N, C, HW, HW]).run(x, torch.empty(N, C, 1, 1), x)


def _act(kind: str, x: str, y: str) -> list:
    """Nodes computing activation ``kind`` of ``x`` into ``y``; "silu" as exporters write it (x * sigmoid(x))."""
    if kind == "silu":
        return [helper.make_node("Sigmoid", [x], [y + "_s"]), helper.make_node("Mul", [x, y + "_s"], [y])]
    if kind == "hardsigmoid":
        return [helper.make_node("HardSigmoid", [x], [y], alpha=1.0 / 6, beta=0.5)]
    return [helper.make_node(kind, [x], [y])]


#: a block's activations: its expand and depthwise layers', the squeeze's and the gate's
MOBILENET_V3 = ("HardSwish", "Relu", "hardsigmoid")
EFFICIENTNET = ("silu", "silu", "Sigmoid")


def _se_model(gate_first: bool = False, dw_kernel: int = 3, acts: tuple[str, str, str] = MOBILENET_V3
              ) -> onnx.ModelProto:
    """A MobileNetV3 block on C channels with squeeze-excite (expand + HardSwish, depthwise +
    HardSwish, GlobalAveragePool -> 1x1 + Relu -> 1x1 + HardSigmoid -> Mul, project; ``acts``:
    EfficientNet's SiLU, SiLU and Sigmoid instead) and a residual, then a second block's expand
    reading the sum. ``gate_first``: the Mul's inputs the other way round."""
    rng = np.random.default_rng(7)
    e, s = 2 * C, C // 2

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    p = dw_kernel // 2
    block, squeeze, gate = acts
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]), *_act(block, "c1", "a1"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], group=e, pads=[p] * 4),
             *_act(block, "c2", "a2"),
             helper.make_node("GlobalAveragePool", ["a2"], ["sq"]),
             helper.make_node("Conv", ["sq", "w3", "b3"], ["c3"]), *_act(squeeze, "c3", "a3"),
             helper.make_node("Conv", ["a3", "w4", "b4"], ["c4"]), *_act(gate, "c4", "gate"),
             helper.make_node("Mul", ["gate", "a2"] if gate_first else ["a2", "gate"], ["m"]),
             helper.make_node("Conv", ["m", "w5", "b5"], ["c5"]),
             helper.make_node("Add", ["c5", "x"], ["r"]),
             helper.make_node("Conv", ["r", "w6", "b6"], ["c6"]), helper.make_node("Relu", ["c6"], ["y"])]
    inits = [init("w1", e, C, 1, 1), init("b1", e), init("w2", e, 1, dw_kernel, dw_kernel), init("b2", e),
             init("w3", s, e, 1, 1), init("b3", s), init("w4", e, s, 1, 1), init("b4", e),
             init("w5", C, e, 1, 1), init("b5", C), init("w6", C, C, 1, 1), init("b6", C)]
    g = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, HW, HW])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _chains(engine: Any) -> list[str]:
    return [s.name for s in engine.compile().chained or () if s.kind == "Chain"]


def _first_chain_runs(engine: Any, x: np.ndarray, dtype: Any = None) -> None:
    """The program's first chain (reading the graph's input, as ``dtype``: a bf16 engine converts it
    first) runs in its C++ call without an error: a chain step that does not fit its arguments would
    otherwise fall back to the layers one by one, right but slow, unseen by an output check."""
    import torch

    from ember.backends.cpu.chains import run_chain

    program = engine.compile()
    run_chain(program._ext, program._chains[0], torch.from_numpy(x).to(dtype or torch.float32))


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    x = (np.random.default_rng(8).standard_normal((N, C, HW, HW)) * 3).astype(np.float32)
    bad = x.copy()
    bad[0, 2, 4, 4], bad[1, 7, 0, 8] = np.nan, np.inf
    return x, bad


@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
@pytest.mark.parametrize("gate_first,dw_kernel,acts", [(False, 3, MOBILENET_V3), (True, 5, MOBILENET_V3),
                                                      (False, 5, EFFICIENTNET), (True, 3, EFFICIENTNET)])
def test_a_squeeze_excite_block_runs_in_one_chain_as_onnx_runtime_computes_it(
        ext: Any, monkeypatch: pytest.MonkeyPatch, layout: str, gate_first: bool, dw_kernel: int,
        acts: tuple[str, str, str]):
    """The whole block, pooling and scale included, is one chain (its 8 layers: 6 convolutions, the
    pooling, the scale), MobileNetV3's activations or EfficientNet's (SiLU, a Sigmoid gate, fused
    as oneDNN post-ops); with the steps switched off the pooling and scale cut it in three; both
    compute what ONNX Runtime computes, and a run with NaN and infinity keeps them where ONNX
    Runtime does."""
    model = _se_model(gate_first, dw_kernel, acts)
    monkeypatch.setenv(LAYOUT_ENV, layout)
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    blocked = ", blocked" if layout == "blocked" else ""
    assert _chains(engine) == [f"c1 .. c6 (8 layers chained{blocked})"]
    monkeypatch.setenv(SE_ENV, "0")
    apart = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    assert _chains(apart) == [f"c1 .. c2 (2 layers chained{blocked})",
                              f"c3 .. c4 (2 layers chained{blocked})"]  # c5 adds x, no chain's: alone
    x, bad = _inputs()
    _first_chain_runs(engine, x)
    with engine.create_context() as a, apart.create_context() as b:
        assert_runs_like_ort(model, [a, b], x, bad, tol=1e-5)


def _mul_model(other: str) -> onnx.ModelProto:
    """conv -> Mul(c1, f) -> conv, where ``other`` says what f is: a constant [1, C, 1, 1] ("const"),
    the first conv's own output ("square": equal shapes), or a graph input [N, C, 1, 1] ("input": a
    gate from outside any chain)."""
    rng = np.random.default_rng(9)
    f = "c1" if other == "square" else "f"
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Mul", ["c1", f], ["m"]),
             helper.make_node("Conv", ["m", "w2"], ["y"])]
    inits = [numpy_helper.from_array((rng.standard_normal((C, C, 1, 1)) * 0.3).astype(np.float32), n)
             for n in ("w1", "w2")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, C, HW, HW])]
    if other == "const":
        inits.append(numpy_helper.from_array(rng.standard_normal((1, C, 1, 1)).astype(np.float32), "f"))
    if other == "input":
        inputs.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, [N, C, 1, 1]))
    g = helper.make_graph(nodes, "mul", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("other", ["const", "square", "input"])
def test_a_mul_that_is_no_chains_scale_runs_on_its_own(ext: Any, other: str):
    """A Mul by a constant is folded into the convolution before it; a Mul of two equal shapes is no
    channel scale (no chain link); a scale whose gate comes from outside the chain (a graph input)
    has a link but no chain can take it. The last two run as steps of their own, and every engine
    computes what ONNX Runtime computes."""
    import onnxruntime as ort

    model = _mul_model(other)
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    program = engine.compile()
    muls = [s for s in program.steps if s.kind == "Mul"]
    if other == "const":
        assert not muls
    else:
        assert len(muls) == 1 and (getattr(muls[0].kernel, "chain_link", None) is not None) == (other == "input")
        assert [s.kind for s in program.chained or program.steps].count("Mul") == 1  # a step of its own
    x, bad = _inputs()
    gate = np.random.default_rng(13).standard_normal((N, C, 1, 1)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with engine.create_context() as c:
        for feed in (x, bad):
            feeds = {"x": feed, **({"f": gate} if other == "input" else {})}
            got, want = c.infer(feeds)["y"], sess.run(None, feeds)[0]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            assert max_rel_error(np.nan_to_num(got), np.nan_to_num(want)) < 1e-5


def test_squeeze_excite_steps_stay_out_of_int8_builds(ext: Any):
    """An INT8 build's pooling and scale (between 8-bit layers, on dequantized values) run on their
    own, and the engine is still right."""
    model = _se_model()
    x, _ = _inputs()
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu", precision="int8"),
                         calibration_data=[{"x": x}], progress=False)
    program = engine.compile()
    kinds = {s.kind: s for s in program.steps}
    assert kinds["GlobalAveragePool"] and kinds["Mul"]
    assert all(getattr(s.kernel, "chain_link", None) is None for s in program.steps
               if s.kind in ("GlobalAveragePool", "Mul"))
    import onnxruntime as ort

    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with engine.create_context() as c:
        got = c.infer({"x": x})["y"]
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()


def _seresnet_model(c: int, identity: str, tail: str = "add-relu") -> onnx.ModelProto:
    """An SE-ResNet block on c channels: 3x3 + Relu -> 1x1 -> squeeze-excite (Sigmoid gate) ->
    ``tail`` ("add-relu": Relu(x * gate + identity), "add": no Relu, "relu": Relu(x * gate), no
    identity), then a 3x3 + Relu. ``identity``: "input" (the block's input, the chain's) or "step"
    (a 1x1 layer's output inside the chain)."""
    rng = np.random.default_rng(11)
    s = max(4, c // 4)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.25).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]), helper.make_node("Relu", ["c0"], ["a0"]),
             helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a1"]),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"]),
             helper.make_node("Conv", ["p", "w3", "b3"], ["c3"]), helper.make_node("Relu", ["c3"], ["a3"]),
             helper.make_node("Conv", ["a3", "w4", "b4"], ["c4"]), helper.make_node("Sigmoid", ["c4"], ["g"]),
             helper.make_node("Mul", ["c2", "g"], ["m"])]
    ident = "x" if identity == "input" else "a0"
    if tail == "add-relu":
        nodes += [helper.make_node("Add", ["m", ident], ["s"]), helper.make_node("Relu", ["s"], ["r"])]
    elif tail == "add":
        nodes += [helper.make_node("Add", [ident, "m"], ["r"])]
    else:
        nodes += [helper.make_node("Relu", ["m"], ["r"])]
    nodes += [helper.make_node("Conv", ["r", "w5", "b5"], ["c5"], pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c5"], ["y"])]
    inits = [init("w0", c, c, 1, 1), init("b0", c), init("w1", c, c, 3, 3), init("b1", c), init("w2", c, c, 1, 1),
             init("b2", c), init("w3", s, c, 1, 1), init("b3", s), init("w4", c, s, 1, 1), init("b4", c),
             init("w5", c, c, 3, 3), init("b5", c)]
    g = helper.make_graph(nodes, "seresnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, c, HW, HW])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
@pytest.mark.parametrize("c", [32, 24])  # 32: the blocked layout as many bytes as channels-last; 24: padded
@pytest.mark.parametrize("identity,tail", [("input", "add-relu"), ("step", "add-relu"), ("input", "add"),
                                           ("step", "relu")])
def test_an_se_resnet_scale_adds_its_identity_and_relu_inside_the_chain(
        ext: Any, monkeypatch: pytest.MonkeyPatch, layout: str, c: int, identity: str, tail: str):
    """SE-ResNet's relu(x * gate + identity), one FusedElementwise after the optimizer, runs as a
    channel scale that sums the identity into its output (oneDNN's sum post-op) and fuses the ReLU:
    the block is one chain whether the identity is the chain's input (reordered to a blocked chain's
    layout first) or a step's output, and it computes what ONNX Runtime computes."""
    model = _seresnet_model(c, identity, tail)
    monkeypatch.setenv(LAYOUT_ENV, layout)
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    blocked = ", blocked" if layout == "blocked" else ""
    assert _chains(engine)[0] in (f"c0 .. m (7 layers chained{blocked})", f"c0 .. r (7 layers chained{blocked})")
    x = np.random.default_rng(12).standard_normal((N, c, HW, HW)).astype(np.float32)
    bad = x.copy()
    bad[1, 3, 2, 2] = np.nan
    _first_chain_runs(engine, x)
    with engine.create_context() as ctx:
        assert_runs_like_ort(model, [ctx], x, bad, tol=1e-5)


def test_a_scale_whose_relu_could_meet_an_overflow_stays_out_of_chains(ext: Any):
    """With an Exp upstream, x * gate + identity can overflow to infinity and then NaN, which a fused
    ReLU would turn into 0: that FusedElementwise keeps its own kernel."""
    model = _seresnet_model(24, "input")
    graph = model.graph
    for node in graph.node:  # the 1x1 layer's output through an Exp before the squeeze-excite
        if node.output[0] == "c2":
            node.output[0] = "c2e"
    graph.node.insert(5, helper.make_node("Exp", ["c2e"], ["c2"]))
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    steps = engine.compile().steps
    scale = [s for s in steps if s.kind == "FusedElementwise"]
    assert scale and all(getattr(s.kernel, "chain_link", None) is None for s in scale)
    x, bad = _inputs()
    x, bad = x[:, :24] * 0.1, bad[:, :24] * 0.1
    with engine.create_context() as ctx:
        assert_runs_like_ort(model, [ctx], x, bad, tol=1e-5)


def test_the_se_resnet_scale_compiled_without_its_graph_runs_and_offers_no_chain_step():
    """Compiled on its own (no graph, as the CUDA tests' CPU reference compiles it), nothing says its
    inputs are finite: the kernel runs, NaN stays NaN, and it offers no fused-ReLU chain step (this
    raised AttributeError in the twentieth session's code)."""
    import torch

    from ember.backends.base import CompileContext
    from ember.backends.cpu.kernels.fused import fused_elementwise
    from ember.ir import Node, OpType
    from ember.ops.attrs import FusedElementwiseAttrs, FusedStep

    steps = (FusedStep(OpType.MUL, (0, 1)), FusedStep(OpType.ADD, (3, 2)),
             FusedStep(OpType.RELU, (4,)))
    node = Node("se", OpType.FUSED_ELEMENTWISE, ("x", "g", "r"), ("y",), FusedElementwiseAttrs(steps))
    kernel = fused_elementwise(node, CompileContext(None, {}, torch.device("cpu")))
    assert getattr(kernel, "chain_link", None) is None
    x, g, r = torch.randn(2, 8, 3, 3), torch.rand(2, 8, 1, 1), torch.randn(2, 8, 3, 3)
    x[0, 0, 0, 0] = float("nan")
    got = kernel([x, g, r])[0]
    want = torch.relu(x * g + r)
    assert torch.equal(got.isnan(), want.isnan()) and torch.allclose(got.nan_to_num(), want.nan_to_num())


def test_a_channel_scale_refuses_a_fused_flag_that_does_not_match_it(ext: Any):
    import torch

    x = torch.ones(N, C, HW, HW).contiguous(memory_format=torch.channels_last)
    g = torch.ones(N, C, 1, 1).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="activation is fused: pass fused"):
        ext.ChannelScale([N, C, HW, HW], "nhwc", "nhwc", True, "relu").run(x, torch.empty_like(x), g)
    with pytest.raises(ValueError, match="without an activation fuses none"):
        ext.ChannelScale([N, C, HW, HW]).run(x, torch.empty_like(x), g, True)


def test_a_chain_that_cannot_take_its_input_says_so_once_and_runs_its_layers(ext: Any,
                                                                            caplog: pytest.LogCaptureFixture):
    """A chain's step handed an input its primitives were not made for (here a larger image) runs
    the layers one by one, right, and logs once which chain fell back and why."""
    import logging

    import torch

    model = _se_model()
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    (step,) = [s for s in engine.compile().chained or () if s.kind == "Chain"]
    x = torch.randn(N, C, HW + 2, HW + 2)
    with caplog.at_level(logging.WARNING, logger="ember.build"):
        outs = [step.kernel([x])[0] for _ in range(2)]
    warnings = [r.getMessage() for r in caplog.records if "its layers run one by one" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("CPU chain c1 .. c6 failed (")
    assert tuple(outs[0].shape) == (N, C, HW + 2, HW + 2)
    torch.testing.assert_close(outs[0], outs[1])


@needs_onednn_bf16  # it makes bf16 primitives
@pytest.mark.parametrize("layout", ["nhwc", "blocked"])
def test_pool_and_scale_steps_compute_in_bf16_as_pytorch_does(ext: Any, layout: str):
    """A bf16 layer's pooling and scale run on bf16 activations (oneDNN accumulating the average in
    float32); a type other than f32 / bf16 is refused by name."""
    import torch

    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, C, HW, HW, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    s = torch.randn(N, C, 1, 1, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    r = torch.randn(N, C, HW, HW, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    pool = ext.GlobalPool([N, C, HW, HW], layout, layout, "bf16")
    scale = ext.ChannelScale([N, C, HW, HW], layout, layout, True, "relu", "bf16")
    pooled_want = x.float().mean((2, 3), keepdim=True)
    scaled_want = (x.float() * s.float() + r.float()).relu()
    if layout == "nhwc":
        pooled = torch.empty(N, C, 1, 1, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        pool.run(x, pooled)
        out = r.clone()
        scale.run(x, out, s, True)
        torch.testing.assert_close(pooled.float(), pooled_want, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(out.float(), scaled_want, rtol=1e-2, atol=2e-2)
    else:
        pooled = torch.empty(blocked_layout(s.float()).numel(), dtype=torch.bfloat16)
        pool.run(blocked_layout(x.float()).to(torch.bfloat16), pooled)
        out = blocked_layout(r.float()).to(torch.bfloat16)
        scale.run(blocked_layout(x.float()).to(torch.bfloat16), out, blocked_layout(s.float()).to(torch.bfloat16), True)
        torch.testing.assert_close(pooled.float(), blocked_layout(pooled_want), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(out.float(), blocked_layout(scaled_want), rtol=1e-2, atol=2e-2)
    with pytest.raises(ValueError, match="computes in f32 or bf16, got 'f16'"):
        ext.GlobalPool([N, C, HW, HW], "nhwc", "nhwc", "f16")


# The real CPU builds (no fake): without native bf16 the build keeps fp32 and there is no bf16 chain.
@pytest.mark.skipif(not real_cpu_is_native(),
                    reason="this CPU has no native bf16 (AMX-BF16 / AVX-512 BF16): builds keep fp32")
@pytest.mark.parametrize("block", ["mobilenet-v3", "efficientnet", "se-resnet"])
def test_a_bf16_squeeze_excite_block_is_one_chain(ext: Any, block: str):
    """In a bf16 build the block's pooling and scale are bf16 chain steps between its bf16
    convolutions: one chain, within bf16's rounding of the float32 engine, NaN where ONNX Runtime
    puts it."""
    import onnxruntime as ort
    import torch

    model = _seresnet_model(C, "input") if block == "se-resnet" else _se_model(
        False, 3, MOBILENET_V3 if block == "mobilenet-v3" else EFFICIENTNET)
    config = ember.BuildConfig(device="cpu", precision="bf16")
    engine = ember.build(model.SerializeToString(), config, progress=False)
    assert ("(7 layers chained" if block == "se-resnet" else "(8 layers chained") in _chains(engine)[0]
    fp32 = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)
    x, bad = _inputs()
    _first_chain_runs(engine, x, torch.bfloat16)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with engine.create_context() as c, fp32.create_context() as f:
        for feed in (x, bad):
            got, want = c.infer({"x": feed})["y"], f.infer({"x": feed})["y"]
            assert got.dtype == np.float32
            np.testing.assert_array_equal(np.isnan(got), np.isnan(sess.run(None, {"x": feed})[0]))
            assert max_rel_error(np.nan_to_num(got), np.nan_to_num(want)) < 3e-2


@pytest.mark.parametrize("block", ["mobilenet-v3", "se-resnet"])
def test_a_bf16_build_that_keeps_fp32_chains_as_the_fp32_build(ext: Any, block: str):
    """A bf16 request on a CPU without native bf16 keeps every layer fp32, and its squeeze-excite
    steps join the chain as in an fp32 build (they used to cut it in two: the steps took float32
    only in an fp32 build)."""
    from bf16kit import PLAIN, faked_cpu  # tests/backends/cpu/bf16kit.py

    model = _seresnet_model(C, "input") if block == "se-resnet" else _se_model(False, 3, MOBILENET_V3)
    with faked_cpu(PLAIN), pytest.warns(UserWarning, match="keeps fp32"):
        engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu", precision="bf16"),
                             progress=False)
    fp32 = ember.build(model.SerializeToString(), ember.BuildConfig(device="cpu"), progress=False)

    def members(e: Any) -> list[str]:  # the chains' layers; each build times its layout on its own
        return [name.replace(", blocked", "") for name in _chains(e)]

    assert members(engine) == members(fp32)
    assert ("(7 layers chained" if block == "se-resnet" else "(8 layers chained") in _chains(engine)[0]
    x, _ = _inputs()
    with engine.create_context() as c, fp32.create_context() as f:
        np.testing.assert_allclose(c.infer({"x": x})["y"], f.infer({"x": x})["y"], rtol=1e-5, atol=1e-5)

"""The CPU tactic ``onednn_persistent`` (persistent oneDNN primitives, ``ember.backends.cpu.native``).

Tests marked by the ``ext`` fixture need the extension (a GNU-OpenMP oneDNN, g++ and ninja):

    EMBER_ONEDNN_PREFIX=/tmp/onednn-gomp .venv/bin/pytest -q tests/backends/cpu/test_conv_persistent.py

and skip with the reason where it is absent. The unavailable paths (no library, a SYCL / TBB /
Intel-OpenMP build, no compiler, no ninja, the switch) run everywhere, on fake installs.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bf16kit import needs_onednn_bf16  # tests/backends/cpu/bf16kit.py
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.base import CompileContext
from ember.backends.cpu import CPUBackend, native
from ember.backends.cpu.features import cpu_features
from ember.backends.cpu.kernels import conv_persistent
from ember.backends.tensors import max_relative_error
from ember.errors import GraphError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import Activation, ConvAttrs, FusedConvAttrs
from ember.plan.config import Device, Precision

TACTIC = conv_persistent.TACTIC
pytestmark = pytest.mark.usefixtures("fresh_native")


# ----------------------------------------------------------------------------- models and oracle


def conv_model(cin: int, cout: int, k: int, *, stride: int = 1, group: int = 1, pads: Optional[list[int]] = None,
               dilation: int = 1, auto_pad: str = "", bias: bool = True, act: str = "", residual: bool = False,
               hw: int = 13, batch: Any = 1, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv [-> Add(residual input)] [-> Relu | Clip(0, 6)]; ``batch`` may be a symbol."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    conv_in = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        conv_in.append("b")
    attrs: dict[str, Any] = {"strides": [stride, stride], "group": group, "dilations": [dilation, dilation]}
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    else:
        attrs["pads"] = pads if pads is not None else [k // 2] * 4
    nodes = [helper.make_node("Conv", conv_in, ["c"], **attrs)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, hw, hw])]
    last = "c"
    if residual:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [batch, cout, 1, 1]))
        nodes.append(helper.make_node("Add", [last, "r"], ["s"]))
        last = "s"
    if act == "relu":
        nodes.append(helper.make_node("Relu", [last], ["y"]))
    elif act == "clip":
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y"]))
    elif act == "leaky":  # an activation oneDNN does not get: applied after the call
        nodes.append(helper.make_node("LeakyRelu", [last], ["y"], alpha=0.1))
    else:
        nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "conv", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if residual:  # the residual's shape is the conv output's
        out = next(v for v in onnx.shape_inference.infer_shapes(model).graph.value_info if v.name == "c")
        model.graph.input[1].type.CopyFrom(out.type)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def build(model: onnx.ModelProto, tmp_path: Path, persistent: bool, monkeypatch: pytest.MonkeyPatch,
          **config: Any) -> ember.Engine:
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    monkeypatch.setenv(native.SWITCH_ENV, "1" if persistent else "0")
    try:
        return ember.build(str(path), ember.BuildConfig(device=Device.CPU, **config))
    finally:
        monkeypatch.delenv(native.SWITCH_ENV)


def conv_tactics(engine: ember.Engine) -> set[str]:
    return {layer.tactic for layer in engine.plan.layers if layer.kind in ("Conv", "FusedConv")}


def feeds_for(model: onnx.ModelProto, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.dim_value else batch for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = (rng.standard_normal(dims) * 3).astype(np.float32)
    return feeds


# ----------------------------------------------------------------------------- layer forms

FORMS: dict[str, dict[str, Any]] = {
    "1x1": dict(cin=16, cout=24, k=1),
    "3x3 + relu": dict(cin=8, cout=16, k=3, act="relu"),
    "stride 2 + clip": dict(cin=8, cout=16, k=3, stride=2, act="clip"),
    "depthwise + clip": dict(cin=32, cout=32, k=3, group=32, act="clip"),
    "depthwise stride 2": dict(cin=24, cout=24, k=3, group=24, stride=2, act="clip"),
    "groups": dict(cin=12, cout=18, k=3, group=3),
    "asymmetric pads": dict(cin=8, cout=12, k=3, stride=2, pads=[0, 1, 1, 2]),
    "auto_pad SAME_UPPER": dict(cin=8, cout=12, k=4, stride=2, auto_pad="SAME_UPPER", act="relu"),
    "dilation 2": dict(cin=8, cout=8, k=3, dilation=2, pads=[2, 2, 2, 2]),
    "no bias": dict(cin=8, cout=8, k=3, bias=False, act="relu"),
    "residual": dict(cin=16, cout=16, k=1, residual=True),
    "residual + relu": dict(cin=16, cout=16, k=3, residual=True, act="relu"),
    "stem 3->32 s2 + clip": dict(cin=3, cout=32, k=3, stride=2, act="clip", hw=32),
    "residual + leaky relu": dict(cin=16, cout=16, k=3, residual=True, act="leaky"),
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("form", list(FORMS))
def test_layer_forms_match_ort_and_prepacked(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             form: str, batch: int) -> None:
    model = conv_model(batch=batch, **FORMS[form])
    fast = build(model, tmp_path, True, monkeypatch)
    base = build(model, tmp_path, False, monkeypatch)
    assert conv_tactics(fast) == {TACTIC}
    assert TACTIC not in conv_tactics(base)
    feeds = feeds_for(model, batch)
    want = ort_run(model, feeds)
    with fast.create_context() as c1, base.create_context() as c0:
        got, ref = c1.infer(feeds)["y"], c0.infer(feeds)["y"]
    assert got.shape == want.shape
    assert max_relative_error(got, want) < 1e-4, form
    assert max_relative_error(got, ref) < 1e-5, form


@pytest.mark.parametrize("act", ["relu", "clip"])
@pytest.mark.parametrize("residual", [False, True])
def test_nan_and_inf_kept_as_ort_keeps_them(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           act: str, residual: bool) -> None:
    """oneDNN's relu / clip post-ops turn NaN into 0; the tactic fuses them only in finite runs
    (issue 17). A finite run, a NaN / inf run and a finite run again on one context."""
    model = conv_model(8, 8, 3, act=act, residual=residual, group=8 if act == "clip" else 1)
    engine = build(model, tmp_path, True, monkeypatch)
    assert conv_tactics(engine) == {TACTIC}
    finite = feeds_for(model, 1)
    bad = {k: v.copy() for k, v in finite.items()}
    bad["x"][0, 0, 2, 3] = np.nan
    bad["x"][0, 3, 7, 7] = np.inf
    bad["x"][0, 5, 9, 1] = -np.inf
    if residual:
        bad["r"][0, 1, 4, 4] = np.nan
    runs_match_ort(engine, model, finite, bad, 1e-4)


def runs_match_ort(engine: ember.Engine, model: onnx.ModelProto, finite: dict[str, np.ndarray],
                   bad: dict[str, np.ndarray], tolerance: float) -> None:
    """A finite run, a run with NaN / inf and a finite run again on one context: NaN and infinities
    where ONNX Runtime puts them, the rest within ``tolerance``."""
    with engine.create_context() as ctx:
        for feeds in (finite, bad, finite):
            got, want = ctx.infer(feeds)["y"], ort_run(model, feeds)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
            assert max_relative_error(got, want) < tolerance
            assert feeds is finite or np.isnan(want).any()


needs_bf16 = pytest.mark.skipif(not cpu_features().native(Precision.BF16),
                                reason="this CPU has no native bf16 (AMX-BF16 / AVX-512 BF16): builds keep fp32")


@needs_bf16
@pytest.mark.parametrize("form", ["1x1", "3x3 + relu", "depthwise stride 2", "asymmetric pads", "residual + relu",
                                  "stem 3->32 s2 + clip", "residual + leaky relu"])
def test_bf16_layers_run_persistent_primitives_within_bf16_rounding(ext: Any, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    """A bf16 build's convolutions are persistent bf16 primitives (weight packed bf16, bias f32);
    they agree with ONNX Runtime fp32 to bf16's rounding and with the ``mkldnn_prepacked`` bf16
    layer closely. The model's output is written float32 (a graph output), the residual read bf16."""
    model = conv_model(batch=2, **FORMS[form])
    fast = build(model, tmp_path, True, monkeypatch, precision="bf16")
    base = build(model, tmp_path, False, monkeypatch, precision="bf16")
    assert conv_tactics(fast) == {TACTIC} and TACTIC not in conv_tactics(base)
    assert {str(layer.precision) for layer in fast.plan.layers if layer.kind in ("Conv", "FusedConv")} == {"bf16"}
    feeds = feeds_for(model, 2)
    want = ort_run(model, feeds)
    with fast.create_context() as c1, base.create_context() as c0:
        got, ref = c1.infer(feeds)["y"], c0.infer(feeds)["y"]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert max_relative_error(got, want) < 3e-2, form
    assert max_relative_error(got, ref) < 1e-2, form


@needs_bf16
@pytest.mark.parametrize("residual", [False, True])
def test_bf16_runs_with_nan_compute_in_float32(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               residual: bool) -> None:
    """oneDNN's AMX kernels spread one NaN beyond the outputs whose windows hold it; a bf16 layer
    on a run with NaN or infinity computes in float32, so the non-finite values land where ONNX
    Runtime puts them (and the finite run after it is the fast one again)."""
    model = conv_model(16, 16, 3, act="relu", residual=residual, hw=12)
    engine = build(model, tmp_path, True, monkeypatch, precision="bf16")
    assert conv_tactics(engine) == {TACTIC}
    finite = feeds_for(model, 1)
    bad = {k: v.copy() for k, v in finite.items()}
    bad["x"][0, 2, 3, 4] = np.nan
    bad["x"][0, 7, 9, 9] = np.inf
    runs_match_ort(engine, model, finite, bad, 3e-2)


@needs_onednn_bf16  # it prepares a bf16 primitive
def test_bf16_layer_refuses_mixed_types(ext: Any) -> None:
    w = torch.randn(8, 8, 3, 3)
    with pytest.raises(ValueError, match="a float32 one f32 or bf16"):
        ext.Layer(w, None, [1, 1], [1, 1], 1, src_dtype="u8")
    with pytest.raises(ValueError, match="a bf16 one bf16 or f32"):
        ext.Layer(w, None, [1, 1], [1, 1], 1, dst_dtype="bf16")  # f32 activations writing bf16
    conv = ext.Layer(w, None, [1, 1], [1, 1], 1, src_dtype="bf16", dst_dtype="bf16").prepare([1, 8, 6, 6], [1, 1],
                                                                                             [1, 1])
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    out = torch.empty(1, 8, 6, 6, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="input must be a BFloat16"):
        conv.run(x, out)


def test_residual_descriptor_only_where_a_binary_post_op_adds_one(ext: Any) -> None:
    """A primitive reads a residual only where its first post-op is a binary add: the plain and the
    fused-ReLU primitive of a residual layer do, those of a layer without one do not. oneDNN 3.2
    answers the query for post-op 0's second source whatever kind that post-op is (for a ReLU: the
    unused bytes of the post-op's union, whatever the heap held there), so the extension asks only
    where the post-op is binary. Those bytes once read as a descriptor with ndims -1, and oneDNN's
    size computation wrote over the stack: the rare segmentation fault of sessions 21-23
    (docs/CPU_NATIVE.md, "A rare crash"). Which bytes a ReLU's union holds depends on the heap's
    history, so this checks the answers, not the garbage; layers are made and freed in turn so that
    heap chunks of descriptors and post-ops get reused."""
    w = torch.randn(16, 16, 3, 3)
    dims, pads, out_bytes = [2, 16, 8, 8], [1, 1], 2 * 16 * 8 * 8 * 4
    for _ in range(20):
        added = ext.Layer(w, None, [1, 1], [1, 1], 1, activation="relu", residual=True).prepare(dims, pads, pads)
        assert added.residual_bytes == [out_bytes, out_bytes]  # the plain and the fused-ReLU primitive
        del added
        plain = ext.Layer(w, None, [1, 1], [1, 1], 1, activation="relu").prepare(dims, pads, pads)
        assert plain.residual_bytes == [0, 0]
        del plain


def test_fused_epilogue_used_only_in_finite_runs(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused primitive runs where the inputs are finite (the point of the fusion), the exact one else."""
    calls: list[bool] = []
    real = conv_persistent._ShapeCache.get

    def spy(self: Any, shape: Any) -> Any:
        conv, out = real(self, shape)
        return _Spy(conv, calls), out

    monkeypatch.setattr(conv_persistent._ShapeCache, "get", spy)
    model = conv_model(8, 8, 3, act="clip")
    engine = build(model, tmp_path, True, monkeypatch)
    feeds = feeds_for(model, 1)
    with engine.create_context() as ctx:
        ctx.infer(feeds)
        feeds["x"][0, 0, 0, 0] = np.nan
        ctx.infer(feeds)
    assert calls[-2:] == [True, False]


class _Spy:
    def __init__(self, conv: Any, calls: list[bool]) -> None:
        self.conv, self.calls = conv, calls

    def run(self, x: Any, out: Any, r: Any, fused: bool) -> None:
        self.calls.append(fused)
        self.conv.run(x, out, r, fused)


def test_dynamic_batch_one_primitive_per_shape(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = conv_model(16, 16, 3, act="relu", residual=True, batch="N")
    engine = build(model, tmp_path, True, monkeypatch)
    assert conv_tactics(engine) == {TACTIC}
    with engine.create_context() as ctx:
        for batch in (1, 4, 2, 1, 4):
            feeds = feeds_for(model, batch, seed=batch)
            got = ctx.infer(feeds)["y"]
            assert got.shape[0] == batch
            assert max_relative_error(got, ort_run(model, feeds)) < 1e-4


def test_shape_cache_keeps_at_most_max_shapes(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conv_persistent, "MAX_SHAPES", 2)
    model = conv_model(8, 8, 3, act="clip", batch="N")
    engine = build(model, tmp_path, True, monkeypatch)
    seen: list[int] = []
    real = conv_persistent._ShapeCache.get

    def spy(self: Any, shape: Any) -> Any:
        hit = real(self, shape)
        seen.append(len(self.prims))
        return hit

    monkeypatch.setattr(conv_persistent._ShapeCache, "get", spy)
    with engine.create_context() as ctx:
        for batch in (1, 2, 3, 1, 2):
            feeds = feeds_for(model, batch, seed=batch)
            assert max_relative_error(ctx.infer(feeds)["y"], ort_run(model, feeds)) < 1e-4
    assert max(seen) == 2


def test_two_contexts_from_two_threads(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is shared by every context: concurrent runs (different batches) stay right."""
    model = conv_model(24, 24, 3, group=24, act="clip", batch="N", hw=28)
    engine = build(model, tmp_path, True, monkeypatch)
    cases = [feeds_for(model, b, seed=b) for b in (1, 2, 3, 5)]
    wants = [ort_run(model, f) for f in cases]
    errors: list[str] = []

    def work(offset: int) -> None:
        with engine.create_context() as ctx:
            for i in range(40):
                k = (i + offset) % len(cases)
                got = ctx.infer(cases[k])["y"]
                err = max_relative_error(got, wants[k])
                if not err < 1e-4:
                    errors.append(f"thread {offset} run {i}: error {err}")

    threads = [threading.Thread(target=work, args=(o,)) for o in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_bad_input_names_the_node(ext: Any) -> None:
    """A kernel given an input its weight cannot take fails with a GraphError naming the node."""
    w = np.ones((4, 3, 3, 3), np.float32)
    node = Node("conv0", OpType.FUSED_CONV, ("x", "w", "", ""), ("y",),
                FusedConvAttrs(ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), Activation.RELU))
    graph = Graph("g", [node], ["x"], ["y"], {"x": TensorType(DType.FLOAT32, ("N", 3, 8, 8)),
                                             "w": TensorType(DType.FLOAT32, (4, 3, 3, 3)),
                                             "y": TensorType(DType.FLOAT32, ("N", 4, 8, 8))}, {"w": w})
    ctx = CompileContext(graph, {"w": torch.from_numpy(w)}, torch.device("cpu"), tactic=TACTIC)
    kernel = CPUBackend().compile_node(node, ctx)
    y = kernel([torch.ones(2, 3, 8, 8), None, None, None])[0]
    assert y is not None
    assert torch.allclose(y, torch.nn.functional.conv2d(torch.ones(2, 3, 8, 8), torch.from_numpy(w), padding=1))
    with pytest.raises(GraphError, match="conv0"):
        kernel([torch.ones(1, 5, 8, 8), None, None, None])


@pytest.mark.slow
def test_mobilenet_v2_with_and_without(ext: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from ember import zoo

    path = str(zoo.export_onnx("mobilenet-v2", batch=1))
    feeds = zoo.sample_inputs("mobilenet-v2", 1)
    monkeypatch.setenv(native.SWITCH_ENV, "0")
    base = ember.build(path, ember.BuildConfig(device=Device.CPU))
    monkeypatch.setenv(native.SWITCH_ENV, "1")
    fast = ember.build(path, ember.BuildConfig(device=Device.CPU))
    assert conv_tactics(fast) == {TACTIC} and TACTIC not in conv_tactics(base)
    with fast.create_context() as c1, base.create_context() as c0:
        got, ref = c1.infer(feeds), c0.infer(feeds)
    for name in ref:
        assert max_relative_error(got[name], ref[name]) < 1e-5


# ----------------------------------------------------------------------------- INT8 (QConv)


class _Int8Net(torch.nn.Module):
    """Stem with padding, a depthwise conv with ReLU6 (clip), a 1x1 projection with a residual and
    ReLU, a stride-2 conv, and a float head: QConv layers of every epilogue the tactic takes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = torch.nn.Conv2d(16, 16, 1)
        self.down = torch.nn.Conv2d(16, 24, 3, stride=2, padding=(0, 1))
        self.fc = torch.nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        z = torch.relu(self.pw(torch.nn.functional.relu6(self.dw(y))) + y)
        d = torch.relu(self.down(z))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(d, 1).flatten(1))


def _int8_model(tmp_path: Path) -> str:
    torch.manual_seed(0)
    path = tmp_path / "int8.onnx"
    torch.onnx.export(_Int8Net().eval(), (torch.zeros(1, 3, 12, 12),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return str(path)


def test_int8_engine_matches_the_qconv_kernel(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INT8 engines with and without the tactic: every QConv on it, the same results within a
    requantization step (oneDNN 3.2 and PyTorch's 3.12 may round a tie differently), any batch."""
    import warnings

    from ember.backends.cpu.kernels.qlayers import int8_available

    if not int8_available():
        pytest.skip("this PyTorch has no oneDNN INT8 kernels")
    path = _int8_model(tmp_path)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((4, 3, 12, 12)).astype(np.float32)} for _ in range(3)]
    engines = {}
    for on in (True, False):
        monkeypatch.setenv(native.SWITCH_ENV, "1" if on else "0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engines[on] = ember.build(path, ember.BuildConfig(device=Device.CPU, precision=Precision.INT8),
                                      calibration_data=data)
    qconvs = {layer.tactic for layer in engines[True].plan.layers if layer.kind == "QConv"}
    assert qconvs == {TACTIC}, [(lay.name, lay.kind, lay.tactic) for lay in engines[True].plan.layers]
    assert TACTIC not in {layer.tactic for layer in engines[False].plan.layers}
    with engines[True].create_context() as c1, engines[False].create_context() as c0:
        for batch in (1, 3, 1):
            feeds = {"x": rng.standard_normal((batch, 3, 12, 12)).astype(np.float32)}
            got, ref = c1.infer(feeds)["y"], c0.infer(feeds)["y"]
            assert got.shape == (batch, 10)
            assert max_relative_error(got, ref) < 2e-2
            np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))
    monkeypatch.setenv(native.SWITCH_ENV, "1")
    _each_qconv_within_one_step(engines[True])


def _each_qconv_within_one_step(engine: ember.Engine) -> None:
    """Each QConv layer alone, on random inputs of its stored types: 8-bit outputs within one step
    of ``qlayers``' kernel, float32 ones within 1e-5."""
    plan, backend = engine.plan, CPUBackend()
    g = plan.graph
    consts = {k: torch.from_numpy(np.array(v)) for k, v in g.constants.items()}
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for node, layer in zip(g.nodes, plan.layers):
        if layer.kind != "QConv":
            continue
        ins: list[Optional[torch.Tensor]] = []
        for name in node.inputs:
            if not name or name in consts:
                ins.append(consts.get(name) if name else None)
                continue
            t = g.types[name]
            shape = [d if isinstance(d, int) else 2 for d in t.shape]
            if t.dtype is DType.UINT8:
                ins.append(torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen))
            elif t.dtype is DType.INT8:
                ins.append(torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen))
            else:
                ins.append(torch.randn(shape, generator=gen))
        outs = {}
        for tactic in (TACTIC, "aten"):
            ctx = CompileContext(g, consts, torch.device("cpu"), tactic, layer.precision, plan.records, plan.config)
            with torch.inference_mode():
                y = backend.compile_node(node, ctx)(ins)[0]
            assert y is not None
            outs[tactic] = y.contiguous()
        ours, ref = outs[TACTIC], outs["aten"]
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, node.name
        if ref.dtype == torch.float32:
            assert max_relative_error(ours, ref) < 1e-5, node.name
        else:
            assert int((ours.int() - ref.int()).abs().max()) <= 1, node.name
        checked += 1
    assert checked >= 3


# ----------------------------------------------------------------------------- unavailable paths


def fake_prefix(root: Path, cpu_runtime: str = "DNNL_RUNTIME_OMP", threading_runtime: str = "DNNL_RUNTIME_OMP",
                lib_bytes: bytes = b"\x7fELF fake libgomp.so.1\0") -> Path:
    inc = root / "include" / "oneapi" / "dnnl"
    inc.mkdir(parents=True)
    (inc / "dnnl.hpp").write_text("// fake\n")
    (inc / "dnnl_config.h").write_text(
        "#define DNNL_RUNTIME_NONE 0u\n#define DNNL_RUNTIME_SEQ 1u\n#define DNNL_RUNTIME_OMP 2u\n"
        "#define DNNL_RUNTIME_TBB 4u\n#define DNNL_RUNTIME_SYCL 512u\n"
        f"#define DNNL_CPU_RUNTIME {cpu_runtime}\n#define DNNL_CPU_THREADING_RUNTIME {threading_runtime}\n")
    (inc / "dnnl_version.h").write_text(
        "#define DNNL_VERSION_MAJOR 3\n#define DNNL_VERSION_MINOR 2\n#define DNNL_VERSION_PATCH 0\n")
    (root / "lib").mkdir()
    (root / "lib" / "libdnnl.so").write_bytes(lib_bytes)
    return root


def conv_node_graph() -> tuple[Node, Graph]:
    w = np.ones((4, 3, 3, 3), np.float32)
    node = Node("conv0", OpType.CONV, ("x", "w"), ("y",), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)))
    graph = Graph("g", [node], ["x"], ["y"], {"x": TensorType(DType.FLOAT32, (1, 3, 8, 8)),
                                             "w": TensorType(DType.FLOAT32, (4, 3, 3, 3)),
                                             "y": TensorType(DType.FLOAT32, (1, 4, 8, 8))}, {"w": w})
    return node, graph


def assert_not_candidate_and_build_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    node, graph = conv_node_graph()
    assert TACTIC not in CPUBackend().tactics(node, graph)
    reason = native.unavailable_reason()
    assert reason is not None and why in reason, reason
    model = conv_model(8, 8, 3, act="relu")
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    engine = ember.build(str(path), ember.BuildConfig(device=Device.CPU))
    assert TACTIC not in conv_tactics(engine)
    feeds = feeds_for(model, 1)
    with engine.create_context() as ctx:
        assert max_relative_error(ctx.infer(feeds)["y"], ort_run(model, feeds)) < 1e-4


def test_no_library_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(native.PREFIX_ENV, raising=False)
    monkeypatch.setattr(native.sys, "prefix", str(tmp_path / "empty-venv"))
    with caplog.at_level(logging.INFO, logger="ember.backends.cpu.native"):
        assert native.extension() is None
        assert native.extension() is None
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, "no oneDNN library found")
    lines = [r for r in caplog.records if r.name == "ember.backends.cpu.native"]
    assert len(lines) == 1 and "not a candidate" in lines[0].getMessage()  # said once


def test_library_in_the_interpreters_prefix_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.PREFIX_ENV, raising=False)
    venv = fake_prefix(tmp_path / "venv")
    monkeypatch.setattr(native.sys, "prefix", str(venv))
    assert native.find_prefix() == venv
    monkeypatch.setenv(native.PREFIX_ENV, str(tmp_path / "elsewhere"))
    assert native.find_prefix() == tmp_path / "elsewhere"  # the explicit prefix wins


@pytest.mark.parametrize("runtime,why", [("DNNL_RUNTIME_SYCL", "SYCL build"), ("DNNL_RUNTIME_TBB", "TBB CPU runtime")])
def test_sycl_and_tbb_builds_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                     runtime: str, why: str) -> None:
    prefix = fake_prefix(tmp_path / "onednn", runtime, "DNNL_RUNTIME_TBB")
    monkeypatch.setenv(native.PREFIX_ENV, str(prefix))
    with caplog.at_level(logging.WARNING, logger="ember.backends.cpu.native"):
        assert native.extension() is None
    assert any(why in r.getMessage() for r in caplog.records)
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, why)


def test_intel_openmp_build_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = fake_prefix(tmp_path / "onednn", lib_bytes=b"\x7fELF\0libiomp5.so\0")
    monkeypatch.setenv(native.PREFIX_ENV, str(prefix))
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, "second OpenMP runtime")


def test_a_wheels_private_openmp_copy_does_not_count() -> None:
    """scikit-learn's renamed libgomp (mapped by loading sentence-transformers) is private to it; a
    second shared runtime (the system's libgomp, Intel's, LLVM's) is what turns the extension off."""
    torch_gomp = "/venv/site-packages/torch/lib/libgomp.so.1"
    vendored = "/venv/site-packages/scikit_learn.libs/libgomp-e985bcbb.so.1.0.0"
    assert native.shared_openmp([vendored, torch_gomp]) == [torch_gomp]
    for other in ("/usr/lib/x86_64-linux-gnu/libgomp.so.1", "/opt/intel/lib/libiomp5.so", "/usr/lib/libomp.so.5"):
        assert native.shared_openmp([torch_gomp, other]) == [torch_gomp, other]


def test_missing_headers_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "onednn" / "lib").mkdir(parents=True)
    monkeypatch.setenv(native.PREFIX_ENV, str(tmp_path / "onednn"))
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, "no oneDNN headers")


def test_no_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.PREFIX_ENV, str(fake_prefix(tmp_path / "onednn")))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, "no C++ compiler")


def test_no_ninja(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    monkeypatch.setenv(native.PREFIX_ENV, str(fake_prefix(tmp_path / "onednn")))
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/c++")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, "ninja")


def test_failed_compile_is_a_reason_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers that say OpenMP but are not oneDNN's: the compile fails, the build goes on."""
    from torch.utils import cpp_extension

    monkeypatch.setenv(native.PREFIX_ENV, str(fake_prefix(tmp_path / "onednn")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/c++")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)

    def fail(**kwargs: Any) -> None:
        raise RuntimeError("Error building extension 'ember_onednn_conv': dnnl.hpp: no such class")

    monkeypatch.setattr(cpp_extension, "load", fail)
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, "failed")
    assert native.compile_failed()  # the test suite's `ext` fixture fails on it rather than skipping


def test_a_missing_library_is_no_compile_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.PREFIX_ENV, str(tmp_path / "nowhere"))
    assert native.extension() is None and not native.compile_failed()


def test_switch_takes_it_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.SWITCH_ENV, "0")
    assert not native.enabled() and not conv_persistent.available()
    node, graph = conv_node_graph()
    assert TACTIC not in CPUBackend().tactics(node, graph)
    monkeypatch.setenv(native.SWITCH_ENV, "1")
    assert native.enabled()


def test_unwritable_cache_is_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils import cpp_extension

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(native.PREFIX_ENV, str(fake_prefix(tmp_path / "onednn")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/c++")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    assert_not_candidate_and_build_works(tmp_path, monkeypatch, "cache folder")

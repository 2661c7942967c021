"""The CPU tactic ``onednn_persistent`` for INT8 GEMMs (``QGemm``: ``ember.backends.cpu.kernels.gemm_persistent``).

Tests taking the ``ext`` fixture need the extension (a GNU-OpenMP oneDNN, g++ and ninja; see
docs/CPU_NATIVE.md) and skip with the reason where it is absent. Each layer form is checked against
``qlayers``' QGemm kernel (``qlinear_pointwise``: 8-bit outputs within one step, float32 ones within
1e-5) and against ONNX Runtime running the same quantization as explicit QuantizeLinear /
DequantizeLinear. The unavailable paths run everywhere.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.backends.base import CompileContext
from ember.backends.cpu import CPUBackend, native
from ember.backends.cpu.kernels import gemm_persistent, qlayers
from ember.backends.cpu.kernels.conv_persistent import TACTIC
from ember.backends.cpu.kernels.qlayers import int8_available, quantize_weight
from ember.backends.tensors import max_relative_error
from ember.errors import EmberError
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import Activation, GemmAttrs, QGemmAttrs, QuantParams
from ember.passes.int8 import weight_qmax
from ember.plan.config import Device, Precision

DEFAULT = "aten"  # qlayers' QGemm kernel

pytestmark = [pytest.mark.skipif(not int8_available(), reason="this PyTorch has no oneDNN INT8 kernels"),
              pytest.mark.usefixtures("fresh_native")]


# ----------------------------------------------------------------------------- layers and oracles


def qgemm_graph(k: int, n: int, *, trans_b: bool = True, bias: bool = True, beta: float = 1.0,
                act: Activation = Activation.NONE, act_params: tuple[float, ...] = (),
                x: Optional[QuantParams] = None, out: Optional[QuantParams] = None,
                smooth: bool = False, x_shape: tuple = ("b", 16), seed: int = 0) -> tuple[Node, Graph]:
    """One QGemm node with a constant weight (``[N, K]`` when ``trans_b``, else ``[K, N]``)."""
    x = x or U8
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.2).astype(np.float32)
    s = (rng.uniform(0.5, 2.0, k)).astype(np.float64) if smooth else None
    # the weights a calibrated build makes on this CPU: 7 bits where oneDNN's 8-bit kernels would
    # saturate on 8 (``passes.int8.weight_qmax``), so the persistent kernels run here too
    ws = np.abs(w * (s[None, :] if s is not None else 1.0)).max(axis=1) / weight_qmax(Device.CPU)
    consts: dict[str, np.ndarray] = {"w": w if trans_b else np.ascontiguousarray(w.T)}
    inputs = ["x", "w"]
    if bias:
        consts["c"] = rng.standard_normal(n).astype(np.float32)
        inputs.append("c")
    attrs = QGemmAttrs(GemmAttrs(beta=beta, trans_b=trans_b), x, tuple(float(v) for v in ws), act, act_params,
                       out, tuple(float(v) for v in s) if s is not None else ())
    node = Node("fc0", OpType.QGEMM, tuple(inputs), ("y",), attrs)
    y_dtype = DType.FLOAT32 if out is None else out.dtype
    types = {"x": TensorType(DType.FLOAT32, (*x_shape, k)), "w": TensorType(DType.FLOAT32, consts["w"].shape),
             "y": TensorType(y_dtype, (*x_shape, n))}
    if bias:
        types["c"] = TensorType(DType.FLOAT32, (n,))
    return node, Graph("g", [node], ["x"], ["y"], types, consts)


def compile_node(node: Node, graph: Graph, tactic: str) -> Any:
    consts = {name: torch.from_numpy(v) for name, v in graph.constants.items()}
    ctx = CompileContext(graph, consts, torch.device("cpu"), tactic, Precision.INT8)
    return CPUBackend().compile_node(node, ctx)


def run(kernel: Any, x: torch.Tensor, graph: Graph) -> torch.Tensor:
    consts = [torch.from_numpy(graph.constants[name]) for name in ("w", "c") if name in graph.constants]
    with torch.inference_mode():
        return kernel([x, *consts])[0]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, (what, ours.dtype, ref.dtype, ours.shape, ref.shape)
    if ref.dtype == torch.float32:
        assert max_relative_error(ours, ref) < 1e-5, what
    else:
        assert int((ours.int() - ref.int()).abs().max()) <= 1, what


def ort_reference(node: Node, graph: Graph, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime running the QGemm's arithmetic as explicit Q/DQ: the input quantized with
    ``attrs.x`` (after the smoothing divisor), the weight as its int8 values times their scales,
    bias, activation, and the output quantized with ``attrs.out`` (its 8-bit values returned)."""
    a: QGemmAttrs = node.attrs
    w = torch.from_numpy(graph.constants["w"])
    w_nk = (w if a.gemm.trans_b else w.t()).double()
    x_in = x
    if a.smooth:
        s = np.array(a.smooth)
        w_nk = w_nk * torch.from_numpy(s)[None, :]
        x_in = (x / s).astype(np.float32)
    ws = torch.tensor(a.w_scales, dtype=torch.float64)
    qw = quantize_weight(w_nk.float(), ws.float(), 0).double()
    w_kn = (qw * ws[:, None]).t().numpy().astype(np.float32)
    xdt = TensorProto.UINT8 if a.x.dtype is DType.UINT8 else TensorProto.INT8
    inits = [numpy_helper.from_array(w_kn, "w"),
             numpy_helper.from_array(np.array(a.x.scale, np.float32), "xs"),
             helper.make_tensor("xz", xdt, [], [a.x.zero_point])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("MatMul", ["xd", "w"], ["mm"])]
    cur = "mm"
    if "c" in graph.constants:
        inits.append(numpy_helper.from_array((graph.constants["c"] * a.gemm.beta).astype(np.float32), "c"))
        nodes.append(helper.make_node("Add", [cur, "c"], ["mb"]))
        cur = "mb"
    act_nodes = {Activation.RELU: [helper.make_node("Relu", [cur], ["act"])],
                 Activation.SIGMOID: [helper.make_node("Sigmoid", [cur], ["act"])],
                 Activation.GELU_ERF: [helper.make_node("Gelu", [cur], ["act"], domain="com.microsoft")]}
    if a.activation is not Activation.NONE:
        nodes += act_nodes[a.activation]
        cur = "act"
    if a.out is not None:
        odt = TensorProto.UINT8 if a.out.dtype is DType.UINT8 else TensorProto.INT8
        inits += [numpy_helper.from_array(np.array(a.out.scale, np.float32), "os"),
                  helper.make_tensor("oz", odt, [], [a.out.zero_point])]
        nodes.append(helper.make_node("QuantizeLinear", [cur, "os", "oz"], ["y"]))
        out_type = odt
    else:
        nodes.append(helper.make_node("Identity", [cur], ["y"]))
        out_type = TensorProto.FLOAT
    g = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info("y", out_type, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the Q/DQ arithmetic as written
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x_in})[0]


U8 = QuantParams(0.05, 128, DType.UINT8)
S8 = QuantParams(0.04, 0, DType.INT8)
OUT_U8 = QuantParams(0.08, 100, DType.UINT8)
OUT_S8 = QuantParams(0.07, -3, DType.INT8)

FORMS: dict[str, dict[str, Any]] = {
    "plain-float-out": dict(),
    "no-bias-s8-in": dict(bias=False, x=S8),
    "kn-weight-beta": dict(trans_b=False, beta=0.5),
    "relu-u8-out": dict(act=Activation.RELU, out=OUT_U8),
    "relu-float-out": dict(act=Activation.RELU),
    "gelu-erf-s8-out": dict(act=Activation.GELU_ERF, out=OUT_S8),
    "gelu-tanh-u8-out": dict(act=Activation.GELU_TANH, out=OUT_U8),
    "sigmoid-after-u8-out": dict(act=Activation.SIGMOID, out=OUT_U8),
    "clip-after-float-out": dict(act=Activation.CLIP, act_params=(-0.5, 0.5)),
    "smooth-s8-out": dict(smooth=True, out=OUT_S8),
    "smooth-kn-relu": dict(smooth=True, trans_b=False, act=Activation.RELU),
    "u8-out-no-zp-in": dict(x=QuantParams(0.03, 0, DType.UINT8), out=OUT_U8, bias=False),
}


# ----------------------------------------------------------------------------- with the extension


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("x_shape", [(5,), (2, 7), (1, 1)], ids=["2d", "3d", "3d-one-row"])
def test_layer_forms_match_qlayers_kernel(ext: Any, form: str, x_shape: tuple[int, ...]) -> None:
    node, graph = qgemm_graph(48, 40, x_shape=("b",) * (len(x_shape)), **FORMS[form])
    # an int8 input could saturate where oneDNN adds pairs of products in 16 bits: not offered there
    offered = not (qlayers.int8_saturates() and node.attrs.x.dtype is not DType.UINT8)
    assert (CPUBackend().tactics(node, graph)[0] == TACTIC) == offered
    ours_k, ref_k = compile_node(node, graph, TACTIC), compile_node(node, graph, DEFAULT)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((*x_shape, 48), generator=gen) * 2
    assert_close(run(ours_k, x, graph), run(ref_k, x, graph), form)
    if not FORMS[form].get("smooth"):  # an 8-bit input used as it is
        xq = torch.randint(0, 256, (*x_shape, 48), dtype=torch.uint8, generator=gen)
        if node.attrs.x.dtype is DType.INT8:
            xq = (xq.int() - 128).to(torch.int8)
        assert_close(run(ours_k, xq, graph), run(ref_k, xq, graph), form + " (8-bit input)")


@pytest.mark.parametrize("form", ["plain-float-out", "kn-weight-beta", "relu-u8-out", "gelu-erf-s8-out",
                                  "sigmoid-after-u8-out", "smooth-s8-out", "no-bias-s8-in"])
def test_layer_forms_match_onnxruntime(ext: Any, form: str) -> None:
    node, graph = qgemm_graph(64, 24, x_shape=(3, 9), **FORMS[form])
    x = (np.random.default_rng(2).standard_normal((3, 9, 64)) * 2).astype(np.float32)
    ours = run(compile_node(node, graph, TACTIC), torch.from_numpy(x), graph).numpy()
    ref = ort_reference(node, graph, x)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    if ref.dtype == np.float32:  # only exact quantization ties differ (ORT rounds them to even)
        assert max_relative_error(ours, ref) < 1e-4, form
    else:
        assert int(np.abs(ours.astype(np.int32) - ref.astype(np.int32)).max()) <= 1, form


def test_nan_and_inf_inputs_as_the_qlayers_kernel(ext: Any) -> None:
    """8-bit values hold no NaN: a float input is quantized as ``qlayers`` quantizes it (±inf to
    the range's ends), so both kernels give the same outputs, fused activation included."""
    for form in ("relu-float-out", "relu-u8-out", "plain-float-out"):
        node, graph = qgemm_graph(32, 16, **FORMS[form])
        x = torch.randn(4, 32)
        x[0, 3], x[1, :] = float("nan"), float("inf")
        x[2, 5] = float("-inf")
        ours = run(compile_node(node, graph, TACTIC), x, graph)
        ref = run(compile_node(node, graph, DEFAULT), x, graph)
        assert torch.isfinite(ours.float()).all()
        assert_close(ours, ref, form)


def spy_on_primitives(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The row counts primitives are made for, in order."""
    made: list[int] = []
    real = gemm_persistent._RowCache.get

    def spy(self: Any, m: int) -> Any:
        if m not in self.prims:
            made.append(m)
        return real(self, m)

    monkeypatch.setattr(gemm_persistent._RowCache, "get", spy)
    return made


def test_one_primitive_per_row_count_and_the_bound(ext: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = spy_on_primitives(monkeypatch)
    monkeypatch.setattr(gemm_persistent, "MAX_SHAPES", 3)
    node, graph = qgemm_graph(16, 8, act=Activation.RELU, out=OUT_U8)
    ours_k, ref_k = compile_node(node, graph, TACTIC), compile_node(node, graph, DEFAULT)
    for rows in (1, 4, 1, 4, 2, 3, 1):
        x = torch.randn(rows, 16)
        assert_close(run(ours_k, x, graph), run(ref_k, x, graph), f"{rows} rows")
    assert made == [1, 4, 2, 3, 1]  # 1 dropped when 3 came (at most 3 kept), made again


def test_static_shape_prepared_at_compile_time(ext: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    made = spy_on_primitives(monkeypatch)
    node, graph = qgemm_graph(16, 8, x_shape=(2, 3))
    kernel = compile_node(node, graph, TACTIC)
    assert made == [6]
    run(kernel, torch.randn(2, 3, 16), graph)
    assert made == [6]


def test_two_threads_at_once(ext: Any) -> None:
    node, graph = qgemm_graph(96, 64, act=Activation.GELU_ERF, out=OUT_S8)
    kernel = compile_node(node, graph, TACTIC)
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(rows, 96, generator=gen) for rows in (5, 9, 5, 17, 9, 1)]
    want = [run(kernel, x, graph).clone() for x in xs]
    errors: list[str] = []

    def worker(order: list[int]) -> None:
        try:
            for _ in range(20):
                for i in order:
                    if not torch.equal(run(kernel, xs[i], graph), want[i]):
                        errors.append(f"input {i} differs")
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(order,)) for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 4, 0, 2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_bad_input_names_the_layer(ext: Any) -> None:
    node, graph = qgemm_graph(16, 8)
    kernel = compile_node(node, graph, TACTIC)
    with pytest.raises(EmberError, match="fc0.*expects \\[..., 16\\]"):
        run(kernel, torch.randn(3, 15), graph)
    node, graph = qgemm_graph(16, 8, smooth=True)
    with pytest.raises(EmberError, match="fc0.*smooths its input"):
        run(compile_node(node, graph, TACTIC), torch.zeros(3, 16, dtype=torch.uint8), graph)


def test_runtime_weight_and_trans_a_keep_the_qlayers_kernel(ext: Any) -> None:
    node, graph = qgemm_graph(16, 8)
    runtime_w = graph.copy(constants={"c": graph.constants["c"]})
    assert TACTIC not in CPUBackend().tactics(node, runtime_w)
    a = node.attrs
    trans_a = Node("fc0", OpType.QGEMM, node.inputs, node.outputs,
                   QGemmAttrs(GemmAttrs(trans_a=True, trans_b=True), a.x, a.w_scales))
    assert TACTIC not in CPUBackend().tactics(trans_a, graph)


@pytest.mark.parametrize("kind", ["QGemm", "QConv"])
def test_weights_that_would_saturate_take_the_float_tactic(ext: Any, monkeypatch: pytest.MonkeyPatch,
                                                          kind: str) -> None:
    """Where oneDNN's 8-bit kernels add pairs of products in 16 bits (``int8_saturates``), a layer
    whose weights use more than 7 bits (a Q/DQ model's) computes in float32 (``qlayers``), so the
    build records ``qlayers``' tactic for it, not the persistent one, and the plan and the profile
    say what runs. 7-bit weights keep the persistent tactic; so does any layer on a VNNI CPU."""
    from ember.ops.attrs import ConvAttrs, QConvAttrs

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((8, 16)) * 0.2).astype(np.float32)
    node, graph = qgemm_graph(16, 8)
    if kind == "QConv":
        w = w.reshape(8, 16, 1, 1)
        conv = QConvAttrs(ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), U8, ())
        node = Node("conv0", OpType.QCONV, ("x", "w"), ("y",), conv)
        graph = Graph("g", [node], ["x"], ["y"], {"x": TensorType(DType.FLOAT32, (1, 16, 4, 4)),
                                                 "w": TensorType(DType.FLOAT32, w.shape),
                                                 "y": TensorType(DType.FLOAT32, (1, 8, 4, 4))}, {"w": w})
    graph.constants["w"] = w
    peak = np.abs(w.reshape(8, -1)).max(axis=1)
    for saturating in (True, False):
        monkeypatch.setattr(qlayers, "int8_saturates", lambda v=saturating: v)
        for qmax, persistent in ((127, not saturating), (64, True)):
            scales = tuple(float(v) for v in peak / qmax)
            attrs = replace(node.attrs, w_scales=scales)
            tactics = CPUBackend().tactics(replace(node, attrs=attrs), graph)
            assert (TACTIC in tactics) == persistent, (saturating, qmax, tactics)
            assert tactics, "qlayers' kernel is always a tactic"


# ----------------------------------------------------------------------------- whole engines


def mlp_model(path: Path) -> str:
    """A BERT-like feed-forward block on [batch, seq, 64]: MatMul + Add (+ GELU via Erf) twice."""
    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((64, 128)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((128, 64)) * 0.1).astype(np.float32)
    b1, b2 = rng.standard_normal(128).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["ha"]), helper.make_node("MatMul", ["ha", "w2"], ["o"]),
             helper.make_node("Add", ["o", "b2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 64])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return str(path)


def build_int8(path: str, on: bool, monkeypatch: pytest.MonkeyPatch) -> ember.Engine:
    rng = np.random.default_rng(5)
    data = [{"x": rng.standard_normal((2, 8, 64)).astype(np.float32)} for _ in range(3)]
    monkeypatch.setenv(native.SWITCH_ENV, "1" if on else "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ember.build(path, ember.BuildConfig(device=Device.CPU, precision=Precision.INT8), calibration_data=data)


def qgemm_tactics(engine: ember.Engine) -> set[str]:
    return {layer.tactic for layer in engine.plan.layers if layer.kind == "QGemm"}


def test_int8_engine_with_and_without(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = mlp_model(tmp_path / "mlp.onnx")
    on, off = build_int8(path, True, monkeypatch), build_int8(path, False, monkeypatch)
    assert qgemm_tactics(on) == {TACTIC}, [(lay.name, lay.kind, lay.tactic) for lay in on.plan.layers]
    assert TACTIC not in qgemm_tactics(off) and qgemm_tactics(off)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(6)
    with on.create_context() as c1, off.create_context() as c0:
        for shape in ((1, 8), (3, 5), (1, 8)):
            x = rng.standard_normal((*shape, 64)).astype(np.float32)
            got, ref = c1.infer({"x": x})["y"], c0.infer({"x": x})["y"]
            assert got.shape == (*shape, 64)
            assert max_relative_error(got, ref) < 1e-2  # one requantization step of the hidden layer
            assert max_relative_error(got, sess.run(None, {"x": x})[0]) < 5e-2  # INT8 against fp32


def test_engine_file_runs_where_the_tactic_cannot(ext: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = mlp_model(tmp_path / "mlp.onnx")
    engine = build_int8(path, True, monkeypatch)
    assert qgemm_tactics(engine) == {TACTIC}
    saved = tmp_path / "mlp.ember"
    engine.save(str(saved))
    x = np.random.default_rng(7).standard_normal((2, 4, 64)).astype(np.float32)
    with engine.create_context() as ctx:
        want = ctx.infer({"x": x})["y"]
    monkeypatch.setenv(native.SWITCH_ENV, "0")
    loaded = ember.load(str(saved))
    with loaded.create_context() as ctx:
        assert max_relative_error(ctx.infer({"x": x})["y"], want) < 1e-2


def test_engine_file_runs_exactly_where_int8_saturates(ext: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine built where oneDNN's 8-bit kernels are exact (VNNI: 8-bit weights), loaded on a CPU
    where they saturate: its QGemms run ``qlayers``' float32 arithmetic on the same integers
    instead, whichever tactic the engine recorded."""
    from ember.backends.cpu import features
    from ember.backends.cpu.kernels import qlayers

    path = mlp_model(tmp_path / "mlp.onnx")
    for module in (features, qlayers):  # built as on a VNNI CPU
        monkeypatch.setattr(module, "int8_saturates", lambda: False)
    engine = build_int8(path, True, monkeypatch)
    assert qgemm_tactics(engine) == {TACTIC}
    engine.save(str(tmp_path / "mlp.ember"))
    x = np.random.default_rng(9).standard_normal((2, 4, 64)).astype(np.float32)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # fp32
    monkeypatch.setattr(qlayers, "int8_saturates", lambda: True)
    exact, made = qlayers._qgemm_exact, []

    def spy(*args: Any) -> Any:
        made.append(args[0].name)
        return exact(*args)

    monkeypatch.setattr(qlayers, "_qgemm_exact", spy)
    loaded = ember.load(str(tmp_path / "mlp.ember"))
    with loaded.create_context() as ctx:
        got = ctx.infer({"x": x})["y"]
    assert sorted(made) == sorted(lay.name for lay in loaded.plan.layers if lay.kind == "QGemm")
    assert max_relative_error(got, want) < 5e-2


# ----------------------------------------------------------------------------- unavailable


def test_not_a_candidate_without_the_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.PREFIX_ENV, raising=False)
    monkeypatch.setattr(native.sys, "prefix", str(tmp_path / "empty-venv"))
    assert native.extension() is None
    node, graph = qgemm_graph(16, 8, act=Activation.RELU, out=OUT_U8)
    assert TACTIC not in CPUBackend().tactics(node, graph)
    path = mlp_model(tmp_path / "mlp.onnx")
    engine = build_int8(path, True, monkeypatch)
    assert qgemm_tactics(engine) and TACTIC not in qgemm_tactics(engine)
    x = np.random.default_rng(8).standard_normal((1, 8, 64)).astype(np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with engine.create_context() as ctx:
        assert max_relative_error(ctx.infer({"x": x})["y"], sess.run(None, {"x": x})[0]) < 5e-2


def test_switch_takes_it_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.SWITCH_ENV, "0")
    node, graph = qgemm_graph(16, 8)
    assert TACTIC not in CPUBackend().tactics(node, graph)

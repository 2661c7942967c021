"""The layout plan (``Records.layout``) is consumed by both backends: each conv / pool /
norm kernel writes the memory format the plan gives its output (``ember.backends.layout``),
conv weights are converted once at compile time, tactics that only exist for channels-last
decline NCHW outputs, and without a plan every kernel keeps the format it always had.

CPU tests run everywhere; the CUDA kernels' format logic is checked on CPU tensors where the
tactic needs no GPU (``cudnn`` convolution, pooling, BatchNorm); ``@pytest.mark.cuda`` tests
build whole engines on the GPU with ``layout="nchw"`` and ``"nhwc"``.
"""
from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import ember
from ember import zoo
from ember.backends.base import CompileContext
from ember.backends.cpu import CPUBackend
from ember.backends.layout import format_in, planned_format, planned_weight_format, to_format
from ember.errors import BuildError, EngineFileError
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import (
    Activation,
    BatchNormAttrs,
    ConvAttrs,
    ConvTransposeAttrs,
    FusedConvAttrs,
    LRNAttrs,
    PoolAttrs,
)
from ember.plan.config import Layout, Precision
from ember.plan.records import LayoutPlan, Records
from ember.runtime.summary import format_engine
from ember.tools.runners import EmberRunner, OrtRunner, max_rel_error

CL, NCHW = torch.channels_last, torch.contiguous_format
NHWC_RECORDS = Records(layout=LayoutPlan(Layout.NHWC, frozenset({"y"}), frozenset({"w"})))
NCHW_RECORDS = Records(layout=LayoutPlan(Layout.NCHW))
CPU = torch.device("cpu")
RNG = np.random.default_rng(7)


def _fmt(t: torch.Tensor) -> str:
    """``"nhwc"``, ``"nchw"``, ``"both"`` (N x C x 1 x 1 and the like) or ``"strided"``."""
    cl, c = t.is_contiguous(memory_format=CL), t.is_contiguous()
    return "both" if cl and c else "nhwc" if cl else "nchw" if c else "strided"


def _const(name: str, *shape: int, scale: float = 0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def conv_net(batch: int = 1, hw: int = 16, dynamic: bool = False):
    """Stem conv+ReLU, max pool, a residual block, a 1x1 conv and an average pool concatenated,
    then global pooling and a classifier; outputs the concat (4-D) and the logits."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
        n("Relu", ["c0"], ["r0"], name="stem_relu"),
        n("MaxPool", ["r0"], ["p0"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p0", "w1", "b1"], ["c1"], name="res_conv", pads=[1, 1, 1, 1]),
        n("Add", ["c1", "p0"], ["s1"], name="res_add"),
        n("Relu", ["s1"], ["r1"], name="res_relu"),
        n("Conv", ["r1", "w2"], ["c2"], name="pw"),
        n("AveragePool", ["r1"], ["a2"], name="avg", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Concat", ["c2", "a2"], ["feat"], name="cat", axis=1),
        n("GlobalAveragePool", ["feat"], ["g"], name="gap"),
        n("Flatten", ["g"], ["f"], name="flat"),
        n("Gemm", ["f", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = [_const("w0", 8, 3, 3, 3), _const("b0", 8), _const("w1", 8, 8, 3, 3), _const("b1", 8),
             _const("w2", 4, 8, 1, 1), _const("wf", 5, 12), _const("bf", 5)]
    dims = ["n", 3, "h", "w"] if dynamic else [batch, 3, hw, hw]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("feat", "logits")]
    g = helper.make_graph(nodes, "conv_net", [x], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _check_ort(engine, model, feeds, tol=1e-5):
    ref = _ort(model, feeds)
    with engine.create_context() as ctx:
        got = ctx.infer(feeds)
    for k, r in ref.items():
        assert got[k].shape == r.shape
        assert max_rel_error(got[k], r) <= tol, k


def _run_layers(engine, feeds, backend, device):
    """Every layer of the engine's plan compiled with its tactic and run in order; the tensors."""
    g = engine.plan.graph
    consts = {k: torch.from_numpy(np.array(v)).to(device) for k, v in g.constants.items()}
    env = dict(consts)
    env.update({k: torch.from_numpy(v).to(device) for k, v in feeds.items()})
    with torch.inference_mode():
        for node, layer in zip(g.nodes, engine.plan.layers):
            ctx = CompileContext(g, consts, device, layer.tactic, layer.precision, engine.plan.records)
            kernel = backend.compile_node(node, ctx)
            for o, t in zip(node.outputs, kernel([env[i] if i else None for i in node.inputs])):
                if o:
                    env[o] = t
    return env


def _assert_formats_follow_plan(engine, env, kinds=("Conv", "FusedConv", "MaxPool", "AveragePool")):
    g = engine.plan.graph
    checked = 0
    for node in g.nodes:
        if node.op.value not in kinds:
            continue
        out = node.outputs[0]
        want = format_in(g, engine.plan.records.layout, out)
        assert want is not None, f"{out} has no planned format"
        got = _fmt(env[out])
        assert got in ("both", "nhwc" if want is CL else "nchw"), f"{node.name}: {got}, plan {want}"
        checked += got != "both"
    assert checked >= 3


def _x(shape=(1, 3, 16, 16)):
    return {"x": RNG.standard_normal(shape).astype(np.float32)}


# ---- the helper -----------------------------------------------------------------------------

def _tiny_graph() -> Graph:
    types = {"x": TensorType(DType.FLOAT32, (1, 3, 4, 4)), "y": TensorType(DType.FLOAT32, (1, 2, 4, 4)),
             "z": TensorType(DType.FLOAT32, (1, 2, 16)), "w": TensorType(DType.FLOAT32, (2, 3, 1, 1))}
    consts = {"w": np.ones((2, 3, 1, 1), np.float32)}
    node = Node("c", OpType.CONV, ("x", "w"), ("y",), ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1))
    return Graph("t", [node], ["x"], ["y"], types, consts)


def test_planned_format_reads_the_plan():
    g = _tiny_graph()
    nhwc = CompileContext(g, {}, CPU, records=NHWC_RECORDS)
    nchw = CompileContext(g, {}, CPU, records=NCHW_RECORDS)
    assert planned_format(nhwc, "y") is CL and planned_format(nhwc, "x") is NCHW
    assert planned_weight_format(nhwc, "w") is CL and planned_weight_format(nchw, "w") is NCHW
    assert planned_format(nchw, "y") is NCHW
    assert planned_format(nhwc, "z") is None and planned_format(nhwc, "w") is None  # not 4-D activations
    assert planned_format(CompileContext(g, {}, CPU), "y") is None  # no plan
    assert format_in(g, None, "y") is None and format_in(g, NHWC_RECORDS.layout, "y") is CL
    t = torch.randn(1, 2, 3, 3)
    assert to_format(t, None) is t and to_format(t, NCHW) is t and _fmt(to_format(t, CL)) == "nhwc"


def test_malformed_plan_is_named():
    data = NHWC_RECORDS.to_json()
    data["layout"]["preferred"] = "nwhc"
    with pytest.raises(EngineFileError, match="plan records are malformed.*rebuild"):
        Records.from_json(data)
    with pytest.raises(ValueError, match="nchw or nhwc"):
        LayoutPlan(Layout.AUTO)


def test_build_config_rejects_unknown_layout():
    with pytest.raises(BuildError, match="unknown layout 'nwhc'"):
        ember.BuildConfig(layout="nwhc")


# ---- CPU ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cpu_engine_matches_ort_and_kernels_write_the_planned_format(layout):
    model, feeds = conv_net(), _x()
    engine = ember.build(model, ember.BuildConfig(device="cpu", layout=layout))
    plan = engine.plan.records.layout
    assert plan.preferred == layout and bool(plan.nhwc) == (layout == "nhwc")
    _check_ort(engine, model, feeds)
    env = _run_layers(engine, feeds, CPUBackend(), CPU)
    _assert_formats_follow_plan(engine, env)
    if layout == "nhwc":
        assert {"r0", "p0", "feat"} <= plan.nhwc
        assert _fmt(env["feat"]) == "nhwc"  # concat of channels-last inputs stays channels-last
    else:
        assert all(_fmt(t) in ("nchw", "both") for t in env.values() if t.dim() == 4)


def test_cpu_default_layout_is_nhwc():
    engine = ember.build(conv_net(), ember.BuildConfig(device="cpu"))
    assert engine.plan.records.layout.preferred is Layout.NHWC
    assert "layout: " in format_engine(engine.plan, layers=False)
    assert "tensors channels-last" in format_engine(engine.plan, layers=False)


def test_cpu_dynamic_spatial_shapes_with_weights_packed_for_a_nominal_input():
    model = conv_net(dynamic=True)
    cfg = ember.BuildConfig(device="cpu", profiles={"x": ((1, 3, 8, 8), (1, 3, 16, 16), (2, 3, 40, 40))})
    engine = ember.build(model, cfg)
    assert "mkldnn_prepacked" in {lay.tactic for lay in engine.plan.layers}
    for shape in ((1, 3, 8, 8), (2, 3, 22, 18), (1, 3, 40, 40)):
        _check_ort(engine, model, _x(shape))


def test_no_plan_keeps_the_kernels_own_formats():
    """optimize=False (and graphs built by hand): no layout record, as before."""
    model, feeds = conv_net(), _x()
    engine = ember.build(model, ember.BuildConfig(device="cpu", optimize=False))
    assert engine.plan.records.layout is None
    assert "layout: no plan" in format_engine(engine.plan, layers=False)
    _check_ort(engine, model, feeds)
    env = _run_layers(engine, feeds, CPUBackend(), CPU)
    tactics = {lay.name: lay.tactic for lay in engine.plan.layers}
    onednn_tactics = ("mkldnn_prepacked", "onednn_persistent")  # both compute channels-last
    assert tactics["stem"] in onednn_tactics and _fmt(env["c0"]) == "nhwc"


def _conv_graph(op=OpType.CONV, act=Activation.NONE):
    attrs = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    if op is OpType.FUSED_CONV:
        attrs = FusedConvAttrs(attrs, act, (), False)
    types = {"x": TensorType(DType.FLOAT32, (1, 4, 6, 6)), "y": TensorType(DType.FLOAT32, (1, 8, 6, 6)),
             "w": TensorType(DType.FLOAT32, (8, 4, 3, 3)), "b": TensorType(DType.FLOAT32, (8,))}
    consts = {"w": RNG.standard_normal((8, 4, 3, 3)).astype(np.float32),
              "b": RNG.standard_normal(8).astype(np.float32)}
    node = Node("conv", op, ("x", "w", "b"), ("y",), attrs)
    return Graph("t", [node], ["x"], ["y"], types, consts), node


@pytest.mark.parametrize("records,want", [(NHWC_RECORDS, "nhwc"), (NCHW_RECORDS, "nchw"), (Records(), None)])
def test_cpu_conv_tactics_follow_the_plan(records, want):
    g, node = _conv_graph()
    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    x = torch.from_numpy(RNG.standard_normal((1, 4, 6, 6)).astype(np.float32))
    ref = torch.nn.functional.conv2d(x, consts["w"], consts["b"], padding=1)
    backend = CPUBackend()
    tactics = backend.tactics(node, g, records)
    assert ("channels_last" in tactics) == (want != "nchw")  # channels-last only: declines NCHW
    for tactic in tactics:
        kernel = backend.compile_node(node, CompileContext(g, consts, CPU, tactic, records=records))
        for given in (x, x.contiguous(memory_format=CL)):
            with torch.inference_mode():
                y = kernel([given, consts["w"], consts["b"]])[0]
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
            if want is not None:
                expected = want
            elif tactic == "aten":
                expected = _fmt(given)  # aten's convolution follows its input
            else:
                expected = "nhwc"  # oneDNN / channels_last tactics: channels-last, as always
            assert _fmt(y) == expected, (tactic, _fmt(given))


@pytest.mark.parametrize("records,want", [(NHWC_RECORDS, "nhwc"), (NCHW_RECORDS, "nchw")])
def test_cpu_pooling_writes_the_planned_format(records, want):
    types = {"x": TensorType(DType.FLOAT32, (1, 4, 6, 6)), "y": TensorType(DType.FLOAT32, (1, 4, 3, 3))}
    for op in (OpType.MAX_POOL, OpType.AVERAGE_POOL):
        node = Node("p", op, ("x",), ("y",), PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)))
        g = Graph("t", [node], ["x"], ["y"], types, {})
        kernel = CPUBackend().compile_node(node, CompileContext(g, {}, CPU, records=records))
        x = torch.randn(1, 4, 6, 6)
        for given in (x, x.contiguous(memory_format=CL)):
            y = kernel([given])[0]
            assert _fmt(y) == want
            torch.testing.assert_close(y, kernel([x])[0])


@functools.cache
def _zoo_reference(name):
    return OrtRunner(str(zoo.export_onnx(name)), threads=2)(zoo.sample_inputs(name, 1))


@pytest.mark.parametrize("name", ["resnet-18", "googlenet"])
def test_zoo_models_with_nhwc_match_ort(name):
    engine = ember.build(str(zoo.export_onnx(name)), ember.BuildConfig(device="cpu", layout="nhwc"))
    assert len(engine.plan.records.layout.nhwc) > 10
    with EmberRunner(engine) as runner:
        got = runner(zoo.sample_inputs(name, 1))
    for out, ref in _zoo_reference(name).items():
        assert max_rel_error(got[out], ref) <= 1e-4, out


def test_timing_cache_keeps_nchw_timings_apart():
    """A tuned layer of an NCHW build was timed in NCHW: its timing-cache entry is its own; NHWC
    builds keep the keys they always had."""
    from ember.builder.tactics import layer_signature

    sigs = {}
    for key, records in (("nhwc", NHWC_RECORDS), ("nchw", NCHW_RECORDS), ("none", Records())):
        g, node = _conv_graph()
        sigs[key] = layer_signature(node, g, records, Precision.FP32)
    assert sigs["nhwc"] == sigs["none"] != sigs["nchw"]


# ---- CUDA kernels' format logic, on CPU tensors -----------------------------------------------

@pytest.mark.parametrize("records,want", [(NHWC_RECORDS, "nhwc"), (NCHW_RECORDS, "nchw"), (Records(), "nhwc")])
def test_cuda_cudnn_conv_writes_the_planned_format(records, want):
    """The ``cudnn`` tactic is F.conv2d: it runs on CPU tensors too, so its layout logic is checked
    here; without a plan it keeps channels-last, as it always did."""
    from ember.backends.cuda.kernels.conv import conv_cudnn

    g, node = _conv_graph(OpType.FUSED_CONV, Activation.RELU)
    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    kernel = conv_cudnn(node, CompileContext(g, consts, CPU, "cudnn", Precision.FP32, records))
    x = torch.from_numpy(RNG.standard_normal((1, 4, 6, 6)).astype(np.float32))
    ref = torch.relu(torch.nn.functional.conv2d(x, consts["w"], consts["b"], padding=1))
    for given in (x, x.contiguous(memory_format=CL)):
        y = kernel([given, consts["w"], consts["b"]])[0]
        assert _fmt(y) == want
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    # concat elimination: only outputs packed in the layer's own format are written into
    w = kernel.write_into
    nchw_buf = torch.empty((1, 16, 6, 6), device="meta")
    cl_buf = torch.empty((1, 16, 6, 6), device="meta", memory_format=CL)
    assert w.accepts(nchw_buf.narrow(1, 8, 8)) == (want == "nchw")  # N = 1: a packed NCHW slice
    assert w.accepts(cl_buf.narrow(1, 8, 8)) is False  # channels-last channel slice: strided
    assert w.accepts(torch.empty((1, 8, 6, 6), device="meta", memory_format=CL)) == (want == "nhwc")
    # an output in the other format is declined before anything runs (the .out call is CUDA-only)
    other = torch.empty((1, 8, 6, 6), memory_format=NCHW if want == "nhwc" else CL)
    assert w([x, None, None], other) is False


def test_cuda_channels_last_only_tactics_decline_nchw_outputs():
    """Tactics registered ``channels_last_only`` do not apply where the plan stores the output
    NCHW (the registry checks it, so no tactic repeats the check)."""
    import dataclasses

    from ember.backends.cuda.registry import CUDA_KERNELS

    conv = ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)
    types = {"x": TensorType(DType.FLOAT32, (1, 3, 6, 6)), "y": TensorType(DType.FLOAT32, (1, 8, 6, 6))}
    consts = {"w": np.ones((8, 3, 1, 1), np.float32)}
    fconv = Node("c", OpType.FUSED_CONV, ("x", "w"), ("y",), FusedConvAttrs(conv, Activation.CLIP, (0.0, 6.0), False))
    pool = Node("p", OpType.MAX_POOL, ("x",), ("y",), PoolAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)))
    lrn = Node("l", OpType.LRN, ("x",), ("y",), LRNAttrs(3, 1e-4, 0.75, 1.0))
    checks = [("cudnn_cpad8", fconv), ("cublaslt_1x1", Node("c", OpType.CONV, ("x", "w"), ("y",), conv)),
              ("cudnn_triton", fconv), ("triton_nhwc", pool), ("triton", lrn)]
    g = Graph("t", [fconv], ["x"], ["y"], types, consts)
    for tactic, node in checks:
        entry = CUDA_KERNELS.table(node.op)[tactic]
        assert entry.channels_last_only, tactic
        entry = dataclasses.replace(entry, available=None)  # Triton need not be installed here
        for records, applies in ((NCHW_RECORDS, False), (NHWC_RECORDS, True), (Records(), True)):
            assert entry.applies(node, g, records) == applies, (tactic, records)


@pytest.mark.parametrize("records,want", [(NHWC_RECORDS, "nhwc"), (NCHW_RECORDS, "nchw"), (Records(), None)])
def test_cuda_pool_norm_deconv_write_the_planned_format(records, want):
    """Without a plan: pools and BatchNorm follow their input, ConvTranspose writes NCHW (as before)."""
    from ember.backends.cuda.kernels.conv import batch_norm, conv_transpose
    from ember.backends.cuda.kernels.pool import average_pool, max_pool

    types = {"x": TensorType(DType.FLOAT32, (1, 4, 6, 6)), "y": TensorType(DType.FLOAT32, (1, 4, 6, 6))}
    bn_consts = {k: torch.rand(4) + 0.5 for k in ("s", "b", "m", "v")}
    pool = PoolAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    deconv = ConvTransposeAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (0, 0))
    cases = [(max_pool, Node("y", OpType.MAX_POOL, ("x",), ("y",), pool), {}),
             (average_pool, Node("y", OpType.AVERAGE_POOL, ("x",), ("y",), pool), {}),
             (batch_norm, Node("y", OpType.BATCH_NORM, ("x", "s", "b", "m", "v"), ("y",), BatchNormAttrs()), bn_consts),
             (conv_transpose, Node("y", OpType.CONV_TRANSPOSE, ("x", "wt"), ("y",), deconv),
              {"wt": torch.randn(4, 4, 3, 3)})]
    x = torch.randn(1, 4, 6, 6)
    for factory, node, consts in cases:
        g = Graph("t", [node], ["x"], ["y"], types, {})
        kernel = factory(node, CompileContext(g, consts, CPU, "", Precision.FP32, records))
        ref = kernel([x, *consts.values()])[0]
        for given in (x, x.contiguous(memory_format=CL)):
            y = kernel([given, *consts.values()])[0]
            expected = want or ("nchw" if node.op is OpType.CONV_TRANSPOSE else _fmt(given))
            assert _fmt(y) == expected, node.op
            torch.testing.assert_close(y, ref)


# ---- CUDA engines -----------------------------------------------------------------------------

CUDA = pytest.mark.cuda


@CUDA
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cuda_engine_layouts_match_ort_and_write_the_planned_format(layout):
    from ember.backends.cuda import CUDABackend

    model, feeds = conv_net(batch=2), _x((2, 3, 16, 16))
    engine = ember.build(model, ember.BuildConfig(device="cuda", layout=layout, precision="fp32"))
    assert engine.plan.records.layout.preferred == layout
    _check_ort(engine, model, feeds, tol=2e-4)  # fp32 (TF32 off); cuDNN may pick Winograd
    env = _run_layers(engine, feeds, CUDABackend(), torch.device("cuda"))
    _assert_formats_follow_plan(engine, env)
    convs = [n.outputs[0] for n in engine.plan.graph.nodes if n.op in (OpType.CONV, OpType.FUSED_CONV)]
    want = "nchw" if layout == "nchw" else "nhwc"
    assert all(_fmt(env[c]) in (want, "both") for c in convs), {c: _fmt(env[c]) for c in convs}
    if layout == "nchw":
        tactics = {lay.tactic for lay in engine.plan.layers}
        assert not tactics & {"cublaslt_1x1", "cudnn_triton", "cudnn_cpad8", "cudnn_fused_cpad8", "triton_nhwc"}


@CUDA
@pytest.mark.parametrize("name", ["resnet-18", "googlenet", "mobilenet-v2"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cuda_zoo_fp32_layouts_match_ort(name, layout):
    """The backend's default tactics (no tuning: they must all run in either layout), whole
    engines with CUDA graphs; fp32 with TF32 off, cuDNN free to pick Winograd/FFT algorithms."""
    engine = ember.build(str(zoo.export_onnx(name)),
                         ember.BuildConfig(device="cuda", layout=layout, precision="fp32", tactic_tuning=False))
    with EmberRunner(engine) as runner:
        got = runner(zoo.sample_inputs(name, 1))
    for out, ref in _zoo_reference(name).items():
        assert max_rel_error(got[out], ref) <= 1e-3, (name, layout, out)

"""Ember's Triton implicit-GEMM convolution (``ember.backends.cuda.libs.triton_conv``) and its tactics
(``kernels/conv_triton.py``): numerics against a float64 reference for kernel sizes 1..7,
strides, asymmetric pads, dilation, odd channel counts, every epilogue activation, bias and a
residual read through its own strides, written into a strided channel slice of a channels-last
buffer whose other channels must stay untouched; the tactic's ``write_into``; where it applies.

The numerics run on the GPU (``cuda``) and, where Triton is installed but there is no GPU, once
under Triton's interpreter (``TRITON_INTERPRET=1``, in a subprocess: the interpreter is chosen
when the kernel is defined). CI has neither and runs only the CPU-side ``when`` test.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, write_into_of
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import Activation, AxisAttrs
from ember.ops.infer import infer_graph
from ember.plan.config import Layout
from ember.plan.records import LayoutPlan, Records

from cuda_graphs import fused_conv, rand

A = Activation
#: name: (n, cin, h, w, cout, (kh, kw), stride, pads (top, left, bottom, right), dilation,
#:        activation, params, bias, residual)
CASES = {
    "3x3_c3_c17_relu": (2, 3, 9, 7, 17, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.RELU, (), True, False),
    "5x5_s2_asym_pads_silu": (1, 17, 11, 10, 5, (5, 5), (2, 2), (2, 1, 0, 2), (1, 1), A.SILU, (), True, False),
    "1x1_c65_plain": (2, 65, 5, 4, 20, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), A.NONE, (), False, False),
    "7x7_s2_stem": (1, 3, 13, 13, 16, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), A.RELU, (), True, False),
    "3x3_dil2_gelu_residual": (2, 8, 8, 8, 16, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), A.GELU_ERF, (), True, True),
    "1x3_s12_relu6_residual": (1, 16, 6, 6, 24, (1, 3), (1, 2), (0, 1, 0, 1), (1, 1), A.CLIP, (0.0, 6.0), False, True),
    "leaky": (1, 5, 5, 5, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.LEAKY_RELU, (0.1,), True, False),
    "sigmoid": (1, 5, 5, 5, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.SIGMOID, (), True, False),
    "hardswish": (1, 5, 5, 5, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.HARD_SWISH, (), True, False),
    "hardsigmoid": (1, 5, 5, 5, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.HARD_SIGMOID, (0.2, 0.5), True, False),
    "tanh": (1, 5, 5, 5, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.TANH, (), True, False),
    "gelu_tanh": (1, 5, 5, 5, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.GELU_TANH, (), True, True),
}
#: Inception-like sizes, many tiles along M (GPU only)
GPU_CASES = {
    "inception_3x3_96_128": (2, 96, 28, 28, 128, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.RELU, (), True, False),
    "inception_5x5_16_32": (4, 16, 28, 28, 32, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), A.RELU, (), True, False),
    "inception_3x3_160_320_7x7": (3, 160, 7, 7, 320, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.RELU, (), True, True),
}
#: ``||out - ref|| / ||ref||`` allowed (fp32 computes exactly up to summation order; tf32/half:
#: operands rounded to 10/7 mantissa bits, the output rounded once)
TOL = {"fp32": 1e-5, "tf32": 5e-3, "fp16": 2e-3, "bf16": 1.5e-2}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SENTINEL = 7.0


def _reference_act(y: torch.Tensor, act: Activation, params) -> torch.Tensor:
    if act is A.NONE:
        return y
    if act is A.RELU:
        return torch.relu(y)
    if act is A.CLIP:
        return y.clamp(params[0], params[1])
    if act is A.LEAKY_RELU:
        return F.leaky_relu(y, params[0])
    if act is A.SIGMOID:
        return torch.sigmoid(y)
    if act is A.SILU:
        return F.silu(y)
    if act is A.HARD_SWISH:
        return F.hardswish(y)
    if act is A.HARD_SIGMOID:
        return (y * params[0] + params[1]).clamp(0, 1)
    if act is A.TANH:
        return torch.tanh(y)
    if act is A.GELU_ERF:
        return F.gelu(y)
    if act is A.GELU_TANH:
        return F.gelu(y, approximate="tanh")
    raise AssertionError(act)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return float(torch.linalg.vector_norm(a - b) / max(torch.linalg.vector_norm(b).item(), 1e-12))


def check_kernel_case(name: str, case, device: str, precision: str, config_index: int,
                      x_dtype: torch.dtype | None = None) -> float:
    """Runs one case into the middle channels of a channels-last buffer; checks it against a
    float64 reference and that the buffer's other channels are untouched. Returns the error."""
    from ember.backends.cuda.libs import triton_conv as T

    n, cin, h, w, cout, (kh, kw), stride, pads, dil, act, params, has_bias, has_res = case
    dtype = DTYPES[precision]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    x = torch.randn(n, cin, h, w, generator=gen).to(x_dtype or dtype)
    wt = torch.randn(cout, cin, kh, kw, generator=gen) / math.sqrt(cin * kh * kw)
    bias = torch.randn(cout, generator=gen) * 0.1 if has_bias else None
    oh, ow = T.output_hw(h, w, (kh, kw), stride, pads, dil)
    res = torch.randn(n, cout, oh, ow, generator=gen).to(dtype) if has_res else None  # NCHW: other strides

    packed = T.pack_weight(wt.to(device), dtype)
    wq = wt.to(dtype).double()  # the weight as the kernel sees it
    ref = F.conv2d(F.pad(x.double(), (pads[1], pads[3], pads[0], pads[2])), wq, None, stride, 0, dil)
    if bias is not None:
        ref = ref + bias.double().view(1, -1, 1, 1)
    if res is not None:
        ref = ref + res.double()
    ref = _reference_act(ref, act, params)

    buf = torch.full((n, cout + 7, oh, ow), SENTINEL, dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last)
    view = buf.narrow(1, 3, cout)
    got = T.conv2d(x.to(device).contiguous(memory_format=torch.channels_last), packed,
                   None if bias is None else bias.to(device),
                   None if res is None else res.to(device), stride=stride, pads=pads, dilation=dil,
                   act=act, act_params=params, precision=precision, config=T.CONFIGS[config_index],
                   out=view)
    assert got.data_ptr() == view.data_ptr()
    err = _rel(view, ref)
    assert err <= TOL[precision], f"{name} {precision} config {config_index}: relative error {err:.2e}"
    assert bool((buf[:, :3] == SENTINEL).all()) and bool((buf[:, 3 + cout:] == SENTINEL).all()), \
        f"{name}: the kernel wrote outside its slice"
    fresh = T.conv2d(x.to(device), packed, None if bias is None else bias.to(device),
                     None if res is None else res.to(device), stride=stride, pads=pads, dilation=dil,
                     act=act, act_params=params, precision=precision, config=T.CONFIGS[config_index])
    assert fresh.is_contiguous(memory_format=torch.channels_last) and fresh.dtype == dtype
    assert torch.equal(fresh, view)
    return err


def _concat_conv_graph(layout: str = "nhwc", planned: bool = True, act=A.RELU,
                       group: int = 1) -> tuple[Graph, Records]:
    """x -> FusedConv 3x3 ``k3`` (act) -> a; x -> FusedConv 1x1 ``k1`` -> b; y = concat(a, b)."""
    consts: dict = {}
    nodes = [fused_conv("k3", "x", "a", 8, 12, 3, consts, act=act, group=group),
             fused_conv("k1", "x", "b", 8, 4, 1, consts),
             Node("cat", OpType.CONCAT, ("a", "b"), ("y",), AxisAttrs(1))]
    types = {"x": TensorType(DType.FLOAT32, (2, 8, 6, 5))}
    g = infer_graph(Graph("cat_convs", nodes, ["x"], ["y"], types, consts, opset=17))
    names = frozenset({"x", "a", "b", "y"}) if layout == "nhwc" else frozenset()
    from ember.passes.concat import plan_concat_slices
    from ember.passes.manager import PassContext

    ctx = PassContext(records=Records(layout=LayoutPlan(Layout(layout), names)))
    if planned:
        g = plan_concat_slices(g, ctx)
    return g, ctx.records


def check_tactic(device: str, precision: str = "fp32") -> None:
    """The tactic's kernel: plain run in the planned (channels-last) format, ``write_into`` a
    strided slice (same values), declining a view of the wrong shape with nothing written."""
    from ember.backends.cuda.kernels.conv_triton import FACTORIES

    g, records = _concat_conv_graph()
    node = g.nodes[0]
    consts = {k: torch.from_numpy(v).to(device) for k, v in g.constants.items()}
    dtype = DTYPES[precision]
    x = torch.from_numpy(rand(2, 8, 6, 5)).to(device)
    ref = torch.relu(F.conv2d(x.double(), consts["k3.w"].double(), consts["k3.b"].double(), 1, 1))
    for tactic, factory in FACTORIES.items():
        kernel = factory(node, CompileContext(g, consts, torch.device(device), tactic, precision, records))
        (y,) = kernel([x, consts["k3.w"], consts["k3.b"]])
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        assert _rel(y, ref) <= TOL[precision], tactic
        wi = write_into_of(kernel)
        buf = torch.full((2, 16, 6, 5), SENTINEL, dtype=dtype, device=device).contiguous(
            memory_format=torch.channels_last)
        assert wi.accepts(torch.empty(2, 12, 6, 5, device="meta").contiguous(memory_format=torch.channels_last))
        assert wi([x, None, None], buf.narrow(1, 0, 12))
        assert torch.equal(buf[:, :12], y) and bool((buf[:, 12:] == SENTINEL).all())
        assert not wi([x, None, None], buf.narrow(1, 0, 11))  # wrong shape: declined, nothing written
        assert torch.equal(buf[:, :12], y)


# ---- CPU: where the tactics apply (no Triton needed) ------------------------------------------
def test_triton_conv_applies_where_it_saves_a_pass():
    from ember.backends.cuda.kernels.conv_triton import triton_conv_applies
    from ember.backends.cuda.registry import CUDA_KERNELS

    def applies(g: Graph, records: Records, node: Node) -> bool:  # as the registry asks it
        entry = dataclasses.replace(CUDA_KERNELS.table(node.op)["triton_igemm_64x64x64"], available=None)
        return entry.applies(node, g, records)

    g, recs = _concat_conv_graph()
    assert applies(g, recs, g.nodes[0]) and applies(g, recs, g.nodes[1])  # Concat producers
    alone, recs = _concat_conv_graph(planned=False)
    assert not applies(alone, recs, alone.nodes[0])  # conv + ReLU alone: cuDNN fuses it
    silu, recs = _concat_conv_graph(planned=False, act=A.SILU)
    assert applies(silu, recs, silu.nodes[0])  # an epilogue cuDNN cannot fuse
    nchw, recs = _concat_conv_graph(layout="nchw")
    assert not applies(nchw, recs, nchw.nodes[0])  # the plan stores the output NCHW
    grouped, recs = _concat_conv_graph(group=2)
    assert not applies(grouped, recs, grouped.nodes[0])
    assert not triton_conv_applies(g.nodes[0], None)


# ---- GPU -----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_kernel_cases(name, precision):
    check_kernel_case(name, CASES[name], "cuda", precision, sorted(CASES).index(name) % 4)


@pytest.mark.cuda
@pytest.mark.parametrize("config_index", range(4))
@pytest.mark.parametrize("name", sorted(GPU_CASES))
def test_cuda_inception_sizes_every_config(name, config_index):
    check_kernel_case(name, GPU_CASES[name], "cuda", "fp16", config_index)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_cuda_bf16_and_tf32(precision):
    check_kernel_case("inception_3x3_96_128", GPU_CASES["inception_3x3_96_128"], "cuda", precision, 1)


@pytest.mark.cuda
def test_cuda_fp32_input_to_fp16_layer_is_cast_in_registers():
    check_kernel_case("3x3_c3_c17_relu", CASES["3x3_c3_c17_relu"], "cuda", "fp16", 0, x_dtype=torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_cuda_tactic_write_into(precision):
    check_tactic("cuda", precision)


@pytest.mark.cuda
def test_cuda_program_writes_concat_inputs_with_triton_tactics():
    """In a program (CUDA graph, streams), Concat producers on a Triton tactic are written in
    place and the result matches the CPU oracle."""
    import ember
    from ember.backends.cuda import CUDABackend
    from ember.backends.cuda.exec.executor import CudaExecutor
    from ember.backends.cuda.exec.program import CudaProgram, LayerSpec

    from cuda_graphs import cpu_reference, inception_graph

    src = inception_graph()
    engine = ember.build(src, ember.BuildConfig(device="cuda", precision="fp16", tactic_tuning=False))
    g = engine.plan.graph
    backend = CUDABackend()
    layers = {}
    forced = []
    for layer, node in zip(engine.plan.layers, g.nodes):
        tactic = layer.tactic
        if "triton_igemm_64x64x64" in backend.tactics(node, g, engine.plan.records):
            tactic = "triton_igemm_64x64x64"
            forced.append(node.outputs[0])
        layers[layer.name] = LayerSpec(tactic, layer.precision)
    assert {"b2o", "b3o"} <= set(forced), forced  # the 3x3 and 5x5 branch convs at least
    program = CudaProgram.build(g, layers, g.constants, records=engine.plan.records)
    written = {t for r in program.concat.report.values() for t in r["written"]}
    assert {"b2o", "b3o"} <= written, program.concat.report
    runner = CudaExecutor(program)
    x = np.random.default_rng(5).standard_normal((2, 3, 14, 14)).astype(np.float32)
    ref = cpu_reference(src, {"x": x})
    for _ in range(3):  # capture, then replays
        out = runner.infer({"x": x})
        for k in ref:
            assert _rel(torch.from_numpy(np.asarray(out[k], np.float32)), torch.from_numpy(ref[k])) <= 1e-2, k


# ---- FP8 (e4m3): the kernel's FP8 mode and the conv_fp8 tactics ----------------------------------
#: FP8 cases (the same fields as CASES; at least 16 input channels, as the tactic asks)
FP8_CASES = {
    "fp8_3x3_c32_c24_relu_residual": (2, 32, 9, 7, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), A.RELU, (), True, True),
    "fp8_1x1_s2_c48_c40": (1, 48, 8, 8, 40, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), A.NONE, (), True, False),
    "fp8_5x5_c16_clip_asym": (1, 16, 7, 6, 16, (5, 5), (1, 1), (2, 1, 2, 3), (1, 1), A.CLIP, (0.0, 6.0), False, False),
}


def _e4m3(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).double()


def check_fp8_case(name: str, case, device: str, config_index: int, representable: bool) -> float:
    """One FP8 case into a channel slice of a channels-last fp16 buffer, against float64 on the
    e4m3-rounded operands (input per tensor, weight per output channel); a NaN in the input makes
    exactly the output pixels whose windows hold it NaN, in every channel. ``representable``: the
    input's values are e4m3 values times a power-of-two scale, so the kernel's ``x / sx`` is exact
    and no rounding of the input can differ from PyTorch's: Triton 3.9's interpreter casts float32
    to e4m3 wrongly where rounding up should carry into the exponent (``2 * (1 - 1e-6)`` becomes
    1.0, ``128 * (1 - 1e-6)`` 64.0) and rounds some ties up; the GPU's ``cvt.rn.satfinite`` does
    not, so the cuda tests take arbitrary inputs."""
    from ember.backends.cuda.libs import triton_conv as T

    n, cin, h, w, cout, (kh, kw), stride, pads, dil, act, params, has_bias, has_res = case
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    sx = 2.0 ** -5 if representable else 0.03
    x = torch.randn(n, cin, h, w, generator=gen) * 2
    if representable:
        x = _e4m3(x / sx).float() * sx
    wt = torch.randn(cout, cin, kh, kw, generator=gen) / math.sqrt(cin * kh * kw)
    wt[1] = 0.0  # an all-zero output channel: scale 1, output = bias
    bias = torch.randn(cout, generator=gen) * 0.1 if has_bias else None
    oh, ow = T.output_hw(h, w, (kh, kw), stride, pads, dil)
    res = torch.randn(n, cout, oh, ow, generator=gen).half() if has_res else None
    fw = T.pack_weight_fp8(wt.to(device))
    assert fw.packed.data.dtype == torch.float8_e4m3fn and fw.scales.shape == (fw.packed.data.shape[0],)
    assert fw.packed.data.shape[1] % 16 == 0 and fw.packed.data.stride(1) == 1  # K-major, 16-byte rows
    sw = fw.scales[:cout].cpu().double()
    assert float(sw[1]) == 1.0
    w8 = _e4m3(wt.double() / sw.view(-1, 1, 1, 1)) * sw.view(-1, 1, 1, 1)

    def reference(xin: torch.Tensor) -> torch.Tensor:
        x8 = _e4m3(xin.double() / sx) * sx
        x8[torch.isnan(xin)] = float("nan")
        ref = F.conv2d(F.pad(x8, (pads[1], pads[3], pads[0], pads[2])), w8, None, stride, 0, dil)
        if bias is not None:
            ref = ref + bias.double().view(1, -1, 1, 1)
        if res is not None:
            ref = ref + res.double()
        return _reference_act(ref, act, params)

    def run(xin: torch.Tensor, out=None) -> torch.Tensor:
        return T.conv2d(xin.to(device).contiguous(memory_format=torch.channels_last), fw.packed,
                        None if bias is None else bias.to(device), None if res is None else res.to(device),
                        stride=stride, pads=pads, dilation=dil, act=act, act_params=params,
                        config=T.CONFIGS[config_index], out=out, fp8=(sx, (fw.scales * sx).to(device)))

    buf = torch.full((n, cout + 5, oh, ow), SENTINEL, dtype=torch.float16, device=device).contiguous(
        memory_format=torch.channels_last)
    view = buf.narrow(1, 2, cout)
    run(x, view)
    ref = reference(x)
    err = _rel(view, ref)
    assert err <= TOL["fp16"], f"{name} fp8 config {config_index}: relative error {err:.2e}"
    assert bool((buf[:, :2] == SENTINEL).all()) and bool((buf[:, 2 + cout:] == SENTINEL).all()), \
        f"{name}: the FP8 kernel wrote outside its slice"
    fresh = run(x)
    assert fresh.dtype == torch.float16 and fresh.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fresh, view)
    # NaN in, NaN out: exactly the pixels whose windows hold it, in every channel; the rest as before
    bad = x.clone()
    bad[0, cin // 2, h // 2, w // 3] = float("nan")
    got = run(bad).cpu()
    nan_ref = torch.isnan(reference(bad))
    assert nan_ref.any() and torch.equal(torch.isnan(got), nan_ref), f"{name}: NaN pixels differ"
    assert torch.equal(torch.nan_to_num(got).masked_fill(nan_ref, 0), fresh.cpu().masked_fill(nan_ref, 0))
    # values beyond the calibrated range saturate at 448 * sx, as the FP8 GEMMs' input does
    big = x.clone()
    big[0, 0, 0, 0] = 1e4
    clipped = x.clone()
    clipped[0, 0, 0, 0] = 448.0 * sx
    assert torch.equal(run(big), run(clipped))
    return err


def _fp8_conv_graph(cin: int = 32) -> Graph:
    """x [2, cin, 6, 6] -> FusedConv 3x3 ``c`` (+ residual ``r``, ReLU) -> y [2, 24, 6, 6]."""
    consts: dict = {}
    nodes = [fused_conv("c", "x", "y", cin, 24, 3, consts, residual="r")]
    types = {"x": TensorType(DType.FLOAT32, (2, cin, 6, 6)), "r": TensorType(DType.FLOAT32, (2, 24, 6, 6))}
    return infer_graph(Graph("fp8_conv", nodes, ["x", "r"], ["y"], types, consts, opset=17))


def check_fp8_tactic(device: str) -> None:
    """The ``triton_fp8_conv_*`` factory on an FP8 layer: computes the kernel's numbers, writes into
    a given output, and refuses a layer without a calibrated input range with a clear error."""
    from ember.backends.cuda.kernels.conv_fp8 import FACTORIES, fp8_conv_applies
    from ember.errors import BuildError
    from ember.plan.config import Precision
    from ember.plan.records import PrecisionPlan, QuantDType, QuantizationPlan, QuantRecord

    g = _fp8_conv_graph()
    sx = 2.0 ** -5  # an FP8 record of this scale: amax 14, x / sx exact (``check_fp8_case``)
    records = Records(precision=PrecisionPlan({"c": Precision.FP8}),
                      quantization=QuantizationPlan({"x": QuantRecord("x", QuantDType.FP8_E4M3, (sx,), (0,), None,
                                                                      "calibration")}))
    node = g.nodes[0]
    assert fp8_conv_applies(node, g, records)
    assert not fp8_conv_applies(node, g, Records(precision=PrecisionPlan({"c": Precision.FP16})))
    consts = {k: torch.from_numpy(v).to(device) for k, v in g.constants.items()}
    w, b = g.constants["c.w"], g.constants["c.b"]
    name = next(iter(FACTORIES))
    ctx = CompileContext(g, consts, torch.device(device), name, Precision.FP8, records)
    kernel = FACTORIES[name](node, ctx)
    x = (_e4m3(torch.randn(2, 32, 6, 6, generator=torch.Generator().manual_seed(3)) * 4 / sx).float() * sx).to(device)
    res = torch.randn(2, 24, 6, 6, generator=torch.Generator().manual_seed(4)).half().to(device)
    y = kernel([x, consts["c.w"], consts["c.b"], res])[0]
    assert y.dtype == torch.float16 and tuple(y.shape) == (2, 24, 6, 6)
    x8 = _e4m3(x.cpu().double() / sx) * sx
    wt = torch.from_numpy(w).double()
    sw = (wt.abs().amax(dim=(1, 2, 3)) / 448).view(-1, 1, 1, 1)
    ref = F.conv2d(x8, _e4m3(wt / sw) * sw, torch.from_numpy(b).double(), padding=1) + res.cpu().double()
    assert _rel(y, torch.relu(ref)) <= TOL["fp16"]
    dest = torch.empty(2, 24, 6, 6, dtype=torch.float16, device=device).contiguous(memory_format=torch.channels_last)
    assert write_into_of(kernel)([x, consts["c.w"], consts["c.b"], res], dest)
    assert torch.equal(dest, y)
    with pytest.raises(BuildError, match="calibrated per-tensor range of its input 'x'"):
        FACTORIES[name](node, dataclasses.replace(ctx, records=Records(precision=records.precision)))


def _needs_fp8_tensor_cores() -> None:
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 tensor cores need compute capability 8.9 or newer (Ada, Hopper)")


@pytest.mark.cuda
@pytest.mark.parametrize("config_index", range(4))
@pytest.mark.parametrize("name", sorted(FP8_CASES))
def test_cuda_fp8_kernel_cases(name, config_index):
    _needs_fp8_tensor_cores()
    check_fp8_case(name, FP8_CASES[name], "cuda", config_index, representable=False)
    check_fp8_case(name, FP8_CASES[name], "cuda", config_index, representable=True)


@pytest.mark.cuda
def test_cuda_fp8_tactic():
    _needs_fp8_tensor_cores()
    check_fp8_tactic("cuda")


def test_fp8_conv_applies_to_fp8_layers_with_a_calibrated_input():
    """CPU: where the FP8 convolution is offered (an FP8 layer, 2-D ungrouped, 16+ input channels,
    a per-tensor calibrated input range), and that precision="fp8" now marks convolutions FP8."""
    from ember.backends.cuda.kernels.conv_fp8 import fp8_conv_applies
    from ember.passes.precision import FP8_OPS
    from ember.plan.config import Precision
    from ember.plan.records import PrecisionPlan, QuantDType, QuantizationPlan, QuantRecord

    assert {OpType.CONV, OpType.FUSED_CONV} <= FP8_OPS
    fp8 = PrecisionPlan({"c": Precision.FP8})
    rec = QuantizationPlan({"x": QuantRecord("x", QuantDType.INT8, (0.02,), (0,), None, "calibration")})
    per_channel = QuantizationPlan({"x": QuantRecord("x", QuantDType.INT8, (0.02, 0.03), (0, 0), 1, "qdq")})
    g = _fp8_conv_graph()
    node = g.nodes[0]
    assert fp8_conv_applies(node, g, Records(precision=fp8, quantization=rec))
    assert not fp8_conv_applies(node, g, Records(precision=fp8))  # no calibrated range
    assert not fp8_conv_applies(node, g, Records(precision=fp8, quantization=per_channel))
    assert not fp8_conv_applies(node, g, Records(precision=PrecisionPlan({"c": Precision.FP16}), quantization=rec))
    assert not fp8_conv_applies(node, None, Records(precision=fp8, quantization=rec))
    small = _fp8_conv_graph(cin=8)  # an RGB-like stem: stays fp16
    assert not fp8_conv_applies(small.nodes[0], small, Records(precision=fp8, quantization=rec))


# ---- CPU with Triton installed: the interpreter ---------------------------------------------------
def interpreter_main() -> None:
    """Every case (fp32 and fp16, tile configs in turn) and the tactic check, on CPU tensors."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    for i, name in enumerate(sorted(CASES)):
        for precision in ("fp32", "fp16"):
            err = check_kernel_case(name, CASES[name], "cpu", precision, i % 4)
            print(f"{name:28s} {precision}: relative error {err:.1e}")
    check_kernel_case("3x3_c3_c17_relu", CASES["3x3_c3_c17_relu"], "cpu", "fp16", 3, x_dtype=torch.float32)
    check_tactic("cpu", "fp32")
    print("tactic write_into: ok")
    for i, name in enumerate(sorted(FP8_CASES)):
        err = check_fp8_case(name, FP8_CASES[name], "cpu", i % 4, representable=True)
        print(f"{name:32s} fp8: relative error {err:.1e}")
    check_fp8_tactic("cpu")
    print("fp8 tactic: ok")


def _interpreter_skip_reason() -> str:
    if torch.cuda.is_available():
        return "a GPU is here: the cuda tests run the kernel for real"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    triton_version = tuple(int(p) for p in importlib.metadata.version("triton").split(".")[:2])
    if tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4) and triton_version < (3, 9):
        # Triton 3.6's interpreter turns a loop bound into int(1-element array), which NumPy 2.4
        # made an error; every kernel with a run-time loop bound fails there, not just this one
        # (Triton 3.9's interpreter runs them: seen in the sixteenth session)
        return f"Triton's interpreter cannot run run-time loop bounds with NumPy {np.__version__} (needs < 2.4)"
    return ""


@pytest.mark.skipif(bool(_interpreter_skip_reason()), reason=_interpreter_skip_reason() or "runs")
def test_interpreter_cases():
    here = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=os.pathsep.join([str(here), str(here.parents[2])] +
                                          ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, "-c", "import test_triton_conv as t; t.interpreter_main()"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tactic write_into: ok" in proc.stdout and "fp8 tactic: ok" in proc.stdout

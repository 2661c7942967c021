"""A 1x1 convolution as one GEMM straight into a channel slice of a Concat's buffer
(``ember.backends.gemm_into``): the slice is a GEMM output with ldc = the buffer's channels, aten
writes it without a temporary, and the CPU (oneDNN tactics) and CUDA (``cublaslt_1x1``) kernels'
``write_into`` use it (the CUDA tactic's logic also runs on CPU tensors here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ember.backends.activations import activation_fn, inplace_activation
from ember.backends.base import CompileContext, write_into_of
from ember.backends.cpu import CPUBackend
from ember.backends.gemm_into import gemm_into, matrix_view, pointwise_conv
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import Activation, ConvAttrs, FusedConvAttrs
from ember.ops.infer import infer_graph
from ember.plan.config import BuildConfig

CL = torch.channels_last
SENTINEL = -777.0


def _slice_buf(n=2, ctot=24, h=5, w=6, dtype=torch.float32, device="cpu"):
    return torch.full((n, ctot, h, w), SENTINEL, dtype=dtype, device=device).contiguous(memory_format=CL)


def test_matrix_view_of_channel_slices():
    buf = torch.empty(2, 24, 5, 6).contiguous(memory_format=CL)
    m = matrix_view(buf.narrow(1, 8, 10))
    assert m is not None and m.shape == (60, 10) and m.stride() == (24, 1)
    assert m.data_ptr() == buf.narrow(1, 8, 10).data_ptr()
    nchw1 = torch.empty(1, 24, 5, 6).narrow(1, 8, 10)  # NCHW, one image: a column-major matrix
    assert matrix_view(nchw1).stride() == (1, 30)
    assert matrix_view(torch.empty(2, 24, 5, 6).narrow(1, 8, 10)) is None  # NCHW, 2 images: no view
    assert matrix_view(buf.narrow(2, 0, 3)) is None  # a spatial slice: H and W do not collapse
    meta = torch.empty(2, 24, 5, 6, device="meta").contiguous(memory_format=CL).narrow(1, 4, 4)
    assert matrix_view(meta).stride() == (24, 1)
    assert matrix_view(torch.empty(60, 10)) is None  # not 4-D


def test_pointwise_conv_geometry():
    assert pointwise_conv(ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), (8, 4, 1, 1))
    assert pointwise_conv(ConvAttrs((1, 1), (), (), ()), (8, 4, 1, 1))
    assert not pointwise_conv(ConvAttrs((1, 1), (2, 2), (), ()), (8, 4, 1, 1))
    assert not pointwise_conv(ConvAttrs((1, 1), (), (1, 1, 1, 1), ()), (8, 4, 1, 1))
    assert not pointwise_conv(ConvAttrs((1, 1), (), (), (), 2), (8, 2, 1, 1))
    assert not pointwise_conv(ConvAttrs((3, 3), (), (1, 1, 1, 1), ()), (8, 4, 3, 3))


def _ops(fn) -> list[str]:
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as p:
        fn()
    return [e.name for e in p.events()]


@pytest.mark.parametrize("bias,residual", [(True, False), (False, False), (True, True), (False, True)])
def test_gemm_into_writes_the_slice_without_a_temporary(bias, residual):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, 6, generator=g).contiguous(memory_format=CL)
    w = torch.randn(10, 7, generator=g)
    b = torch.randn(10, generator=g) if bias else None
    r = torch.randn(2, 10, 5, 6, generator=g).contiguous(memory_format=CL) if residual else None
    buf = _slice_buf()
    view = buf.narrow(1, 8, 10)
    o2, x2 = matrix_view(view), matrix_view(x)
    r2 = matrix_view(r) if residual else None
    ops = _ops(lambda: gemm_into(o2, x2, w.t(), b, r2, torch.relu_))
    # the only copy is the bias (or the residual) put into the slice before the GEMM accumulates
    # onto it (both: one add into the slice); no temporary result, no copy back
    assert not {"aten::clone", "aten::empty", "aten::empty_like", "aten::contiguous"} & set(ops), ops
    assert ops.count("aten::copy_") == (1 if bias != residual else 0), ops
    assert ops.count("aten::add") == (1 if bias and residual else 0), ops
    ref = F.conv2d(x, w[:, :, None, None], b)
    ref = torch.relu(ref + r if residual else ref)
    torch.testing.assert_close(view, ref, rtol=1e-5, atol=1e-5)
    assert bool((buf[:, :8] == SENTINEL).all()) and bool((buf[:, 18:] == SENTINEL).all())


@pytest.mark.parametrize("act,params", [
    (Activation.NONE, ()), (Activation.RELU, ()), (Activation.CLIP, (0.0, 6.0)), (Activation.CLIP, (-1.0,)),
    (Activation.LEAKY_RELU, (0.2,)), (Activation.SIGMOID, ()), (Activation.TANH, ()), (Activation.SILU, ()),
    (Activation.HARD_SWISH, ()), (Activation.HARD_SIGMOID, (0.3, 0.4)), (Activation.GELU_ERF, ()),
    (Activation.GELU_TANH, ())])
def test_inplace_activation_on_a_strided_slice(act, params):
    buf = torch.randn(2, 12, 3, 4).contiguous(memory_format=CL)
    view = buf.narrow(1, 3, 5)
    fn = activation_fn(act, params)
    ref = fn(view.clone()) if fn is not None else view.clone()
    rest = buf[:, 8:].clone()
    inplace_activation(act, params)(view)
    torch.testing.assert_close(view, ref)
    assert torch.equal(buf[:, 8:], rest)


def _conv_graph(act=Activation.RELU, residual=False, k=1, stride=1, group=1, cin=8, cout=10, n=2, hw=(5, 6),
                params=()):
    rng = np.random.default_rng(1)
    pads = (k // 2,) * 4
    consts = {"w": (rng.standard_normal((cout, cin // group, k, k)) * 0.3).astype(np.float32),
              "b": rng.standard_normal(cout).astype(np.float32)}
    types = {"x": TensorType(DType.FLOAT32, (n, cin, *hw))}
    ins = ("x", "w", "b")
    if residual:
        types["r"] = TensorType(DType.FLOAT32, (n, cout, *hw))
        ins += ("r",)
    node = Node("conv", OpType.FUSED_CONV, ins, ("y",),
                FusedConvAttrs(ConvAttrs((k, k), (stride, stride), pads, (1, 1), group), act, params, residual))
    g = Graph("conv", [node], [i for i in ins if i in types], ["y"], types, consts, opset=17)
    return infer_graph(g)


def _compile_cpu(g, tactic, macs=1 << 40):
    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    ctx = CompileContext(g, consts, torch.device("cpu"), tactic,
                         config=BuildConfig(cpu_gemm_into_max_macs=macs))
    return CPUBackend().compile_node(g.nodes[0], ctx), consts


@pytest.fixture
def gemm_into_on():
    """The CPU writes every 1x1 conv slice as a GEMM (off by default: see
    ``BuildConfig.cpu_gemm_into_max_macs``); ``_compile_cpu`` asks for it."""
    return 1 << 40


@pytest.mark.parametrize("tactic", ["mkldnn_prepacked", "channels_last"])
@pytest.mark.parametrize("act,residual,params", [(Activation.RELU, False, ()), (Activation.NONE, True, ()),
                                                 (Activation.CLIP, True, (0.0, 6.0))])
def test_cpu_conv_writes_its_slice(gemm_into_on, tactic, act, residual, params):
    g = _conv_graph(act, residual, params=params)
    kernel, consts = _compile_cpu(g, tactic)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 8, 5, 6)).astype(np.float32))
    x = x.contiguous(memory_format=CL)
    r = torch.randn(2, 10, 5, 6).contiguous(memory_format=CL) if residual else None
    args = [x, consts["w"], consts["b"]] + ([r] if residual else [])
    with torch.inference_mode():
        (y,) = kernel(args)
        wi = write_into_of(kernel)
        assert wi is not None
        assert wi.accepts(torch.empty(2, 24, 5, 6, device="meta").contiguous(memory_format=CL).narrow(1, 8, 10))
        buf = _slice_buf()
        assert wi(args, buf.narrow(1, 8, 10))
        torch.testing.assert_close(buf[:, 8:18], y, rtol=1e-5, atol=1e-5)
        assert bool((buf[:, :8] == SENTINEL).all()) and bool((buf[:, 18:] == SENTINEL).all())
        # an NCHW input is taken too (put in pixel-matrix order first)
        assert wi([x.contiguous(), *args[1:]], buf.narrow(1, 8, 10))
        torch.testing.assert_close(buf[:, 8:18], y, rtol=1e-5, atol=1e-5)
        nchw = torch.full((2, 24, 5, 6), SENTINEL)
        assert not wi.accepts(nchw.narrow(1, 8, 10))  # NCHW, 2 images: a GEMM would need a temporary
        assert not wi(args, nchw.narrow(1, 8, 10)) and bool((nchw == SENTINEL).all())
        assert not wi(args, buf.narrow(1, 8, 9))  # wrong shape: declined, nothing written
        assert not wi.accepts(torch.empty(2, 10, 5, 6, dtype=torch.float64))


def test_cpu_gemm_into_is_off_by_default_and_not_offered_where_it_cannot_apply(gemm_into_on):
    # GELU has an in-place form (aten.gelu_), but the CPU path keeps declining it as before
    out = torch.empty(2, 24, 5, 6, device="meta").contiguous(memory_format=CL).narrow(1, 8, 10)
    for g in (_conv_graph(k=3), _conv_graph(stride=2, hw=(9, 11)), _conv_graph(group=2),
              _conv_graph(Activation.GELU_ERF)):
        kernel, _ = _compile_cpu(g, "mkldnn_prepacked")
        assert write_into_of(kernel) is None, g.nodes[0].attrs
    kernel, _ = _compile_cpu(_conv_graph(), "mkldnn_prepacked")
    assert write_into_of(kernel).accepts(out)
    kernel, _ = _compile_cpu(_conv_graph(), "mkldnn_prepacked", macs=0)
    assert write_into_of(kernel) is None  # the default: no GEMM into slices on the CPU
    small, _ = _compile_cpu(_conv_graph(), "mkldnn_prepacked", macs=100)
    assert not write_into_of(small).accepts(out)  # larger than the limit: declined


# ---- the CUDA tactic (cublaslt_1x1) ---------------------------------------------------------------
def _check_cuda_tactic(device: str, precision: str, residual: bool) -> None:
    from ember.backends.cuda import CUDABackend
    from ember.backends.cuda.device import compute_dtype

    g = _conv_graph(Activation.RELU if not residual else Activation.NONE, residual)
    dtype = compute_dtype(precision)
    consts = {k: torch.from_numpy(v).to(device) for k, v in g.constants.items()}
    ctx = CompileContext(g, consts, torch.device(device), "cublaslt_1x1", precision)
    if device == "cpu":  # the tactic's logic on CPU tensors (no CUDA needed for aten's GEMM)
        from ember.backends.cuda.kernels.conv import conv_pointwise_gemm

        kernel = conv_pointwise_gemm(g.nodes[0], ctx)
    else:
        kernel = CUDABackend().compile_node(g.nodes[0], ctx)
    x = torch.randn(2, 8, 5, 6, device=device).to(dtype).contiguous(memory_format=CL)
    r = torch.randn(2, 10, 5, 6, device=device).to(dtype).contiguous(memory_format=CL) if residual else None
    args = [x, consts["w"], consts["b"]] + ([r] if residual else [])
    with torch.inference_mode():
        (y,) = kernel(args)
        wi = write_into_of(kernel)
        meta = torch.empty(2, 24, 5, 6, dtype=dtype, device="meta").contiguous(memory_format=CL)
        assert wi.accepts(meta.narrow(1, 8, 10)) and not wi.accepts(meta.narrow(1, 8, 9))
        buf = _slice_buf(dtype=dtype, device=device)
        assert wi(args, buf.narrow(1, 8, 10))
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(buf[:, 8:18].float(), y.float(), rtol=tol, atol=tol)
        assert bool((buf[:, :8] == SENTINEL).all()) and bool((buf[:, 18:] == SENTINEL).all())
        assert not wi(args, buf.narrow(1, 8, 9))  # wrong shape: declined
        nchw = torch.full((2, 24, 5, 6), SENTINEL, dtype=dtype, device=device)
        assert not wi.accepts(nchw.narrow(1, 8, 10)) and not wi(args, nchw.narrow(1, 8, 10))


@pytest.mark.parametrize("residual", [False, True])
def test_cuda_pointwise_gemm_writes_its_slice_on_cpu_tensors(residual):
    _check_cuda_tactic("cpu", "fp32", residual)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("residual", [False, True])
def test_cuda_pointwise_gemm_writes_its_slice(precision, residual):
    _check_cuda_tactic("cuda", precision, residual)

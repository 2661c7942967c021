"""``write_into`` of the CUDA kernels (``ember.backends.base.WriteInto``): the result written
straight into a given tensor equals ``kernel(inputs)[0]``, nothing outside that tensor is touched,
and ``accepts`` turns down what the write cannot honour (wrong dtype, strides it cannot write).

``out`` is what the device arena hands over: a packed tensor with the strides of the kernel's
own output at an odd multiple of 64 bytes inside a larger buffer, or a strided view (a slice of
a Concat's buffer). Every case runs on the GPU (``-m cuda``); the ``aten``/cuBLAS-style tactics
also run on CPU tensors in fp32 (as in test_cuda_kernels.py), which checks their view and shape
logic in CI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch

from ember.backends.base import CompileContext, write_into_of
from ember.backends.cuda import CUDABackend
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import (
    Activation,
    FusedElementwiseAttrs,
    FusedGemmAttrs,
    FusedStep,
    GemmAttrs,
    LayerNormAttrs,
    PoolAttrs,
    SoftmaxAttrs,
)
from ember.ops.infer import infer_graph

RNG = np.random.default_rng(3)
ODD_OFFSET_BYTES = 3 * 64  # 64-byte aligned, not 128-byte aligned
NAN = float("nan")


def _rand(*shape: int, scale: float = 0.3) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _graph(op: OpType, attrs: Any, inputs: list[tuple[str, Any]]) -> Graph:
    """One node; ``inputs``: (name, array) for constants, (name, shape) for graph inputs."""
    types, consts = {}, {}
    for n, v in inputs:
        if isinstance(v, np.ndarray):
            consts[n] = v
        else:
            types[n] = TensorType(DType.FLOAT32, tuple(v))
    node = Node("layer", op, tuple(n for n, _ in inputs), ("y",), attrs)
    return infer_graph(Graph(f"{op.value}_write_into", [node], list(types), ["y"], types, consts, opset=17))


def _fused(steps: list[FusedStep], shapes: list[tuple[int, ...]]) -> Graph:
    return _graph(OpType.FUSED_ELEMENTWISE, FusedElementwiseAttrs(tuple(steps)),
                  [(f"i{k}", s) for k, s in enumerate(shapes)])


@dataclass(frozen=True)
class Case:
    graph: Callable[[], Graph]
    tactic: str
    slices: tuple[tuple[int, bool], ...] = ()  # Concat-buffer slices: (axis, written or refused)
    cpu: bool = False                          # the tactic runs on CPU tensors as well
    exact: bool = True  # bit-for-bit; GEMMs get a tolerance (cuBLAS may choose another algorithm
                        # for another output alignment or layout)
    channels_last: bool = False                # 4-D inputs given channels-last


#: Concat slices. Along the last axis: a row-major matrix with a wider row stride, which cuBLAS
#: writes and cuBLASLt's epilogue, ``matmul`` and the Triton kernels (they index their output
#: packed) refuse. Along the first axis: packed again, written. A channel slice (dim 1) of an
#: NCHW (N > 1) or channels-last buffer: strided, refused.
WIDE = ((-1, True),)
NARROW = ((-1, False),)
ROWS = ((-1, False), (0, True))
PLANES = ((1, False), (0, True))


def _gemm(trans_a=False):
    a = (32, 6) if trans_a else (6, 32)
    return lambda: _graph(OpType.GEMM, GemmAttrs(alpha=0.5, beta=2.0, trans_a=trans_a, trans_b=True),
                          [("a", a), ("b", _rand(24, 32)), ("c", _rand(24))])


def _fgemm(act, bias=True):
    ins = [("a", (3, 7, 32)), ("b", _rand(32, 24))] + ([("c", _rand(24))] if bias else [])
    return lambda: _graph(OpType.FUSED_GEMM, FusedGemmAttrs(GemmAttrs(), act), ins)


def _matmul(a, b):
    return lambda: _graph(OpType.MATMUL, None, [("a", a), ("b", b)])


def _softmax(op, attrs, x):
    return lambda: _graph(op, attrs, [("x", x)])


def _pool(op, attrs, x=(2, 8, 10, 10)):
    return lambda: _graph(op, attrs, [("x", x)])


def _avg(kernel, stride, pads, ceil, include):
    return _pool(OpType.AVERAGE_POOL, PoolAttrs(kernel, stride, pads, (1, 1), ceil, include))


S = FusedStep
CASES = {
    "gemm_trans_a_cublas": Case(_gemm(True), "cublas", WIDE, cpu=True, exact=False),
    "gemm_bias_cublas": Case(_gemm(), "cublas", WIDE, cpu=True, exact=False),
    "fused_gemm_relu_cublas": Case(_fgemm(Activation.RELU), "cublas", WIDE, cpu=True, exact=False),
    "fused_gemm_gelu_cublas": Case(_fgemm(Activation.GELU_ERF), "cublas", WIDE, cpu=True, exact=False),
    "fused_gemm_relu_cublaslt": Case(_fgemm(Activation.RELU), "cublaslt_epilogue", NARROW, exact=False),
    "fused_gemm_gelu_tanh_cublaslt": Case(_fgemm(Activation.GELU_TANH), "cublaslt_epilogue", NARROW, exact=False),
    "fused_gemm_gelu_triton": Case(_fgemm(Activation.GELU_ERF), "cublas_triton", NARROW, exact=False),
    "fused_gemm_silu_nobias_triton": Case(_fgemm(Activation.SILU, bias=False), "cublas_triton", NARROW,
                                          exact=False),
    "matmul_const_cublas": Case(_matmul((2, 5, 16), _rand(16, 8)), "cublas", WIDE, cpu=True, exact=False),
    "matmul_batched": Case(_matmul((2, 3, 5, 16), (2, 3, 16, 4)), "matmul", ROWS, cpu=True, exact=False),
    "matmul_broadcast": Case(_matmul((3, 5, 16), (16, 4)), "matmul", ROWS, cpu=True, exact=False),
    "layernorm_triton": Case(lambda: _graph(OpType.LAYER_NORM, LayerNormAttrs(-1, 1e-5),
                                            [("x", (2, 7, 96)), ("w", _rand(96)), ("b", _rand(96))]),
                             "triton", ROWS),
    "skip_layernorm_triton": Case(lambda: _graph(OpType.SKIP_LAYER_NORM, LayerNormAttrs(-1, 1e-5),
                                                 [("x", (2, 7, 96)), ("r", (2, 7, 96)), ("w", _rand(96)),
                                                  ("b", _rand(96))]), "triton", ROWS),
    "skip_layernorm_triton_rows4": Case(lambda: _graph(OpType.SKIP_LAYER_NORM, LayerNormAttrs(-1, 1e-5),
                                                       [("x", (3, 7, 96)), ("r", (3, 7, 96)), ("w", _rand(96))]),
                                        "triton_rows4", ROWS),
    "softmax_triton": Case(_softmax(OpType.SOFTMAX, SoftmaxAttrs(-1), (3, 5, 77)), "triton", ROWS),
    "softmax_aten": Case(_softmax(OpType.SOFTMAX, SoftmaxAttrs(-1), (3, 5, 77)), "aten", ROWS, cpu=True),
    "softmax_axis1_aten": Case(_softmax(OpType.SOFTMAX, SoftmaxAttrs(1), (3, 5, 7)), "aten", ROWS, cpu=True),
    "softmax_legacy_aten": Case(_softmax(OpType.SOFTMAX, SoftmaxAttrs(1, True), (3, 5, 7)), "aten", ROWS,
                                cpu=True),
    "log_softmax_aten": Case(_softmax(OpType.LOG_SOFTMAX, SoftmaxAttrs(-1), (3, 50)), "aten", ROWS, cpu=True),
    "maxpool_triton_nhwc": Case(_pool(OpType.MAX_POOL, PoolAttrs((3, 3), (2, 2), (0, 0, 1, 1), (1, 1), True)),
                                "triton_nhwc", PLANES, channels_last=True),
    "avgpool_native_nchw": Case(_avg((3, 3), (1, 1), (1, 1, 1, 1), False, True), "aten", PLANES, cpu=True),
    "avgpool_native_nhwc": Case(_avg((3, 3), (2, 2), (1, 1, 1, 1), True, False), "aten", PLANES, cpu=True,
                                channels_last=True),
    "avgpool_exclude_asym_nhwc": Case(_avg((3, 3), (2, 2), (0, 0, 2, 2), False, False), "aten", PLANES,
                                      cpu=True, channels_last=True),
    "avgpool_include_asym_nchw": Case(_avg((2, 2), (2, 2), (1, 1, 0, 0), False, True), "aten", PLANES, cpu=True),
    "gap_nhwc": Case(_pool(OpType.GLOBAL_AVERAGE_POOL, None), "aten", PLANES, cpu=True, channels_last=True),
    "elementwise_triton": Case(lambda: _fused([S(OpType.ADD, (0, 1)), S(OpType.RELU, (2,))],
                                              [(2, 8, 5, 6), (8, 1, 1)]), "triton", PLANES),
    "elementwise_triton_nhwc": Case(lambda: _fused([S(OpType.MUL, (0, 1)), S(OpType.TANH, (2,))],
                                                   [(2, 8, 5, 6), (1, 8, 1, 1)]), "triton", PLANES,
                                    channels_last=True),
}


def _compile(case: Case, device: torch.device, precision: str):
    g = case.graph()
    node = g.nodes[0]
    backend = CUDABackend()
    if case.tactic not in backend.tactics(node, g):
        pytest.skip(f"tactic {case.tactic} does not apply here (Triton missing?)")
    consts = {k: torch.from_numpy(v).to(device) for k, v in g.constants.items()}
    kernel = backend.compile_node(node, CompileContext(g, consts, device, case.tactic, precision))
    args = []
    for name in node.inputs:
        if name in consts:
            args.append(consts[name])
            continue
        t = torch.from_numpy(_rand(*g.types[name].shape, scale=1.0)).to(device)
        if case.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        args.append(t)
    return kernel, args


def _at_odd_offset(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): ``like``'s shape and strides at ``ODD_OFFSET_BYTES`` into a NaN buffer."""
    off = ODD_OFFSET_BYTES // like.element_size()
    extent = 1 + sum((n - 1) * s for n, s in zip(like.shape, like.stride()))
    buf = torch.full((2 * off + extent,), NAN, dtype=like.dtype, device=like.device)
    return buf, buf.as_strided(like.shape, like.stride(), off)


def _slice_of_concat(like: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): ``like``'s place in a NaN Concat buffer 3 wider along ``axis``, in its format."""
    shape = list(like.shape)
    shape[axis] += 3
    fmt = torch.channels_last if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) \
        and not like.is_contiguous() else torch.contiguous_format
    buf = torch.full(shape, NAN, dtype=like.dtype, device=like.device).contiguous(memory_format=fmt)
    return buf, buf.narrow(axis, 2, like.shape[axis])


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def _written_and_alone(kernel, args, ref, buf, out, exact: bool, tol: float) -> None:
    """``out`` takes the result; every other element of ``buf`` stays NaN."""
    assert kernel.write_into.accepts(_meta(out))
    with torch.inference_mode():
        assert kernel.write_into(args, out) is True
    if exact:
        assert torch.equal(out, ref), (out - ref).abs().max()
    else:
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    rest = buf.clone()
    rest.as_strided(out.shape, out.stride(), out.storage_offset()).fill_(NAN)
    assert rest.isnan().all(), "wrote outside its view"


def _check(name: str, device: torch.device, precision: str) -> None:
    case = CASES[name]
    kernel, args = _compile(case, device, precision)
    write = write_into_of(kernel)
    assert write is not None, f"{name}: no write_into"
    with torch.inference_mode():
        ref = kernel(args)[0].clone()
    tol = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1.6e-2}[precision]
    buf, out = _at_odd_offset(ref)
    _written_and_alone(kernel, args, ref, buf, out, case.exact, tol)
    for axis, written in case.slices:
        buf, out = _slice_of_concat(ref, axis)
        if written:
            _written_and_alone(kernel, args, ref, buf, out, case.exact, tol)
        else:
            assert not write.accepts(_meta(out)), f"{name}: accepts a slice along {axis}, {out.stride()}"
            assert write(args, out) is False and buf.isnan().all()
    # a wrong dtype, and strides it cannot write: refused beforehand, and nothing written
    other = torch.float64
    assert not write.accepts(torch.empty(ref.shape, dtype=other, device="meta"))
    wrong = torch.full(ref.shape, NAN, dtype=other, device=device)
    assert write(args, wrong) is False and wrong.isnan().all()
    bad = _bad_layout(ref)
    assert not write.accepts(_meta(bad)), f"{name}: accepts strides {bad.stride()}"
    assert write(args, bad) is False and bad.isnan().all()


def _bad_layout(ref: torch.Tensor) -> torch.Tensor:
    """A NaN tensor of ``ref``'s shape and dtype no kernel here writes: every other element of a
    buffer twice as long along the last axis (no packed layout, no row-major matrix either)."""
    shape = list(ref.shape)
    shape[-1] *= 2
    return torch.full(shape, NAN, dtype=ref.dtype, device=ref.device)[..., ::2]


CPU_CASES = sorted(n for n, c in CASES.items() if c.cpu)


@pytest.mark.parametrize("name", CPU_CASES)
def test_write_into_on_cpu_tensors(name):
    _check(name, torch.device("cpu"), "fp32")


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_write_into_on_gpu(name, precision):
    if name == "log_softmax_aten" and precision != "fp32":
        pytest.skip("LogSoftmax writes into out in fp32 only (see the next test)")
    _check(name, torch.device("cuda"), precision)


def test_log_softmax_in_half_offers_no_write_into():
    """fp16 LogSoftmax computes in fp32 and casts: no out= kernel writes that result."""
    kernel, _ = _compile(CASES["log_softmax_aten"], torch.device("cpu"), "fp16")
    assert write_into_of(kernel) is None


def test_linear_declines_an_input_f_linear_would_run_as_bmm():
    """A non-contiguous 3-D input: ``F.linear`` runs ``bmm`` (+ add), not one ``addmm``; the write
    declines (nothing written) instead of computing differently."""
    kernel, _ = _compile(CASES["fused_gemm_relu_cublas"], torch.device("cpu"), "fp32")
    x = torch.from_numpy(_rand(3, 32, 7)).transpose(1, 2)
    out = torch.full((3, 7, 24), NAN)
    assert kernel.write_into([x, None, None], out) is False and out.isnan().all()
    assert kernel.write_into([x.contiguous(), None, None], out) is True
    torch.testing.assert_close(out, kernel([x, None, None])[0])


def test_out_checks_work_on_meta_tensors():
    from ember.backends.cuda.kernels.gemm import _out_matrix
    from ember.backends.cuda.libs.triton_ops import fits
    from ember.backends.layout import dense

    m = torch.empty(4, 5, 20, device="meta")
    assert _out_matrix(m, 20) is not None and _out_matrix(m[..., 2:9], 7) is not None
    assert _out_matrix(m[:, ::2], 20) is None  # leading dims do not collapse into one stride
    assert _out_matrix(m.transpose(1, 2), 4) is None and _out_matrix(m[..., ::2], 10) is None
    cl = torch.empty(2, 8, 5, 6, device="meta").contiguous(memory_format=torch.channels_last)
    assert dense(cl) and dense(cl.permute(3, 1, 0, 2)) and not dense(cl[:, :4]) and not dense(m[..., ::2])
    assert fits(cl, (2, 8, 5, 6), torch.float32, torch.channels_last) and not fits(cl, (2, 8, 5, 6), torch.float32)
    assert not fits(m, (4, 5, 20), torch.float16)

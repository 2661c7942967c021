"""Every CUDA tactic of every op family against the CPU backend's generic kernel (the reference).

Tactics that need no CUDA (cuDNN/cuBLAS-style calls work on CPU tensors too) also run on the CPU
in fp32, so CI checks their padding, pooling, slicing and epilogue logic; the rest, and every
half-precision case, run on the GPU (``-m cuda``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.backends.base import CompileContext
from ember.backends.cpu import evaluate
from ember.backends.cuda import CUDABackend
from ember.backends.tensors import max_relative_error as relative_error
from ember.errors import BuildError
from ember.ir import OpType
from ember.ops.attrs import (
    Activation,
    AutoPad,
    BatchNormAttrs,
    ConvAttrs,
    FusedAttentionAttrs,
    FusedConvAttrs,
    FusedGemmAttrs,
    GemmAttrs,
    LayerNormAttrs,
    LRNAttrs,
    PoolAttrs,
    ReduceAttrs,
    SliceAttrs,
    SoftmaxAttrs,
)

from cuda_graphs import conv_attrs, one_node, rand

CUDA_ONLY = {"cudnn_fused", "cudnn_fused_cpad8", "cudnn_graph", "cudnn_graph_cpad8", "cudnn_triton",
             "cublaslt_epilogue", "cublas_triton", "triton", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn",
             "sdpa_cudnn_graph"}
HALF_ONLY = ("cudnn_graph", "sdpa_cudnn_graph")  # half-precision tactics (the tuner rejects the rest)
TOL = {"fp32": 2e-5, "tf32": 5e-3, "fp16": 1e-2, "bf16": 4e-2}


def _fconv(act=Activation.RELU, res=False, params=(), k=3, stride=1, pad=None, group=1, cin=8, cout=16):
    ins = [("x", (2, cin, 9, 9)), ("w", rand(cout, cin // group, k, k, scale=0.3)), ("b", rand(cout))]
    if res:
        pb, pe = (k // 2, k // 2) if pad is None else (pad[0], pad[2])
        ho = (9 + pb + pe - k) // stride + 1
        ins.append(("r", (2, cout, ho, ho)))
    return one_node(OpType.FUSED_CONV, FusedConvAttrs(conv_attrs(k, stride, pad, group), act, params, res), ins)


CASES = {
    "conv_relu": lambda: _fconv(),
    "conv_rgb_stem": lambda: _fconv(k=7, stride=2, cin=3, cout=16),
    "conv_1x1_relu": lambda: _fconv(k=1, pad=(0, 0, 0, 0)),
    "conv_1x1_add_relu": lambda: _fconv(k=1, res=True, pad=(0, 0, 0, 0)),
    "conv_add_relu": lambda: _fconv(res=True),
    "conv_relu6": lambda: _fconv(Activation.CLIP, params=(0.0, 6.0)),
    "conv_linear_residual": lambda: _fconv(Activation.NONE, res=True, k=1),
    "conv_depthwise_relu6": lambda: _fconv(Activation.CLIP, params=(0.0, 6.0), group=8, cin=8, cout=8),
    "conv_stride2_asym_pads": lambda: _fconv(Activation.SILU, stride=2, pad=(0, 0, 1, 1)),
    "conv_plain_same_upper": lambda: one_node(
        OpType.CONV, ConvAttrs((3, 3), (2, 2), (), (1, 1), 1, AutoPad.SAME_UPPER),
        [("x", (1, 4, 8, 8)), ("w", rand(6, 4, 3, 3)), ("b", rand(6))]),
    "batchnorm": lambda: one_node(OpType.BATCH_NORM, BatchNormAttrs(1e-5), [
        ("x", (2, 5, 4, 4)), ("g", rand(5)), ("be", rand(5)), ("m", rand(5)),
        ("v", np.abs(rand(5)) + 0.5)]),
    "gemm_bias": lambda: one_node(OpType.GEMM, GemmAttrs(alpha=0.5, beta=2.0, trans_b=True),
                                  [("a", (4, 32)), ("b", rand(24, 32)), ("c", rand(24))]),
    "gemm_runtime_b": lambda: one_node(OpType.GEMM, GemmAttrs(trans_a=True),
                                       [("a", (32, 4)), ("b", (32, 24))]),
    "fused_gemm_relu": lambda: one_node(OpType.FUSED_GEMM, FusedGemmAttrs(GemmAttrs(), Activation.RELU),
                                        [("a", (3, 7, 32)), ("b", rand(32, 24)), ("c", rand(24))]),
    "fused_gemm_gelu": lambda: one_node(OpType.FUSED_GEMM, FusedGemmAttrs(GemmAttrs(), Activation.GELU_ERF),
                                        [("a", (3, 7, 32)), ("b", rand(32, 24)), ("c", rand(24))]),
    "matmul_const": lambda: one_node(OpType.MATMUL, None, [("a", (2, 5, 16)), ("b", rand(16, 8))]),
    "matmul_batched": lambda: one_node(OpType.MATMUL, None, [("a", (2, 3, 5, 16)), ("b", (2, 3, 16, 4))]),
    "attention_mask": lambda: one_node(OpType.FUSED_ATTENTION, FusedAttentionAttrs(0.125), [
        ("q", (2, 4, 16, 64)), ("k", (2, 4, 16, 64)), ("v", (2, 4, 16, 64)), ("m", (2, 1, 1, 16))]),
    "attention_kt": lambda: one_node(OpType.FUSED_ATTENTION, FusedAttentionAttrs(0.125, True), [
        ("q", (2, 4, 16, 64)), ("k", (2, 4, 64, 16)), ("v", (2, 4, 16, 64))]),
    "layernorm": lambda: one_node(OpType.LAYER_NORM, LayerNormAttrs(-1, 1e-5),
                                  [("x", (2, 7, 96)), ("w", rand(96)), ("b", rand(96))]),
    "layernorm_axis1": lambda: one_node(OpType.LAYER_NORM, LayerNormAttrs(1, 1e-5),
                                        [("x", (2, 3, 8)), ("w", rand(3, 8)), ("b", rand(3, 8))]),
    "skip_layernorm": lambda: one_node(OpType.SKIP_LAYER_NORM, LayerNormAttrs(-1, 1e-5),
                                       [("x", (2, 7, 96)), ("r", (2, 7, 96)), ("w", rand(96)), ("b", rand(96))]),
    "skip_layernorm_odd_rows": lambda: one_node(OpType.SKIP_LAYER_NORM, LayerNormAttrs(-1, 1e-5),
                                                [("x", (5, 3, 40)), ("r", (5, 3, 40)), ("s", rand(40))]),
    "skip_layernorm_axis1": lambda: one_node(OpType.SKIP_LAYER_NORM, LayerNormAttrs(1, 1e-5),
                                             [("x", (2, 3, 8)), ("r", (2, 3, 8)), ("w", rand(3, 8))]),
    "softmax": lambda: one_node(OpType.SOFTMAX, SoftmaxAttrs(-1), [("x", (3, 5, 77))]),
    "softmax_legacy": lambda: one_node(OpType.SOFTMAX, SoftmaxAttrs(1, True), [("x", (3, 5, 7))]),
    "log_softmax": lambda: one_node(OpType.LOG_SOFTMAX, SoftmaxAttrs(-1), [("x", (3, 50))]),
    "lrn": lambda: one_node(OpType.LRN, LRNAttrs(5, 1e-2, 0.75, 2.0), [("x", (2, 12, 5, 5))]),
    "lrn_even": lambda: one_node(OpType.LRN, LRNAttrs(4, 1e-2, 0.75, 1.0), [("x", (2, 9, 3, 3))]),
    "maxpool_ceil": lambda: one_node(OpType.MAX_POOL, PoolAttrs((3, 3), (2, 2), (0, 0, 0, 0), (1, 1), True),
                                     [("x", (2, 4, 10, 10))]),
    "maxpool_asym": lambda: one_node(OpType.MAX_POOL, PoolAttrs((3, 3), (2, 2), (0, 0, 2, 2), (1, 1)),
                                     [("x", (2, 4, 9, 9))]),
    "avgpool_exclude_asym": lambda: one_node(
        OpType.AVERAGE_POOL, PoolAttrs((3, 3), (2, 2), (1, 1, 2, 2), (1, 1), False, False),
        [("x", (2, 4, 9, 9))]),
    "avgpool_1d_exclude_asym": lambda: one_node(  # 1-D: avg_pool1d has no divisor_override
        OpType.AVERAGE_POOL, PoolAttrs((3,), (2,), (1, 2), (1,), False, False), [("x", (2, 4, 9))]),
    "avgpool_include": lambda: one_node(
        OpType.AVERAGE_POOL, PoolAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), False, True),
        [("x", (2, 4, 6, 6))]),
    "gap": lambda: one_node(OpType.GLOBAL_AVERAGE_POOL, None, [("x", (2, 4, 6, 6))]),
    "slice_neg_step": lambda: one_node(OpType.SLICE, SliceAttrs((-1, 1), (-9, 7), (1, 2), (-2, 3)),
                                       [("x", (2, 8, 9))]),
    "reduce_mean": lambda: one_node(OpType.REDUCE_MEAN, ReduceAttrs((1, -1), True), [("x", (2, 8, 9))]),
    "reduce_sum_all": lambda: one_node(OpType.REDUCE_SUM, ReduceAttrs(None, False), [("x", (2, 8, 9))]),
    "add_generic": lambda: one_node(OpType.ADD, None, [("x", (2, 8)), ("y", rand(8))]),
}


def _inputs(g, seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for name in g.nodes[0].inputs:
        if not name:
            out.append(None)
        elif name in g.constants:
            out.append(g.constants[name])
        else:
            out.append(rng.standard_normal(tuple(g.types[name].shape)).astype(np.float32))
    return out


def _check_case(case: str, device: torch.device, precision: str) -> list[str]:
    g = CASES[case]()
    node = g.nodes[0]
    arrays = _inputs(g)
    ref = evaluate(node, arrays, g)
    backend = CUDABackend()
    consts = {k: torch.from_numpy(v).to(device) for k, v in g.constants.items()}
    tried = []
    for tactic in backend.tactics(node, g):
        if device.type == "cpu" and tactic in CUDA_ONLY:
            continue
        if tactic.startswith(HALF_ONLY) and precision not in ("fp16", "bf16"):
            continue
        kernel = backend.compile_node(node, CompileContext(g, consts, device, tactic, precision))
        args = [None if a is None else (consts[n] if n in consts else torch.from_numpy(a).to(device))
                for n, a in zip(node.inputs, arrays)]
        try:
            with torch.inference_mode():
                outs = kernel(args)
        except (RuntimeError, BuildError) as e:
            # an SDPA backend that does not take this dtype/mask, or a geometry cuDNN's graph API
            # has no engine for: the tuner never picks it
            if tactic.startswith("sdpa_") and "No available kernel" in str(e):
                continue
            if tactic.startswith(HALF_ONLY) and "cuDNN" in str(e):
                continue
            raise
        for o, r in zip(outs, ref):
            err = relative_error(o.float().cpu(), torch.from_numpy(r).float())
            assert err <= TOL[precision], f"{case} tactic {tactic} {precision}: rel err {err:.2e}"
        tried.append(tactic)
    return tried


@pytest.mark.parametrize("case", sorted(CASES))
def test_tactics_on_cpu_tensors_match_reference(case):
    tried = _check_case(case, torch.device("cpu"), "fp32")
    if case.startswith(("conv", "gemm", "matmul", "fused_gemm")):
        assert tried, f"no CPU-runnable tactic was tested for {case}"


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_tactic_on_gpu_matches_reference(case, precision):
    tried = _check_case(case, torch.device("cuda"), precision)
    assert tried


@pytest.mark.cuda
def test_conv_tactics_include_fused_and_triton_on_gpu():
    g = _fconv(Activation.CLIP, params=(0.0, 6.0))
    assert "cudnn_triton" in CUDABackend().tactics(g.nodes[0], g)
    g = _fconv(res=True)
    assert CUDABackend().tactics(g.nodes[0], g)[0] == "cudnn_fused"


def test_every_op_has_a_cuda_kernel():
    from ember.backends.cpu.registry import kernel_ops
    from ember.ir.graph import Node

    backend = CUDABackend()
    missing = [op for op in kernel_ops() if not backend.supports(Node("n", op, ("x",), ("y",)))]
    assert not missing


def test_unknown_tactic_names_the_layer():
    from ember.errors import BuildError

    g = CASES["softmax"]()
    ctx = CompileContext(g, {}, torch.device("cpu"), "no_such_tactic", "fp32")
    with pytest.raises(BuildError, match="layer.*no_such_tactic|no_such_tactic"):
        CUDABackend().compile_node(g.nodes[0], ctx)


def _compiled_on_gpu(case: str, tactic: str):
    """(fp16 kernel of ``tactic`` for ``CASES[case]``, its GPU arguments, the CPU reference)."""
    g = CASES[case]()
    node = g.nodes[0]
    assert tactic in CUDABackend().tactics(node, g)
    dev = torch.device("cuda")
    consts = {k: torch.from_numpy(v).to(dev) for k, v in g.constants.items()}
    kernel = CUDABackend().compile_node(node, CompileContext(g, consts, dev, tactic, "fp16"))
    arrays = _inputs(g)
    args = [None if a is None else (consts[n] if n in consts else torch.from_numpy(a).to(dev))
            for n, a in zip(node.inputs, arrays)]
    return kernel, args, torch.from_numpy(evaluate(node, arrays, g)[0])


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["conv_relu", "conv_add_relu", "conv_1x1_add_relu", "conv_relu6",
                                  "conv_rgb_stem"])
def test_cudnn_graph_writes_into_an_arena_place_and_a_concat_slice(case):
    """The cuDNN-graph conv writes its result at any address it is given: a packed place at an
    odd (64-byte aligned) offset of a big buffer, and a strided channel slice."""
    from ember.backends.base import write_into_of
    from ember.backends.cuda.libs import cudnn_graph

    if not cudnn_graph.available():
        pytest.skip("nvidia-cudnn-frontend is not installed")
    tactic = "cudnn_graph_cpad8" if case == "conv_rgb_stem" else "cudnn_graph"
    kernel, args, ref = _compiled_on_gpu(case, tactic)
    dev = torch.device("cuda")
    with torch.inference_mode():
        y = kernel(args)[0]
        w = write_into_of(kernel)
        arena = torch.full((y.numel() * 2 + 4096,), 7, dtype=torch.uint8, device=dev)
        place = arena[192:192 + y.numel() * 2].view(torch.float16).as_strided(y.shape, y.stride())
        assert w.accepts(place) and w(args, place)
        n, c, h, wd = y.shape
        buf = torch.empty((n, c + 8, h, wd), dtype=torch.float16, device=dev,
                          memory_format=torch.channels_last).zero_()
        sl = buf.narrow(1, 8, c)
        assert w.accepts(sl) and w(args, sl)
        assert not w.accepts(place.float())
    for out in (y, place, sl):
        assert relative_error(out.float().cpu(), ref) <= TOL["fp16"]
    assert torch.count_nonzero(buf[:, :8]) == 0  # nothing written outside the slice
    assert torch.all(arena[:192] == 7) and torch.all(arena[192 + y.numel() * 2:] == 7)


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["attention_mask", "attention_kt"])
def test_cudnn_graph_attention_writes_heads_interleaved(case):
    """cuDNN's attention through the frontend writes ``[b, h, s, d]`` into any place with the
    head dim packed: here a view whose memory order is ``[b, s, h, d]`` (what the projection
    after attention reads), in the middle of a larger buffer."""
    from ember.backends.base import write_into_of
    from ember.backends.cuda.libs import cudnn_graph

    if not cudnn_graph.available():
        pytest.skip("nvidia-cudnn-frontend is not installed")
    kernel, args, ref = _compiled_on_gpu(case, "sdpa_cudnn_graph")
    dev = torch.device("cuda")
    with torch.inference_mode():
        y = kernel(args)[0]
        b, h, s, d = y.shape
        buf = torch.full((b * h * s * d + 512,), float("nan"), dtype=torch.float16, device=dev)
        place = buf[256:256 + b * h * s * d].view(b, s, h, d).permute(0, 2, 1, 3)
        w = write_into_of(kernel)
        assert w.accepts(place) and w(args, place)
        assert not w.accepts(place.transpose(-1, -2))
    for out in (y, place):
        assert relative_error(out.float().cpu(), ref) <= TOL["fp16"]
    assert torch.isnan(buf[:256]).all() and torch.isnan(buf[256 + b * h * s * d:]).all()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_generic_kernel_keeps_everything_on_the_datas_device(case):
    """The CPU backend's generic kernel runs on the GPU as CUDA's ``generic`` / ``aten`` tactic:
    every tensor it makes must be on its inputs' device. Checked on PyTorch's ``meta`` device,
    which refuses a CPU tensor beside its own as CUDA does (the GPU run found slices with a
    negative step and padded average pooling making their index and divisor on the CPU)."""
    g = CASES[case]()
    node = g.nodes[0]
    backend = CUDABackend()
    names = backend.tactics(node, g)
    if "generic" not in names and names != ["aten"]:
        pytest.skip(f"{case}: no generic tactic")
    meta = torch.device("meta")
    consts = {k: torch.from_numpy(v).to(meta) for k, v in g.constants.items()}
    kernel = backend.compile_node(node, CompileContext(g, consts, meta, "generic" if "generic" in names else "aten",
                                                       "fp32"))
    args = [None if a is None else (consts[n] if n in consts else torch.from_numpy(a).to(meta))
            for n, a in zip(node.inputs, _inputs(g))]
    try:
        with torch.inference_mode():
            outs = kernel(args)
    except (RuntimeError, NotImplementedError) as e:
        assert "device" not in str(e), f"{case}: {e}"
        pytest.skip(f"{case}: reads data, which the meta device has not ({str(e)[:80]})")
    assert all(o is None or o.device == meta for o in outs)

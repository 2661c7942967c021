"""Ember's Triton GEMM with the epilogue fused (``libs.triton_gemm``) and the FusedGemm tactics on
it (``kernels.gemm``'s ``triton_gemm_*``): the product, bias and every activation cuBLASLt cannot
fuse, through strided output rows, against PyTorch in fp32. Under Triton's interpreter on the CPU
(a subprocess: the interpreter is chosen when the kernel is defined), and on a GPU."""
from __future__ import annotations

import pytest
import torch
from tritonkit import run_triton_check

from ember.backends.cuda import CUDABackend
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs

_CHECK = r"""
import sys
import numpy as np
import torch
import torch.nn.functional as F
from ember.backends.base import CompileContext
from ember.backends.cuda.kernels.gemm import _triton_gemm_factory
from ember.backends.cuda.libs import triton_gemm as G
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import Records

dev = torch.device(sys.argv[1])
torch.manual_seed(0)
REF = {Activation.NONE: lambda y: y, Activation.GELU_ERF: F.gelu, Activation.SILU: F.silu,
       Activation.SIGMOID: torch.sigmoid, Activation.CLIP: lambda y: y.clamp(-0.5, 0.5),
       Activation.GELU_TANH: lambda y: F.gelu(y, approximate="tanh")}
for m, k, n in [(37, 96, 40), (130, 64, 200)]:
    x = torch.randn(m, k, device=dev).half()
    w = (torch.randn(n, k, device=dev) / k ** 0.5).half()
    b = torch.randn(n, device=dev).half()
    for act, fn in REF.items():
        params = (-0.5, 0.5) if act is Activation.CLIP else ()
        ref = fn(F.linear(x.float(), w.float(), b.float()))
        for cfg in G.CONFIGS:
            y = G.linear(x, w, b, act=act, act_params=params, config=cfg)
            err = float((y.float() - ref).abs().max())
            assert y.dtype == torch.float16 and err < 2e-2, (m, k, n, act, cfg, err)
    # through a strided output (a slice of a wider buffer), its neighbours untouched
    buf = torch.full((m, n + 7), 9.0, device=dev).half()
    G.linear(x, w, None, act=Activation.GELU_ERF, out=buf[:, 3:3 + n])
    assert float((buf[:, 3:3 + n].float() - F.gelu(F.linear(x.float(), w.float()))).abs().max()) < 2e-2
    assert bool((buf[:, :3] == 9).all()) and bool((buf[:, 3 + n:] == 9).all())
# the layer: a 3-D input, weight transposed in the graph (trans_b=False: [K, N]), erf GELU
k, n = 64, 48
wk = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
bias = np.random.default_rng(2).standard_normal(n).astype(np.float32)
types = {"x": TensorType(DType.FLOAT32, (2, 5, k)), "w": TensorType(DType.FLOAT32, (k, n)),
         "b": TensorType(DType.FLOAT32, (n,)), "y": TensorType(DType.FLOAT32, (2, 5, n))}
node = Node("fc", OpType.FUSED_GEMM, ("x", "w", "b"), ("y",), FusedGemmAttrs(GemmAttrs(), Activation.GELU_ERF))
graph = Graph("g", [node], ["x"], ["y"], types, {"w": wk, "b": bias})
ctx = CompileContext(graph, {"w": torch.from_numpy(wk).to(dev), "b": torch.from_numpy(bias).to(dev)}, dev,
                     "triton_gemm", Precision.FP16, Records(), BuildConfig(device="cuda", precision="fp16"))
kernel = _triton_gemm_factory(G.CONFIGS[0])(node, ctx)
x = torch.randn(2, 5, k, device=dev)
y = kernel([x])[0]
ref = F.gelu(x.half().float() @ torch.from_numpy(wk).to(dev) + torch.from_numpy(bias).to(dev))
assert y.dtype == torch.float16 and tuple(y.shape) == (2, 5, n)
assert float((y.float() - ref).abs().max()) < 3e-2
# fp32 layers multiply in full precision, tf32 layers within TF32's rounding
ref32 = F.gelu(x @ torch.from_numpy(wk).to(dev) + torch.from_numpy(bias).to(dev))
for precision, tol in ((Precision.FP32, 1e-4), (Precision.TF32, 5e-2)):  # TF32: a 10-bit mantissa
    ctx32 = CompileContext(graph, ctx.constants, dev, "triton_gemm", precision, Records(),
                           BuildConfig(device="cuda", precision=precision.value))
    y32 = _triton_gemm_factory(G.CONFIGS[2])(node, ctx32)([x])[0]
    err = float((y32 - ref32).abs().max())
    assert y32.dtype == torch.float32 and err < tol, (precision, err)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU variant runs instead")
def test_the_fused_gemm_under_tritons_interpreter():
    run_triton_check(_CHECK, "cpu")


@pytest.mark.cuda
def test_the_fused_gemm_on_the_gpu():
    run_triton_check(_CHECK, "cuda")


def _node(act: Activation, trans_a: bool = False) -> tuple[Graph, Node]:
    import numpy as np

    w = np.zeros((64, 48), np.float32)
    types = {"x": TensorType(DType.FLOAT32, (8, 64)), "w": TensorType(DType.FLOAT32, (64, 48)),
             "y": TensorType(DType.FLOAT32, (8, 48))}
    node = Node("fc", OpType.FUSED_GEMM, ("x", "w"), ("y",), FusedGemmAttrs(GemmAttrs(trans_a=trans_a), act))
    return Graph("g", [node], ["x"], ["y"], types, {"w": w}), node


@pytest.mark.parametrize("act,offered", [(Activation.GELU_ERF, True), (Activation.SILU, True),
                                         (Activation.RELU, False), (Activation.GELU_TANH, False),
                                         (Activation.NONE, False)])
def test_offered_only_where_cublaslt_cannot_fuse_the_activation(act, offered, monkeypatch):
    """erf GELU / SiLU: cuBLAS would need a second pass; ReLU and tanh-GELU have cuBLASLt's epilogue."""
    import ember.backends.cuda.device as device

    monkeypatch.setattr(device, "triton_available", lambda: True)  # as on a GPU machine with Triton
    graph, node = _node(act)
    names = CUDABackend().tactics(node, graph)
    assert any(t.startswith("triton_gemm_") for t in names) is offered
    graph_t, node_t = _node(act, trans_a=True)
    assert not any(t.startswith("triton_gemm_") for t in CUDABackend().tactics(node_t, graph_t))

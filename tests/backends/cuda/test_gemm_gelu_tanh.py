"""The ``cublaslt_gelu_tanh`` tactic: an fp16/bf16 erf-GELU FusedGemm through cuBLASLt's
tanh-GELU epilogue (one kernel instead of a GEMM and a GELU pass). Offered to half-precision
layers with a bias only; its error against erf GELU is bounded by ``GELU_TANH_MAX_ERROR``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext
from ember.backends.cuda import CUDABackend
from ember.backends.cuda.kernels.gemm import GELU_TANH_MAX_ERROR
from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ir.types import TensorType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import PrecisionPlan, Records

TACTIC = "cublaslt_gelu_tanh"


def _layer(act: Activation = Activation.GELU_ERF, bias: bool = True) -> tuple[Graph, Node]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    consts = {"w": w} | ({"b": rng.standard_normal(96).astype(np.float32)} if bias else {})
    types = {"x": TensorType(DType.FLOAT32, (4, 64)), "w": TensorType(DType.FLOAT32, (64, 96)),
             "b": TensorType(DType.FLOAT32, (96,)), "y": TensorType(DType.FLOAT32, (4, 96))}
    node = Node("fc", OpType.FUSED_GEMM, ("x", "w", "b") if bias else ("x", "w"), ("y",),
                FusedGemmAttrs(GemmAttrs(), act))
    return Graph("g", [node], ["x"], ["y"], types, consts), node


def _records(precision: Precision) -> Records:
    return Records(precision=PrecisionPlan({"fc": precision}))


@pytest.mark.parametrize("precision,act,bias,offered", [
    (Precision.FP16, Activation.GELU_ERF, True, True),
    (Precision.BF16, Activation.GELU_ERF, True, True),
    (Precision.FP32, Activation.GELU_ERF, True, False),   # fp32 layers keep erf
    (Precision.TF32, Activation.GELU_ERF, True, False),
    (Precision.FP16, Activation.GELU_ERF, False, False),  # cuBLASLt's GELU epilogue takes a bias
    (Precision.FP16, Activation.SILU, True, False),
    (Precision.FP16, Activation.GELU_TANH, True, False),  # cublaslt_epilogue has it already
])
def test_offered_to_half_precision_erf_gelu_layers_only(precision, act, bias, offered):
    graph, node = _layer(act, bias)
    names = CUDABackend().tactics(node, graph, _records(precision))
    assert (TACTIC in names) is offered, names
    if offered:  # never the default: only the tactic timer picks it, on its speed
        assert names[0] != TACTIC


def test_the_stated_bound_holds_over_all_inputs():
    x = torch.linspace(-12, 12, 2_400_001, dtype=torch.float64)
    diff = (F.gelu(x) - F.gelu(x, approximate="tanh")).abs()
    assert 4.6e-4 < float(diff.max()) <= GELU_TANH_MAX_ERROR


def _kernel_output(device: str, dtype: torch.dtype, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    graph, node = _layer()
    consts = {k: torch.from_numpy(v).to(device) for k, v in graph.constants.items()}
    ctx = CompileContext(graph, consts, torch.device(device), TACTIC, precision, _records(precision),
                         BuildConfig(device="cuda", precision=precision.value))
    kernel = CUDABackend().compile_node(node, ctx)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1)).to(device)
    x[1, 3] = float("nan")
    y = kernel([x])[0]
    w, b = consts["w"].double(), consts["b"].double()
    ref = F.gelu(x.to(dtype).double() @ w.to(dtype).double() + b.to(dtype).double())
    return y, ref


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda), "cpu"])
def test_the_layer_is_erf_gelu_within_the_bound_and_half_rounding(device):
    if device == "cpu":
        try:
            torch._addmm_activation(torch.zeros(2, dtype=torch.float16), torch.zeros(2, 2, dtype=torch.float16),
                                    torch.zeros(2, 2, dtype=torch.float16), use_gelu=True)
        except RuntimeError:
            pytest.skip("this PyTorch has no half-precision _addmm_activation on the CPU")
    y, ref = _kernel_output(device, torch.float16, Precision.FP16)
    assert y.dtype == torch.float16
    assert bool(y[1].isnan().all()) and not bool(y[0].isnan().any())  # NaN in, NaN out (its row)
    ok = ~ref.isnan()
    err = (y.double().cpu() - ref.cpu())[ok.cpu()].abs()
    # fp16 operands and output: the approximation's bound plus fp16 rounding of results up to ~4
    assert float(err.max()) <= GELU_TANH_MAX_ERROR + 4 * 2 ** -10, float(err.max())

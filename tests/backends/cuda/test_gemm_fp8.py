"""FP8 GEMM layers (``ember.backends.cuda.kernels.gemm_fp8``) and FP8 builds' precision plan,
checked on the CPU (PyTorch's ``_scaled_mm`` runs there too): the kernel against a float64
product of the same e4m3-rounded operands, the tactic's applicability, the input range a
calibration record stands for, the precision pass marking GEMMs FP8 and everything else fp16, and
the configuration (CUDA only). On a GPU: a calibrated FP8 build of a transformer layer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tritonkit import run_triton_check

import ember
from ember.backends.base import CompileContext
from ember.backends.cuda import CUDABackend
from ember.backends.cuda.kernels.gemm_fp8 import E4M3_MAX, input_amax
from ember.errors import BuildError
from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import Activation, FusedGemmAttrs, GemmAttrs
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import PrecisionPlan, QuantDType, QuantizationPlan, QuantRecord, Records

pytestmark = pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="this PyTorch has no _scaled_mm")


def _layer(k: int = 32, n: int = 48, act: Activation = Activation.RELU, trans_b: bool = False):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    types = {"x": TensorType(DType.FLOAT32, (2, 5, k)), "w": TensorType(DType.FLOAT32, w.shape),
             "b": TensorType(DType.FLOAT32, (n,)), "y": TensorType(DType.FLOAT32, (2, 5, n))}
    node = Node("fc", OpType.FUSED_GEMM, ("x", "w", "b"), ("y",),
                FusedGemmAttrs(GemmAttrs(trans_b=trans_b), act))
    return Graph("g", [node], ["x"], ["y"], types, {"w": w, "b": bias}), node


def _records(amax: float = 3.0, precision: Precision = Precision.FP8) -> Records:
    rec = QuantRecord("x", QuantDType.INT8, (amax / 127,), (0,), None, "calibration:minmax")
    return Records(precision=PrecisionPlan({"fc": precision}), quantization=QuantizationPlan({"x": rec}))


def _ctx(graph: Graph, records: Records) -> CompileContext:
    consts = {k: torch.from_numpy(v) for k, v in graph.constants.items()}
    return CompileContext(graph, consts, torch.device("cpu"), "cublaslt_fp8", Precision.FP8, records,
                          BuildConfig(device="cuda", precision="fp8"))


def _e4m3(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float64)


@pytest.mark.parametrize("trans_b", [False, True])
def test_the_fp8_gemm_is_the_product_of_e4m3_operands_with_the_epilogue(trans_b):
    graph, node = _layer(trans_b=trans_b)
    kernel = CUDABackend().compile_node(node, _ctx(graph, _records()))
    x = torch.randn(2, 5, 32) * 2
    x[0, 0, 0] = 50.0  # beyond the calibrated range (3.0): saturates
    y = kernel([x])[0]
    assert y.dtype == torch.float16 and tuple(y.shape) == (2, 5, 48)
    w = torch.from_numpy(graph.constants["w"]).double()
    w = w if not trans_b else w.t()  # [K, N]
    sw, sx = float(w.abs().max()) / E4M3_MAX, 3.0 / E4M3_MAX
    x16 = x.half().double()
    ref = (_e4m3(x16 / sx) * sx).reshape(-1, 32) @ (_e4m3(w / sw) * sw)
    ref = torch.relu(ref + torch.from_numpy(graph.constants["b"]).double()).reshape(2, 5, 48)
    err = (y.double() - ref).abs().max() / ref.abs().max()
    assert err < 2e-3, err  # fp16 output rounding and fp32 accumulation only
    full = torch.relu(x.double() @ w + torch.from_numpy(graph.constants["b"]).double())
    assert (y.double() - full).abs().max() / full.abs().max() > 1e-3  # the e4m3 rounding is real
    # written straight into a buffer (the arena's), ReLU applied there: the same values
    from ember.backends.base import write_into_of

    write = write_into_of(kernel)
    out = torch.full((2, 5, 48), 7.0, dtype=torch.float16)
    assert write is not None and write.accepts(out) and write([x], out)
    assert torch.equal(out, y)
    assert not write.accepts(torch.empty(2, 5, 96, dtype=torch.float16)[..., :48])  # strided: declined


def test_nan_in_is_nan_out():
    graph, node = _layer(act=Activation.NONE)
    kernel = CUDABackend().compile_node(node, _ctx(graph, _records()))
    x = torch.randn(2, 5, 32)
    x[1, 2, 3] = float("nan")
    y = kernel([x])[0]
    assert torch.isnan(y[1, 2]).all() and not torch.isnan(y[0]).any()


def test_the_tactic_applies_to_fp8_layers_with_a_range_and_aligned_sizes_only():
    backend = CUDABackend()
    graph, node = _layer()
    assert backend.tactics(node, graph, _records())[0] == "cublaslt_fp8"
    assert "cublaslt_fp8" not in backend.tactics(node, graph, _records(precision=Precision.FP16))
    assert "cublaslt_fp8" not in backend.tactics(node, graph, Records(precision=PrecisionPlan({"fc": Precision.FP8})))
    odd, odd_node = _layer(k=30)
    assert "cublaslt_fp8" not in backend.tactics(odd_node, odd, _records())


@pytest.mark.parametrize("rec,amax", [
    (QuantRecord("x", QuantDType.INT8, (0.5,), (0,)), 63.5),
    (QuantRecord("x", QuantDType.UINT8, (0.1,), (200,)), 20.0),
    (QuantRecord("x", QuantDType.FP8_E4M3, (0.01,), (0,)), 4.48),
])
def test_the_input_range_a_record_stands_for(rec, amax):
    assert input_amax(rec) == pytest.approx(amax)


def test_an_fp8_build_marks_its_gemms_fp8_and_the_rest_fp16():
    from ember.passes.manager import PassContext
    from ember.passes.precision import assign_precisions

    graph, node = _layer()
    soft = Node("sm", OpType.SOFTMAX, ("y",), ("z",), None)
    graph = Graph("g", [node, soft], ["x"], ["z"], {**graph.types, "z": TensorType(DType.FLOAT32, (2, 5, 48))},
                  graph.constants)
    ctx = PassContext(config=BuildConfig(device="cuda", precision="fp8"), records=Records())
    assign_precisions(graph, ctx)
    assert ctx.records.precision.of("fc", Precision.FP32) is Precision.FP8
    assert ctx.records.precision.of("sm", Precision.FP32) is Precision.FP16


def test_fp8_is_a_cuda_precision():
    assert BuildConfig(device="cuda", precision="fp8").precision is Precision.FP8
    with pytest.raises(BuildError, match="fp8 does not exist on cpu"):
        BuildConfig(device="cpu", precision="fp8")


@pytest.mark.cuda
def test_a_calibrated_fp8_transformer_layer_keeps_its_outputs():
    import io
    import warnings

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9+")

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)

        def forward(self, x):
            return self.layer(x, src_mask=None, is_causal=False)

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (torch.randn(4, 16, 64),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"])
    r = np.random.default_rng(1)
    calib = [{"x": r.normal(0, 1, (4, 16, 64)).astype(np.float32)} for _ in range(4)]
    fp32 = ember.build(buf.getvalue(), ember.BuildConfig(device="cuda"))
    fp8 = ember.build(buf.getvalue(), ember.BuildConfig(device="cuda", precision="fp8", calibrator="minmax"),
                      calibration_data=calib)
    from ember.backends.cuda.kernels.gemm_fp8 import FP8_TACTICS

    assert any(lay.tactic in FP8_TACTICS for lay in fp8.plan.layers), [lay.tactic for lay in fp8.plan.layers]
    feeds = {"x": r.normal(0, 1, (4, 16, 64)).astype(np.float32)}
    with fp32.create_context() as c1, fp8.create_context() as c2:
        a = np.asarray(c2.infer(feeds)["y"], np.float32).reshape(-1, 64)
        b = np.asarray(c1.infer(feeds)["y"], np.float32).reshape(-1, 64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.mean() >= 0.99, cos.mean()


# --- the input quantization kernel (libs.triton_fp8) --------------------------------------------

_QUANT_CHECK = r"""
import torch
from ember.backends.cuda.libs.triton_fp8 import quantize_e4m3, quantize_e4m3_torch
g = torch.Generator().manual_seed(0)
# values whose scaled form (x * 0.5) is an e4m3 number: the interpreter's own float8 rounding is
# not the GPU's (it misses carries into the next binade), so only the kernel's logic is compared
exact = torch.randint(0, 256, (3, 1000), generator=g, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
exact = torch.where(exact.isnan(), torch.zeros_like(exact), exact)
x = (exact * 2).to(torch.float16)
x.view(-1)[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4, -0.0, 0.0])
q = quantize_e4m3(x, 0.5)
r = quantize_e4m3_torch(x, 0.5)
assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape
a, b = q.float(), r.float()
assert bool(((a == b) | (a.isnan() & b.isnan())).all()), (a[a != b][:8], b[a != b][:8])
assert bool(a.view(-1)[0].isnan()) and a.view(-1)[1] == 448 and a.view(-1)[2] == -448 and a.view(-1)[3] == 448
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU variant runs instead")
def test_the_input_quantization_kernel_under_tritons_interpreter():
    run_triton_check(_QUANT_CHECK, "cpu", timeout=300)


@pytest.mark.cuda
def test_the_input_quantization_kernel_matches_torch_exactly_on_the_gpu():
    from ember.backends.cuda.libs.triton_fp8 import quantize_e4m3, quantize_e4m3_torch

    x = (torch.randn(7, 3001, device="cuda") * 40).half()
    x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e4], device="cuda").half()
    a, b = quantize_e4m3(x, 0.75).float(), quantize_e4m3_torch(x, 0.75).float()
    assert bool(((a == b) | (a.isnan() & b.isnan())).all())


_TRITON_FP8_CHECK = r"""
import sys
import torch
from test_gemm_fp8 import _layer, _records
from ember.backends.base import CompileContext, write_into_of
from ember.backends.cuda import CUDABackend
from ember.backends.cuda.kernels.gemm_fp8 import FP8_TACTICS, _triton_fp8_factory
from ember.backends.cuda.libs.triton_gemm import CONFIGS
from ember.ops.attrs import Activation
from ember.plan.config import BuildConfig, Precision

dev = torch.device(sys.argv[1])
backend = CUDABackend()
triton_names = [f"triton_fp8_{c.name}" for c in CONFIGS]
assert set(triton_names) < FP8_TACTICS
for act in (Activation.GELU_ERF, Activation.NONE):
    graph, node = _layer(k=64, n=48, act=act)
    names = backend.tactics(node, graph, _records())
    # offered where Triton compiles (a GPU), first cuBLASLt's
    assert names[0] == "cublaslt_fp8" and all((t in names) == (dev.type == "cuda") for t in triton_names), names
    consts = {k: torch.from_numpy(v).to(dev) for k, v in graph.constants.items()}

    def compiled(tactic):
        ctx = CompileContext(graph, consts, dev, tactic, Precision.FP8, _records(),
                             BuildConfig(device="cuda", precision="fp8"))
        if dev.type == "cpu" and tactic in triton_names:  # not offered without a GPU: the factory itself
            return _triton_fp8_factory(CONFIGS[triton_names.index(tactic)])(node, ctx)
        return backend.compile_node(node, ctx)

    x = torch.randn(2, 5, 64, device=dev) * 2
    x[0, 0, 0] = float("nan")
    ref = compiled("cublaslt_fp8")([x])[0]
    for name in triton_names:
        kernel = compiled(name)
        y = kernel([x])[0]
        assert y.dtype == torch.float16 and tuple(y.shape) == (2, 5, 48)
        if dev.type == "cuda":  # NaN in, NaN out: its row (the interpreter reads e4m3's NaN as a number)
            assert bool(y[0, 0].isnan().all()) and not bool(y[1].isnan().any())
        ok = ~ref.isnan() & ~y.isnan()
        err = float((y[ok].float() - ref[ok].float()).abs().max() / ref[ok].float().abs().max())
        assert err < 2e-3, (act, name, err)  # the same e4m3 operands; fp32 sums in another order
        out = torch.full((2, 5, 48), 7.0, dtype=torch.float16, device=dev)
        write = write_into_of(kernel)
        assert write is not None and write([x], out)
        assert torch.equal(out.isnan(), y.isnan()) and torch.equal(out.nan_to_num(), y.nan_to_num())
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU variant runs instead")
def test_the_triton_fp8_gemm_with_its_epilogue_under_tritons_interpreter():
    """The Triton FP8 tactics (e4m3 operands on ``tl.dot``, scales, bias and erf GELU in the
    epilogue) against cuBLASLt's FP8 GEMM (CPU ``_scaled_mm`` here) of the same operands."""
    run_triton_check(_TRITON_FP8_CHECK, "cpu")


@pytest.mark.cuda
def test_the_triton_fp8_gemm_with_its_epilogue_on_the_gpu():
    run_triton_check(_TRITON_FP8_CHECK, "cuda")

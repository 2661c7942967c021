"""FP8 (e4m3) GEMMs on Hopper's tensor cores: the layers an FP8 build marks (``precision="fp8"``,
``ember.passes.precision.FP8_OPS``) with a constant weight, through cuBLASLt's FP8 GEMM
(``torch._scaled_mm``, tactic ``cublaslt_fp8``) or a Triton FP8 GEMM with the scales, bias and
activation in its epilogue (``triton_fp8_*``: cuBLASLt's FP8 GEMM fuses no erf GELU, so BERT's
FFN-in layer would otherwise pay a second pass over its output).

Numbers, as TensorRT's FP8 and NVIDIA ModelOpt define them:

- **Weight:** quantized once, at compile time, per tensor: ``w8 = e4m3(w / sw)`` with ``sw =
  max|w| / 448`` (448: e4m3's largest finite value), stored ``[N, K]`` row-major, which is the
  column-major ``[K, N]`` operand cuBLASLt's FP8 GEMM takes.
- **Input:** quantized per run with the calibrated per-tensor scale of the layer's input, in one
  Triton pass (``libs.triton_fp8``): ``x8 = e4m3(clamp(x / sx, -448, 448))``, ``sx = amax /
  448``, ``amax`` the calibrated range (``QuantRecord``: an INT8 calibration's ``127 * scale``,
  or an FP8 record's ``448 * scale``).
  Values beyond the calibrated range saturate; NaN stays NaN (NaN in, NaN out).
- **Product and epilogue:** ``y = sx * sw * (x8 @ w8) + bias`` in fp32 inside the GEMM, written
  fp16 (the FP8 build's float type); the layer's activation after it (cuBLASLt) or in the same
  epilogue (Triton).

The tactic applies where cuBLASLt's FP8 GEMM does: K and N multiples of 16, no transposed input.
Layers it does not apply to run their fp16 tactics; the tactic timer may also pick an fp16 tactic
of an FP8 layer where it is faster (small GEMMs), which is only more accurate.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ember.backends.activations import activation_fn, inplace_activation
from ember.backends.base import CompileContext, Kernel, WriteInto, with_write_into
from ember.backends.cuda.device import cast_float, triton_available
from ember.backends.cuda.kernels.gemm import Linear, gemm_activation, gemm_attrs, linear_applies
from ember.backends.cuda.libs.triton_conv import TileConfig
from ember.backends.cuda.libs.triton_fp8 import E4M3_MAX, quantize_e4m3
from ember.backends.cuda.registry import register_cuda_kernel
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import Precision
from ember.plan.records import QuantDType, QuantRecord, Records

Tensor = torch.Tensor



def input_amax(rec: QuantRecord) -> float:
    """The calibrated ``max |x|`` a per-tensor record stands for: an INT8 symmetric record's
    ``127 * scale``, an asymmetric uint8 one's farther end, an FP8 one's ``448 * scale``."""
    s, zp = rec.scale[0], rec.zero_point[0]
    if rec.dtype is QuantDType.FP8_E4M3:
        return E4M3_MAX * s
    if rec.dtype is QuantDType.UINT8:
        return max(zp, 255 - zp) * s
    return max(128 + zp, 127 - zp) * s if zp else 127.0 * s


def input_scale(rec: QuantRecord) -> float:
    """The e4m3 scale ``sx = amax / 448`` of an input with calibrated record ``rec`` (1 for an
    all-zero range)."""
    x_amax = input_amax(rec)
    return x_amax / E4M3_MAX if x_amax > 0 else 1.0


def _fp8_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """An FP8 layer (the precision plan says so) with a constant 2-D weight, a calibrated
    per-tensor range for its input, K and N multiples of 16, and no transposed input."""
    if records is None or graph is None or not linear_applies(node, graph, records):
        return False
    if records.precision.of(node.name, Precision.FP32) is not Precision.FP8:
        return False
    rec = records.quantization.get(node.inputs[0])
    if rec is None or rec.per_channel:
        return False
    g = gemm_attrs(node)
    b = graph.constants[node.input(1)]
    n, k = (b.shape[0], b.shape[1]) if g.trans_b else (b.shape[1], b.shape[0])
    return not g.trans_a and k % 16 == 0 and n % 16 == 0


class Fp8Layer:
    """What every FP8 tactic of a layer shares: the weight quantized per tensor (``w8`` ``[N,
    K]``, scale ``sw``), the input's calibrated scale ``sx``, the fp16 bias, the activation."""

    def __init__(self, node: Node, ctx: CompileContext) -> None:
        rec = ctx.records.quantization.get(node.inputs[0]) if ctx.records is not None else None
        if rec is None:
            raise BuildError(f"node {node.name!r}: an FP8 layer needs the calibrated range of its input "
                             f"{node.inputs[0]!r}; build with calibration data or a calibration cache")
        lin = Linear(node, ctx, gemm_attrs(node), torch.float32)
        w = lin.weight  # [N, K], alpha folded in
        self.n, self.k = (int(d) for d in w.shape)
        w_amax = float(w.abs().max()) if w.numel() else 0.0
        self.sw = w_amax / E4M3_MAX if w_amax > 0 else 1.0
        self.w8 = (w / self.sw).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).contiguous()
        self.sx = input_scale(rec)
        self.inv_x = 1.0 / self.sx
        self.use_triton = triton_available()  # one pass over the input; else three PyTorch operations
        self.bias = lin.bias.to(torch.float16) if lin.bias is not None else None
        self.act, self.params = gemm_activation(node)

    def quantize(self, x: Tensor) -> Tensor:
        """The input as the ``[M, K]`` e4m3 matrix."""
        return quantize_e4m3(cast_float(x, torch.float16).reshape(-1, self.k), self.inv_x, self.use_triton)

    def accepts(self, out: Tensor) -> bool:
        return out.dtype == torch.float16 and out.is_contiguous() and out.dim() >= 1 and out.shape[-1] == self.n

    def fits(self, x: Optional[Tensor], out: Tensor) -> bool:
        return (x is not None and self.accepts(out) and out.device == x.device
                and tuple(out.shape) == (*x.shape[:-1], self.n))


def _with_write(layer: Fp8Layer, run: Kernel, product: Callable[[Tensor, Tensor], None]) -> Kernel:
    """``run`` with a ``write_into`` straight into a contiguous output (the arena's buffer):
    ``product(x, out2)`` writes the layer's output into ``out2`` (``[M, N]``)."""
    def write(inputs, out: Tensor) -> bool:
        x = inputs[0]
        if not layer.fits(x, out):
            return False
        product(x, out.view(-1, layer.n))
        return True

    return with_write_into(run, WriteInto(write, layer.accepts))


@register_cuda_kernel(OpType.GEMM, "cublaslt_fp8", rank=-10, when=_fp8_applies)
@register_cuda_kernel(OpType.MATMUL, "cublaslt_fp8", rank=-10, when=_fp8_applies)
@register_cuda_kernel(OpType.FUSED_GEMM, "cublaslt_fp8", rank=-10, when=_fp8_applies)
def linear_fp8(node: Node, ctx: CompileContext) -> Kernel:
    """The FP8 GEMM of an FP8 layer on cuBLASLt (module docstring); the activation after it."""
    layer = Fp8Layer(node, ctx)
    n = layer.n
    scale_x = torch.tensor(layer.sx, dtype=torch.float32, device=ctx.device)
    scale_w = torch.tensor(layer.sw, dtype=torch.float32, device=ctx.device)
    w8_t = layer.w8.t()  # [K, N] column-major
    act_fn = activation_fn(layer.act, layer.params)

    def run(inputs) -> list:
        x = inputs[0]
        y = torch._scaled_mm(layer.quantize(x), w8_t, scale_a=scale_x, scale_b=scale_w, bias=layer.bias,
                             out_dtype=torch.float16).reshape(*x.shape[:-1], n)
        return [act_fn(y) if act_fn is not None else y]

    in_place = inplace_activation(layer.act, layer.params)
    if in_place is None:
        return run

    def product(x: Tensor, out2: Tensor) -> None:
        torch._scaled_mm(layer.quantize(x), w8_t, scale_a=scale_x, scale_b=scale_w, bias=layer.bias,
                         out_dtype=torch.float16, out=out2)
        in_place(out2)

    return _with_write(layer, run, product)


def _triton_fp8_factory(config: TileConfig) -> Callable[[Node, CompileContext], Kernel]:
    def linear_triton_fp8(node: Node, ctx: CompileContext) -> Kernel:
        """The FP8 GEMM of an FP8 layer in Triton (``libs.triton_gemm`` on e4m3 operands) with the
        scales, bias and any activation (erf GELU, SiLU...) applied in its epilogue: one pass
        where cuBLASLt needs a second for the activation."""
        from ember.backends.cuda.libs.triton_gemm import linear

        layer = Fp8Layer(node, ctx)
        scale = layer.sx * layer.sw

        def product(x: Tensor, out2: Optional[Tensor] = None) -> Tensor:
            return linear(layer.quantize(x), layer.w8, layer.bias, act=layer.act, act_params=layer.params,
                          config=config, scale=scale, out=out2)

        def run(inputs) -> list:
            x = inputs[0]
            return [product(x).reshape(*x.shape[:-1], layer.n)]

        return _with_write(layer, run, product)

    return linear_triton_fp8


def _register_triton_fp8() -> tuple[str, ...]:
    from ember.backends.cuda.libs.triton_gemm import CONFIGS

    names = []
    for i, config in enumerate(CONFIGS):
        name = f"triton_fp8_{config.name}"
        for op in (OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM):
            register_cuda_kernel(op, name, rank=-9 + i, when=_fp8_applies, needs_triton=True)(
                _triton_fp8_factory(config))
        names.append(name)
    return tuple(names)


#: The tactics that compute an FP8 layer in FP8 (any other tactic of it computes fp16).
FP8_TACTICS = frozenset({"cublaslt_fp8", *_register_triton_fp8()})

__all__ = ["E4M3_MAX", "FP8_TACTICS", "Fp8Layer", "input_amax", "input_scale", "linear_fp8"]

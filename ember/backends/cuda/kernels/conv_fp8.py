"""FP8 (e4m3) convolutions on Hopper's tensor cores: the Conv / FusedConv layers an FP8 build marks
(``precision="fp8"``, ``ember.passes.precision.FP8_OPS``), on Ember's Triton implicit-GEMM
convolution in its FP8 mode (``libs.triton_conv``; tactics ``triton_fp8_conv_<BMxBNxBK>``).

Numbers, as the FP8 GEMMs (``kernels/gemm_fp8.py``) define them, but the weight scaled per output
channel (as TensorRT's FP8 convolutions): ``w8 = e4m3(w / sw[c])``, ``sw[c] = max|w[c]| / 448``,
packed once at compile time; the input quantized in the kernel as it is loaded with the layer's
calibrated per-tensor range (``x8 = e4m3(clamp(x / sx, -448, 448))``, ``sx = amax / 448``: values
beyond the calibrated range saturate, an output pixel whose window holds a NaN is NaN); the
products accumulated in fp32; ``sx * sw[c]``, bias, residual and the activation applied in the
epilogue; the output written fp16 (the FP8 build's float type), through any strides (the arena, a
Concat's slice).

Where it is offered (``when``): an FP8 layer with a 2-D ungrouped convolution, a constant 4-D
weight, an activation the epilogue computes, a calibrated per-tensor range for its input, and at
least 16 input channels (an RGB stem's K of 27 would be padded to 32 for FP8's MMA: it stays
fp16, as INT8 builds keep the stem fp16). Every other layer of an FP8 build runs its fp16 tactics,
and the tactic timer may pick an fp16 tactic of an FP8 layer where it is faster, which is only
more accurate (``CudaBackend.effective_precision``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ember.backends.base import CompileContext, Kernel
from ember.backends.cuda.kernels.conv_triton import triton_conv_fits, triton_conv_kernel, triton_conv_weight
from ember.backends.cuda.kernels.gemm_fp8 import input_scale
from ember.backends.cuda.libs.triton_conv import CONFIGS, TileConfig
from ember.backends.cuda.registry import register_cuda_kernel
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.plan.config import Precision
from ember.plan.records import Records

TACTIC_PREFIX = "triton_fp8_conv_"
#: Fewer input channels than this keep the layer fp16 (module docstring).
MIN_CHANNELS = 16


def fp8_conv_applies(node: Node, graph: Optional[Graph], records: Optional[Records] = None) -> bool:
    """``when`` of the ``triton_fp8_conv_*`` tactics (module docstring)."""
    if records is None or graph is None or records.precision.of(node.name, Precision.FP32) is not Precision.FP8:
        return False
    if not triton_conv_fits(node, graph) or graph.constants[node.input(1)].shape[1] < MIN_CHANNELS:
        return False
    rec = records.quantization.get(node.inputs[0])
    return rec is not None and not rec.per_channel


def _factory(config: TileConfig) -> Callable[[Node, CompileContext], Kernel]:
    def factory(node: Node, ctx: CompileContext) -> Kernel:
        from ember.backends.cuda.libs import triton_conv as T

        w = triton_conv_weight(node, ctx)
        rec = ctx.records.quantization.get(node.inputs[0]) if ctx.records is not None else None
        if rec is None or rec.per_channel:
            raise BuildError(f"node {node.name!r}: an FP8 convolution needs the calibrated per-tensor range of "
                             f"its input {node.inputs[0]!r}; build with calibration data or a calibration cache")
        fw = T.pack_weight_fp8(w)
        sx = input_scale(rec)
        return triton_conv_kernel(node, ctx, fw.packed, torch.float16, config, fp8=(sx, (fw.scales * sx).contiguous()))

    factory.__name__ = f"conv_fp8_{config.name}"
    factory.__doc__ = (f"FP8 (e4m3) Triton implicit-GEMM convolution, {config.block_m}x{config.block_n}x"
                       f"{config.block_k} tiles, scales and epilogue fused, writes into strided views.")
    return factory


#: tactic name -> kernel factory (tests call a factory directly under ``TRITON_INTERPRET=1``)
FACTORIES: dict[str, Callable[[Node, CompileContext], Kernel]] = {
    TACTIC_PREFIX + cfg.name: _factory(cfg) for cfg in CONFIGS}

for _rank, (_name, _f) in enumerate(FACTORIES.items(), start=-10):
    for _op in (OpType.CONV, OpType.FUSED_CONV):
        register_cuda_kernel(_op, _name, rank=_rank, when=fp8_conv_applies, channels_last_only=True,
                             needs_triton=True)(_f)

#: The tactics that compute an FP8 convolution in FP8.
FP8_CONV_TACTICS = frozenset(FACTORIES)

__all__ = ["FACTORIES", "FP8_CONV_TACTICS", "MIN_CHANNELS", "fp8_conv_applies"]

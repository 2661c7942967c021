"""CPU kernel families, one module per op family. ``load_kernels`` imports them from this
explicit list (no scanning); importing a family registers its kernels
(``ember.backends.cpu.registry``).

- ``activation``: unary elementwise (activations, math, IsNaN/IsInf);
- ``elementwise``: binary and variadic elementwise (arithmetic, Mod, comparisons, logic, Where);
- ``reduce``: reductions, ArgMax/ArgMin, CumSum, TopK;
- ``shape``: reshaping and casting, ConstantOfShape, Range, EyeLike, OneHot;
- ``movement``: Concat, Split, Slice, Pad, Tile, Trilu, DepthToSpace/SpaceToDepth, gathers, scatters;
- ``norm``: Batch/Layer/Instance/Group normalization, Softmax;
- ``linalg``, ``linalg_mkldnn``: Gemm, MatMul, FusedGemm, attention, Einsum;
- ``conv``, ``conv_mkldnn``: convolutions; ``pool``: pooling and LRN; ``resize``: Resize, GridSample;
  ``roi``: RoiAlign;
- ``fused``: FusedElementwise chains; ``recurrent``: LSTM, GRU, RNN;
- ``quantize``: QuantizeLinear, DequantizeLinear (ONNX's exact arithmetic);
- ``qlayers``: the INT8 layers QConv and QGemm (oneDNN's INT8 primitives);
- ``plugin``: custom ops' kernels (``ember.backends.plugins``).
- ``signal``: window functions, DFT, STFT, MelWeightMatrix (numpy's FFT on the CPU, ``torch.fft`` on
  other devices).
"""
from __future__ import annotations

_loaded = False


def load_kernels() -> None:
    """Imports every kernel family once, which registers its kernels."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from ember.backends.cpu.kernels import (  # noqa: F401
        activation,
        conv,
        conv_mkldnn,
        conv_persistent,
        elementwise,
        fused,
        gemm_persistent,
        linalg,
        linalg_mkldnn,
        movement,
        norm,
        plugin,
        pool,
        qlayers,
        quantize,
        recurrent,
        reduce,
        resize,
        roi,
        shape,
        signal,
    )

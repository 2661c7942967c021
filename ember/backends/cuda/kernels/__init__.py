"""CUDA kernel families, imported from this explicit list (nothing is discovered by scanning)."""
from __future__ import annotations

_loaded = False


def load_kernels() -> None:
    """Imports every CUDA kernel family once, which registers its tactics."""
    global _loaded
    if _loaded:
        return
    from ember.backends.cuda.kernels import (  # noqa: F401
        attention,
        conv,
        conv_cudnn_graph,
        conv_fp8,
        conv_triton,
        elementwise_fused,
        gemm,
        gemm_fp8,
        misc,
        norm,
        plugin,
        pool,
        qlayers,
    )

    _loaded = True  # only once every family imported: a failure is raised again, never half-loaded

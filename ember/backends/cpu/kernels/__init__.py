"""CPU kernel families. ``load_kernels`` imports them from this explicit list (no scanning)."""
from __future__ import annotations

_loaded = False


def load_kernels() -> None:
    """Imports every kernel family once, which registers its kernels."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from ember.backends.cpu.kernels import (  # noqa: F401
        activation, conv, conv_mkldnn, elementwise, fused, linalg, linalg_mkldnn, movement, norm,
        pool, reduce, resize, shape,
    )
    from ember.backends.cpu.kernels import extra, recurrent  # noqa: F401

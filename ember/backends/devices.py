"""Backends by device: ``get_backend(Device.CUDA)``.

Each backend is named here once, by the module and class that implement it, and imported only
when asked for, so importing one backend (or ``ember.backends.base``) never imports the other.
"""
from __future__ import annotations

import importlib

from ember.backends.base import Backend
from ember.errors import BuildError
from ember.plan.config import Device, to_enum

#: device -> "module:class" of its ``Backend``
BACKENDS: dict[Device, str] = {
    Device.CPU: "ember.backends.cpu:CPUBackend",
    Device.CUDA: "ember.backends.cuda:CUDABackend",
}


def get_backend(device: Device | str) -> Backend:
    """A new ``Backend`` for ``device`` (a ``Device`` or its spelling)."""
    dev = to_enum(Device, device, "device")
    module, _, cls = BACKENDS[dev].partition(":")
    backend = getattr(importlib.import_module(module), cls)()
    if not isinstance(backend, Backend):
        raise BuildError(f"{BACKENDS[dev]} is not an ember.backends.base.Backend")
    return backend

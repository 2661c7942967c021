"""Ember: a deep-learning inference engine on the model of TensorRT.

>>> import ember
>>> engine = ember.build("model.onnx", ember.BuildConfig(device="cpu"))   # doctest: +SKIP
>>> engine.save("model.ember")                                            # doctest: +SKIP
>>> engine = ember.load("model.ember")                                    # doctest: +SKIP
>>> with engine.create_context() as ctx:                                  # doctest: +SKIP
...     outputs = ctx.infer({"input": array})
"""
import os
from typing import TYPE_CHECKING, Any

from ember._version import __version__
from ember.errors import (
    BuildError,
    DeviceError,
    EmberError,
    EngineFileError,
    GraphError,
    IndexRangeError,
    InputError,
    ModelLoadError,
    ShapeError,
    UnsupportedOpError,
)
from ember.frontends.network import Network
from ember.plan.config import BuildConfig, Device, Layout, Precision, Profile

if TYPE_CHECKING:
    from ember.runtime.engine import Engine


def build(model: Any, config: "BuildConfig | None" = None, **options: Any) -> "Engine":
    """Builds an ``Engine`` from a model: anything ``ember.frontends.load`` takes (an ONNX file
    path, bytes, an ``onnx.ModelProto``, an ``ember.Network``, a ``torch.nn.Module`` with
    ``example_inputs=``, an ``ember.ir.Graph``). ``options``: ``progress=True`` shows a progress
    display, ``calibration_data=`` feeds an INT8 build; see ``ember.builder.build.build`` for the
    rest."""
    from ember.builder.build import build as _build

    return _build(model, config or BuildConfig(), **options)


def load(path: "str | os.PathLike[str]", *, import_plugins: bool = False) -> "Engine":
    """Loads an engine file written by ``Engine.save``; checks version, checksum and device.
    An engine with plugin layers needs their plugins imported first; ``import_plugins=True``
    imports the modules the file names (only for files you trust: it runs their code)."""
    from ember.runtime.engine import Engine

    if import_plugins:
        from ember.runtime.engine_file import import_plugins as _import_plugins

        _import_plugins(path)
    return Engine.load(path)


def plugin(op_type: str, domain: str = "", version: int = 1) -> Any:
    """``@ember.plugin(op_type, domain=..., version=...)`` on a class: a custom op's shape
    function and kernels (``@ember.kernel``), or its lowering into built-in ops; see
    ``ember.backends.plugins`` and docs/PLUGINS.md."""
    from ember.backends.plugins import plugin as _plugin

    return _plugin(op_type, domain, version)


def kernel(fn: Any = None, /, **options: Any) -> Any:
    """``@ember.kernel(device="cpu"|"cuda"|"any", tactic=..., prepare=..., available=...)`` marks
    a method of an ``@ember.plugin`` class as one of its kernels (tactics)."""
    from ember.backends.plugins import kernel as _kernel

    return _kernel(fn, **options) if fn is not None else _kernel(**options)


__all__ = [
    "BuildConfig", "Device", "Layout", "Network", "Precision", "Profile", "build", "kernel", "load",
    "plugin", "__version__",
    "EmberError", "BuildError", "DeviceError", "EngineFileError", "GraphError", "IndexRangeError", "InputError",
    "ModelLoadError", "ShapeError", "UnsupportedOpError",
]

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


def load(path: "str | os.PathLike[str]") -> "Engine":
    """Loads an engine file written by ``Engine.save``; checks version, checksum and device."""
    from ember.runtime.engine import Engine

    return Engine.load(path)


__all__ = [
    "BuildConfig", "Device", "Layout", "Network", "Precision", "Profile", "build", "load", "__version__",
    "EmberError", "BuildError", "DeviceError", "EngineFileError", "GraphError", "IndexRangeError", "InputError",
    "ModelLoadError", "ShapeError", "UnsupportedOpError",
]

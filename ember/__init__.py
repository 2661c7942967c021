"""Ember: a deep-learning inference engine on the model of TensorRT.

>>> import ember
>>> engine = ember.build("model.onnx", ember.BuildConfig(device="cpu"))   # doctest: +SKIP
>>> engine.save("model.ember")                                            # doctest: +SKIP
>>> engine = ember.load("model.ember")                                    # doctest: +SKIP
>>> with engine.create_context() as ctx:                                  # doctest: +SKIP
...     outputs = ctx.infer({"input": array})
"""
from ember.plan.config import BuildConfig, Profile
from ember.errors import (
    BuildError, DeviceError, EmberError, EngineFileError, GraphError, InputError, ModelLoadError,
    ShapeError, UnsupportedOpError,
)

__version__ = "0.1.0"


def build(model, config: "BuildConfig | None" = None, **options):
    """Builds an ``Engine`` from an ONNX file path, bytes, or ``onnx.ModelProto`` (or an
    ``ember.ir.Graph``). ``options``: ``progress=True`` shows a progress display; see
    ``ember.builder.build.build`` for the rest."""
    from ember.builder.build import build as _build

    return _build(model, config or BuildConfig(), **options)


def load(path):
    """Loads an engine file written by ``Engine.save``; checks version, checksum and device."""
    from ember.runtime.engine import Engine

    return Engine.load(path)


__all__ = [
    "BuildConfig", "Profile", "build", "load", "__version__",
    "EmberError", "BuildError", "DeviceError", "EngineFileError", "GraphError", "InputError",
    "ModelLoadError", "ShapeError", "UnsupportedOpError",
]

"""``load(source) -> Graph``: the one way in, whatever format the model comes in.

Every frontend is one row of ``FRONTENDS``: its name, what it accepts (for messages), the file
suffixes that name it, how it recognizes an in-memory source or a file's content, and its load
function. ``load`` picks the row from what it is given, so the builder and the tools never
branch on formats, and a Caffe, PyTorch or TensorFlow frontend is one new row (recognizers must
not import the format's library: see ``ember.frontends.sniff``).

Choosing a row, in order: an ``ember.ir.Graph`` is returned as it is; ``format="onnx"`` names the
row outright; a path is matched by suffix, then by content; anything else is offered to each
row's ``recognizes``.

>>> from ember.frontends import load
>>> graph = load("resnet50.onnx", shapes={"input": (1, 3, 224, 224)})   # doctest: +SKIP
>>> graph = load(onnx_model_proto)                                        # doctest: +SKIP
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ember.errors import ModelLoadError
from ember.frontends import network, torch_export
from ember.frontends.caffe import source as caffe_source
from ember.frontends.graph_builder import ShapeMap
from ember.frontends.onnx import source as onnx_source
from ember.frontends.tensorflow import source as tf_source
from ember.ir.graph import Graph

#: A load function: ``(source, shapes=None, **options) -> Graph``.
LoadFn = Callable[..., Graph]


@dataclass(frozen=True)
class Frontend:
    """One source format ``load`` can read."""

    name: str  # what ``format=`` names, and what the builder records as the source format
    accepts: str  # what to pass, in words, for error messages
    suffixes: tuple[str, ...]  # lower-case file suffixes that name this format
    recognizes: Callable[[object], bool]  # an in-memory source (an object, bytes) is this format
    sniffs: Callable[[Path], bool]  # an existing path whose suffix names no format is this one
    load: LoadFn


#: The formats Ember reads, tried in this order (explicit, never discovered).
FRONTENDS: tuple[Frontend, ...] = (
    Frontend(name=onnx_source.NAME, accepts=onnx_source.ACCEPTS, suffixes=onnx_source.SUFFIXES,
             recognizes=onnx_source.recognizes, sniffs=onnx_source.sniffs, load=onnx_source.load),
    Frontend(name=network.NAME, accepts=network.ACCEPTS, suffixes=network.SUFFIXES,
             recognizes=network.recognizes, sniffs=network.sniffs, load=network.load),
    Frontend(name=torch_export.NAME, accepts=torch_export.ACCEPTS, suffixes=torch_export.SUFFIXES,
             recognizes=torch_export.recognizes, sniffs=torch_export.sniffs, load=torch_export.load),
    Frontend(name=caffe_source.NAME, accepts=caffe_source.ACCEPTS, suffixes=caffe_source.SUFFIXES,
             recognizes=caffe_source.recognizes, sniffs=caffe_source.sniffs, load=caffe_source.load),
    Frontend(name=tf_source.TF_NAME, accepts=tf_source.TF_ACCEPTS, suffixes=tf_source.TF_SUFFIXES,
             recognizes=tf_source.tf_recognizes, sniffs=tf_source.tf_sniffs, load=tf_source.tf_load),
    Frontend(name=tf_source.KERAS_NAME, accepts=tf_source.KERAS_ACCEPTS, suffixes=tf_source.KERAS_SUFFIXES,
             recognizes=tf_source.keras_recognizes, sniffs=tf_source.keras_sniffs, load=tf_source.keras_load),
)

#: Files ``load`` refuses with a pointer to what reads them instead.
ENGINE_SUFFIX = ".ember"


def formats() -> list[str]:
    """The names ``format=`` accepts, in table order.

    >>> formats()
    ['onnx', 'network', 'torch', 'caffe', 'tensorflow', 'keras']
    """
    return [f.name for f in FRONTENDS]


def _known() -> str:
    return "; ".join(f"{f.name} ({f.accepts})" for f in FRONTENDS)


def _by_name(name: str) -> Frontend:
    for f in FRONTENDS:
        if f.name == name.lower():
            return f
    raise ModelLoadError(f"unknown model format {name!r}; Ember reads {', '.join(formats())}")


def _from_path(path: Path) -> Frontend:
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist; check the path")
    if path.suffix.lower() == ENGINE_SUFFIX:
        raise ModelLoadError(f"{path} is already a built engine; load it with ember.load() "
                             f"(or `ember run {path}`) instead of building it")
    suffix = path.suffix.lower()
    for f in FRONTENDS:
        if suffix in f.suffixes:
            return f
    for f in FRONTENDS:
        if f.sniffs(path):
            return f
    what = "folder" if path.is_dir() else "file"
    raise ModelLoadError(
        f"cannot tell which model format the {what} {path} is in (neither its suffix nor its "
        f"content matches one Ember reads). Ember reads: {_known()}. "
        f"Pass such a model, or name its format: ember.frontends.load(..., format='onnx')")


def detect(source: Any) -> Frontend:
    """The frontend ``load`` would use for ``source`` (not for a Graph, which needs none).

    >>> detect("model.onnx").name          # doctest: +SKIP
    'onnx'
    """
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source))
    for f in FRONTENDS:
        if f.recognizes(source):
            return f
    kind = type(source)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    given = ("the given bytes" if isinstance(source, (bytes, bytearray, memoryview))
             else f"an object of type {name}")
    raise ModelLoadError(
        f"cannot import {given}: it is not a model in a format Ember reads. Ember reads: "
        f"{_known()}; or an ember.ir.Graph. Pass a model file's path, its bytes, or its format's "
        f"in-memory model")


def load(source: Any, *, format: Optional[str] = None, shapes: Optional[ShapeMap] = None,
         **options: Any) -> Graph:
    """The IR graph of a model, through the frontend its format calls for.

    ``source``: an ``ember.ir.Graph`` (returned as it is), a path (``str`` or ``os.PathLike``;
    the format from the suffix, else from the content), or an in-memory model (the bytes of a
    file, an ``onnx.ModelProto``). ``format`` names the frontend instead of detecting it (see
    ``formats()``). ``shapes`` overrides input shapes (``{"input": (1, 3, 224, 224)}``; dims
    may be symbolic strings); other ``options`` go to the frontend, which rejects those it does
    not take. Raises ``ModelLoadError`` naming the file or source at fault and what to pass.

    >>> g = load("resnet50.onnx", shapes={"input": (1, 3, 224, 224)})   # doctest: +SKIP
    >>> g.types[g.inputs[0]]                                            # doctest: +SKIP
    """
    if isinstance(source, Graph):
        if format is not None or shapes or options:
            raise ModelLoadError(
                "an ember.ir.Graph is already Ember's IR: load() returns it as it is and takes no "
                "format, shapes or options for it; set input shapes in the graph's types, or give "
                "BuildConfig(shapes=...) to ember.build")
        return source
    frontend = _by_name(format) if format is not None else detect(source)
    return frontend.load(source, shapes=shapes, **options)

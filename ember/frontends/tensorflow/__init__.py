"""TensorFlow and Keras models (the optional extra: ``pip install 'ember[tensorflow]'``).

>>> engine = ember.build("model.keras", ember.BuildConfig(device="cpu"))       # doctest: +SKIP
>>> engine = ember.build("saved_model_dir", ember.BuildConfig(device="cpu"))   # doctest: +SKIP
>>> graph = ember.frontends.load("frozen.pb", inputs=["x"], outputs=["probs"]) # doctest: +SKIP

Sources: Keras ``.keras``/``.h5`` files and ``keras.Model`` objects (format ``keras``); SavedModel
folders, frozen GraphDefs (``.pb``/``.pbtxt``, bytes, ``tf.compat.v1.GraphDef``) and
``tf.function``s with an input signature (format ``tensorflow``). Each is frozen (variables
become constants), converted to ONNX by tf2onnx and imported by Ember's ONNX frontend, so every
op tf2onnx converts and Ember's ONNX frontend reads is supported.

Names and layouts are the model's: inputs keep their names (Keras ``Input`` layers, the
signature's keys, the frozen graph's placeholders) and their layout (an NHWC image input stays
NHWC; tf2onnx's transposes are inside the graph, where Ember's layout pass takes them); outputs
are named after the Keras output layers, the signature's keys, or the frozen graph's nodes.

Options (``ember.frontends.load(source, **options)`` or ``ember.build(source, config, **options)``):
``shapes={"image": (8, 224, 224, 3)}`` for every source; ``custom_objects=``, ``safe_mode=`` for
Keras files; ``signature=`` (default ``serving_default``) and ``tags=`` (default the meta graph
tagged ``serve``) for SavedModels; ``inputs=[...]``, ``outputs=[...]`` for frozen graphs (by
default its placeholders and its one output; see ``ember.frontends.tensorflow.graphdef``);
``opset=`` (7-18, tf2onnx's default 15) for all.

A layer or op tf2onnx cannot convert, or an ONNX op Ember cannot import, is an
``UnsupportedOpError`` naming the op, the TensorFlow nodes, the Keras layers and the file. Nothing
is imported from TensorFlow until a model is converted (``import ember`` stays light); without the
extra the error says how to install it. ``to_onnx(source)`` returns the ONNX model Ember imports.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.frontends.tensorflow.convert import load_keras, load_tensorflow, to_onnx

__all__ = ["load_keras", "load_tensorflow", "to_onnx"]


def __getattr__(name: str) -> Any:
    """The conversion functions on first use (their module imports nothing heavy either, but
    keeps this package's import to the table's recognizers)."""
    if name in __all__:
        from ember.frontends.tensorflow import convert

        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

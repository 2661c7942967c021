"""What every TensorFlow or Keras source is reduced to before tf2onnx converts it: a frozen
GraphDef (constants instead of variables), its input and output tensors, and the names the user
knows them by."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Traced:
    """A frozen graph ready for tf2onnx.

    ``inputs``/``outputs``: TensorFlow tensor names (``"x:0"``) in the order the model declares
    them; ``names``: tensor name -> the name Ember's graph uses (the Keras input or output layer,
    the signature's key, the frozen graph's node). ``label`` names the source in messages,
    ``kind`` says what it is ("Keras model", "SavedModel", "frozen graph", "tf.function");
    ``layers`` maps Keras layer names to their class names (empty for other sources), so an
    error can name the layer behind a TensorFlow node; ``shape_override``: tensor name -> dims
    (-1 unknown) for tf2onnx."""

    graph_def: Any
    inputs: list[str]
    outputs: list[str]
    names: Mapping[str, str]
    label: str
    kind: str
    fmt: str
    layers: Mapping[str, str] = field(default_factory=dict)
    shape_override: Mapping[str, list[int]] = field(default_factory=dict)

    def name_of(self, tensor: str) -> str:
        return self.names.get(tensor, tensor)

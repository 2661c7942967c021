"""The ONNX frontend: ``import_onnx(model, shapes=None) -> Graph`` and ``supported_ops()``.

Most callers go through ``ember.frontends.load``, which picks this frontend for ``.onnx`` paths,
ONNX bytes and ``onnx.ModelProto``s. onnx itself is imported on the first import, not with this
package (``import_onnx`` is loaded on first use).

Opsets: the default domain (``""`` / ``"ai.onnx"``) at opset 1 through 28 (the newest of onnx
1.23) is accepted; ONNX's backend test suite (``tests/test_onnx_backend.py``) covers them. Every
handler declares the opset its form starts at, so a model imports when every op it uses has a
handler for its version (otherwise the error lists the ops). Canonical forms (see
``ember.ops.attrs``):

- parameters ONNX moved from attributes to inputs (Squeeze/Unsqueeze/Reduce axes, Split sizes,
  Clip bounds, Slice starts/ends/axes/steps, Pad pads/value/axes, Resize scales/sizes) are
  stored in the attrs and the inputs dropped when *all* of the node's such inputs are constants
  at import; otherwise the node keeps those inputs at their ONNX positions and the attrs fields
  are ``None``;
- string attributes (modes, directions, reductions) become the enums of ``ember.ops.attrs``, and
  element types (Cast's ``to``, ...) ``ember.ir.DType``s; a value outside them is rejected
  naming the node, the attribute and the values Ember supports;
- Reshape's shape, Expand's shape, Range's bounds, ConstantOfShape's shape and Gather's indices
  stay inputs (constants when known);
- Softmax/LogSoftmax before opset 13 get ``legacy_flatten=True`` unless the axis is the last;
- auto_pad is turned into explicit pads whenever the input's spatial dims are static;
- Dropout becomes an inference-mode ``Dropout`` (data input only); a used mask output becomes
  an all-True tensor; MaxPool's Indices, BatchNormalization's training outputs and Dropout in
  training mode are rejected when used; LayerNormalization's Mean/InvStdDev, when used, are
  computed by extra nodes;
- inputs' dynamic dims are the ONNX ``dim_param`` or ``"<input>_d<i>"``;
- ``If`` is imported when its condition is known at build time (from constants and input
  shapes, through ``ember.ops.shape_values``): the taken branch is inlined. A condition known
  only at run time is rejected;
- Max/Min/Sum/Mean with more than two inputs become chains of binary nodes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ember.frontends.onnx.registry import MAX_OPSET, MIN_OPSET, supported_ops

if TYPE_CHECKING:
    from ember.frontends.onnx.importer import import_onnx

__all__ = ["import_onnx", "supported_ops", "MIN_OPSET", "MAX_OPSET"]


def __getattr__(name: str) -> object:
    """``import_onnx`` on first use: it imports onnx, which ``import ember.frontends`` must not."""
    if name == "import_onnx":
        from ember.frontends.onnx.importer import import_onnx

        return import_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

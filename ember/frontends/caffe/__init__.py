"""The Caffe frontend: ``deploy.prototxt`` + ``.caffemodel`` to an Ember graph, with no Caffe
installed.

>>> import ember
>>> graph = ember.frontends.caffe.load("deploy.prototxt", "bvlc_googlenet.caffemodel",   # doctest: +SKIP
...                                    shapes={"data": (1, 3, 224, 224)})
>>> engine = ember.build(graph, ember.BuildConfig(device="cpu"))                        # doctest: +SKIP

The same through ``ember.frontends.load`` (and so ``ember.build``): ``load("deploy.prototxt",
weights="model.caffemodel")`` or ``load(("deploy.prototxt", "model.caffemodel"))``; on the
command line ``ember build deploy.prototxt --weights model.caffemodel -o model.ember``.

Both files are read with protobuf from Ember's copy of BVLC Caffe's ``caffe.proto`` (text for the
network, binary for the weights; ``caffe_pb2`` holds the compiled schema). What is read, and how:

- **Layers** (``supported_layers()``): Input (and the old ``input:`` / ``input_shape`` /
  ``input_dim`` forms), Convolution, Deconvolution, Pooling (MAX/AVE, global, Caffe's ceil-mode
  sizes and AVE divisors), InnerProduct (axis, transpose), ReLU, PReLU, Sigmoid, TanH, ELU,
  AbsVal, Power, Exp, Log, BNLL, Threshold, Clip, Swish, LRN (both regions), BatchNorm (with its
  scale-factor blob) and Scale/Bias, Eltwise (SUM with coefficients, PROD, MAX), Concat, Slice,
  Split, Softmax, Dropout, Flatten, Reshape, Permute, Crop, Tile, Silence. Another type is
  served by a plugin registered with ``@ember.plugin("<type>", domain="caffe")``; without one,
  the import fails listing every such layer by name and type.
- **Formats**: V1 networks (``layers`` with enum types) are upgraded as Caffe's ``upgrade_proto``
  does; in-place layers (top == bottom) are fine; only the layers of the TEST phase are kept.
- **Names**: nodes keep Caffe's layer names, and every blob's last value its blob name.
- **Errors** name the file and line of a prototxt that does not parse, the layer and blob whose
  weights do not match the network (expected and found shapes), and every layer without weights.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from ember.frontends.graph_builder import ShapeMap
    from ember.ir.graph import Graph

__all__ = ["load", "supported_layers"]


def load(prototxt: Any, caffemodel: Any = None, *, shapes: Optional[ShapeMap] = None,
         outputs: Optional[Sequence[str]] = None) -> Graph:
    """The IR graph of a Caffe network and its trained weights.

    ``prototxt``: the network definition (path, text or ``caffe_pb2.NetParameter``);
    ``caffemodel``: its weights (path, bytes or ``NetParameter``; may be left out only when no
    layer has parameters); ``shapes``: input shapes replacing the prototxt's (``{"data": (1, 3,
    224, 224)}``, the same rank; a dim may be a symbol such as ``"batch"``); ``outputs``: the
    blobs to return (default: those no layer reads, Caffe's net outputs).

    >>> g = load("deploy.prototxt", "model.caffemodel", shapes={"data": (1, 3, 224, 224)})  # doctest: +SKIP
    """
    from ember.frontends.caffe.importer import import_caffe

    return import_caffe(prototxt, caffemodel, shapes=shapes, outputs=outputs)


def supported_layers() -> list[str]:
    """The Caffe layer types Ember converts itself (``Input`` included)."""
    from ember.frontends.caffe.registry import supported_layers as handled

    return handled()

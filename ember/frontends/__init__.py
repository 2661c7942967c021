"""Frontends: every model format becomes an ``ember.ir.Graph`` through one function, ``load``.

>>> from ember.frontends import load
>>> graph = load("model.onnx", shapes={"input": (1, 3, 224, 224)})   # doctest: +SKIP

``FRONTENDS`` lists the formats (``ember.frontends.loader``): ONNX (``ember.frontends.onnx``), a
network written in code (``ember.frontends.network.Network``), a ``torch.nn.Module`` through
``torch.export`` (``ember.frontends.torch_export``), a Caffe ``deploy.prototxt`` with its
``.caffemodel`` (``ember.frontends.caffe``: ``load("deploy.prototxt", weights="model.caffemodel")``),
and TensorFlow SavedModels, frozen graphs and Keras files (``ember.frontends.tensorflow``, the
``tensorflow`` extra: converted by tf2onnx, then imported as ONNX).
Each builds the IR with the frontend-neutral ``ember.frontends.graph_builder.GraphBuilder``.
Strings from a file become enums here, once.
Importing this package does not import any format's library (onnx and torch on first use).
"""
from ember.frontends.graph_builder import GraphBuilder, ShapeMap
from ember.frontends.loader import FRONTENDS, Frontend, detect, formats, load

__all__ = ["FRONTENDS", "Frontend", "GraphBuilder", "ShapeMap", "detect", "formats", "load"]

"""The Caffe frontend's entry in ``ember.frontends.load``'s table: recognizing a Caffe source and
importing it. Nothing here imports protobuf until a model is imported.

A Caffe model is two files: the network (``deploy.prototxt``, protobuf text) and its trained
weights (``.caffemodel``, protobuf binary). ``load`` takes the network as the source and the
weights as an option, ``weights=``, or both as a pair ``(prototxt, caffemodel)``.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ember.errors import ModelLoadError
from ember.frontends.graph_builder import ShapeMap
from ember.ir.graph import Graph

NAME = "caffe"
SUFFIXES = (".prototxt", ".caffemodel")
ACCEPTS = ("a Caffe network: a deploy .prototxt path with weights='model.caffemodel', or the pair "
           "(prototxt, caffemodel)")

#: What a Caffe network's text starts with, near its top (name, inputs or layers).
_NET_TEXT = re.compile(rb"^\s*(layers?\s*\{|input\s*:|input_shape\s*\{|input_dim\s*:)", re.MULTILINE)


def _is_path(x: object) -> bool:
    return isinstance(x, (str, os.PathLike))


def _pair(source: object) -> bool:
    """A (network, weights) pair of paths: the weights a .caffemodel or the network a .prototxt."""
    if not isinstance(source, (tuple, list)) or len(source) != 2 or not all(_is_path(s) for s in source):
        return False
    net, weights = (Path(s) for s in source)
    return weights.suffix.lower() == ".caffemodel" or net.suffix.lower() == ".prototxt"


def recognizes(source: object) -> bool:
    """A ``(prototxt, caffemodel)`` pair of paths, or a Caffe ``NetParameter`` (which exists only
    once the Caffe frontend is imported)."""
    if _pair(source):
        return True
    pb2 = sys.modules.get("ember.frontends.caffe.caffe_pb2")
    return pb2 is not None and isinstance(source, pb2.NetParameter)


def sniffs(path: Path) -> bool:
    """A text file (of any suffix) that reads like a Caffe network definition."""
    if not path.is_file():
        return False
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    if b"\0" in head:
        return False
    return _NET_TEXT.search(head) is not None and re.search(rb"\btype\s*:", head) is not None


def load(source: Any, shapes: Optional[ShapeMap] = None, weights: Any = None,
         outputs: Optional[Sequence[str]] = None, **options: Any) -> Graph:
    """``import_caffe(network, weights, shapes, outputs)``: the network is ``source`` (or the
    pair's first file), the weights ``weights=`` (or the pair's second)."""
    if options:
        raise ModelLoadError(f"the Caffe frontend takes no option(s) {', '.join(sorted(options))}; "
                             f"its options are weights=, shapes= and outputs=")
    if _pair(source):
        if weights is not None:
            raise ModelLoadError("weights given twice: in the (prototxt, caffemodel) pair and as "
                                 "weights=; give them once")
        source, weights = source
    if _is_path(source) and Path(source).suffix.lower() == ".caffemodel":
        raise ModelLoadError(f"{source} holds a Caffe network's trained weights, not its definition; "
                             f"pass the deploy .prototxt as the model and this file as weights= "
                             f"(ember build deploy.prototxt --weights {source})")
    from ember.frontends.caffe.importer import import_caffe

    return import_caffe(source, weights, shapes=shapes, outputs=outputs)

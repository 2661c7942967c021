"""Helpers of the Caffe frontend tests: caffemodels written from numpy arrays or a torch module's
weights, and prototxt snippets."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ember.frontends.caffe import caffe_pb2

DATA = Path(__file__).parent / "data"
GOOGLENET_DEPLOY = DATA / "caffe_bvlc_googlenet_deploy.prototxt"


def caffemodel(blobs: Mapping[str, Sequence[np.ndarray]], *, legacy: bool = False, v1: bool = False) -> bytes:
    """A serialized .caffemodel holding ``{layer name: [blob, ...]}`` (``legacy``: the old 4-D
    num/channels/height/width shape fields; ``v1``: V1 ``layers`` entries)."""
    net = caffe_pb2.NetParameter(name="weights")
    for name, arrays in blobs.items():
        layer = net.layers.add(name=name) if v1 else net.layer.add(name=name)
        for a in arrays:
            b = layer.blobs.add()
            a = np.asarray(a, np.float32)
            if legacy:
                dims = [1] * (4 - a.ndim) + list(a.shape)
                b.num, b.channels, b.height, b.width = dims
            else:
                b.shape.dim.extend(a.shape)
            b.data.extend(a.reshape(-1).tolist())
    return net.SerializeToString()


def module_blobs(module: object) -> dict[str, list[np.ndarray]]:
    """A torch module's parameters by Caffe layer name (module path ``a.b`` -> layer ``a/b``)."""
    blobs: dict[str, list[np.ndarray]] = {}
    for key, value in module.state_dict().items():  # type: ignore[attr-defined]
        path, kind = key.rsplit(".", 1)
        order = 0 if kind == "weight" else 1
        entry = blobs.setdefault(path.replace(".", "/"), [])
        entry.insert(order, value.detach().cpu().numpy())
    return blobs


def net(*layers: str, inputs: str = 'input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 7 }') -> str:
    """A prototxt of ``inputs`` followed by ``layers``."""
    return "name: \"test\"\n" + inputs + "\n" + "\n".join(layers) + "\n"

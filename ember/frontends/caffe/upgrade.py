"""Old network formats made current, and the layers of the TEST phase picked, as Caffe does.

- **V1 networks** (``layers { type: CONVOLUTION ... }``, enum layer types) become ``layer``
  entries with string types, the way Caffe's ``UpgradeV1Net`` does: names, bottoms, tops,
  include/exclude rules, blobs and every ``*_param`` carry over; ``param`` names, ``blobs_lr``
  and ``weight_decay`` become ``ParamSpec``s. A V0 layer inside a V1 one (2013's format) is
  refused with the command that upgrades it.
- **Inputs declared on the net** (``input: "data"`` with ``input_shape { dim: ... }`` or four
  ``input_dim`` per input) become one ``Input`` layer named ``input`` in front, as Caffe's
  ``UpgradeNetInput`` does.
- **Phase rules**: a deploy network runs in the TEST phase (level 0, no stages); layers whose
  ``include``/``exclude`` rules say otherwise are dropped (Caffe's ``Net::FilterNet``).
"""
from __future__ import annotations

from typing import Any

from ember.errors import ModelLoadError
from ember.frontends.caffe import caffe_pb2

#: V1LayerParameter.LayerType names -> the layer type strings of LayerParameter.
V1_TYPES: dict[str, str] = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

_V1_COPIED = ("name", "bottom", "top", "include", "exclude", "blobs", "loss_weight")


def upgrade(net: Any, label: str) -> Any:
    """A copy of ``net`` in the current format: V1 layers upgraded, net-level inputs as an
    ``Input`` layer in front. ``ModelLoadError`` naming the file for what cannot be upgraded."""
    if net.layer and net.layers:
        raise ModelLoadError(f"{label} mixes current layers ('layer') and V1 layers ('layers'); "
                             f"Caffe refuses such a network too. Write every layer one way")
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    if net.layers:
        del out.layers[:]
        for v1 in net.layers:
            _upgrade_v1(v1, out.layer.add(), label)
    if net.input:
        _upgrade_input(net, out, label)
    return out


def _upgrade_v1(v1: Any, layer: Any, label: str) -> None:
    if v1.HasField("layer"):
        raise ModelLoadError(
            f"{label}: layer {v1.layer.name or v1.name!r} is in Caffe's V0 format (2013); upgrade "
            f"the network with Caffe's tool first: upgrade_net_proto_text {label} new.prototxt "
            f"(and upgrade_net_proto_binary for its .caffemodel)")
    for name in _V1_COPIED:
        field = getattr(v1, name)
        if name == "name":
            if v1.HasField("name"):
                layer.name = v1.name
        else:
            getattr(layer, name).extend(field)
    if v1.HasField("type"):
        enum_name = caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)
        layer.type = V1_TYPES[enum_name]
    for i, name in enumerate(v1.param):
        _param(layer, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        _param(layer, i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        _param(layer, i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        _param(layer, i).decay_mult = decay
    for descriptor, value in v1.ListFields():
        if descriptor.name.endswith("_param") and descriptor.message_type is not None:
            getattr(layer, descriptor.name).CopyFrom(value)


def _param(layer: Any, i: int) -> Any:
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


def _upgrade_input(net: Any, out: Any, label: str) -> None:
    """``input:`` with ``input_shape`` (one per input) or ``input_dim`` (four per input)."""
    names = list(net.input)
    if net.input_shape:
        if len(net.input_shape) != len(names):
            raise ModelLoadError(f"{label} declares {len(names)} input(s) ({', '.join(names)}) but "
                                 f"{len(net.input_shape)} input_shape(s); give one input_shape per input")
        shapes = [list(s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * len(names):
            raise ModelLoadError(f"{label} declares {len(names)} input(s) but {len(net.input_dim)} "
                                 f"input_dim values; old-style inputs take four (num, channels, "
                                 f"height, width) per input")
        dims = list(net.input_dim)
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    else:
        shapes = []
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(names)
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    layers = [layer] + list(out.layer)
    del out.layer[:]
    out.layer.extend(layers)
    del out.input[:]
    del out.input_shape[:]
    del out.input_dim[:]


def _meets(rule: Any, state: Any) -> bool:
    """Caffe's ``StateMeetsRule``."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def deploy_layers(net: Any, label: str) -> list[Any]:
    """The layers that run in the TEST phase (the net's own ``state`` level and stages kept)."""
    state = caffe_pb2.NetState()
    if net.HasField("state"):
        state.CopyFrom(net.state)
    state.phase = caffe_pb2.TEST
    kept = []
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise ModelLoadError(f"{label}: layer {layer.name!r} has both include and exclude "
                                 f"rules; Caffe allows one kind only")
        if layer.include:
            if any(_meets(r, state) for r in layer.include):
                kept.append(layer)
        elif not any(_meets(r, state) for r in layer.exclude):
            kept.append(layer)
    return kept

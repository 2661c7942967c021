"""The ``cudnn_int8`` QConv tactic: its per-channel epilogue constants (zero points folded into
the bias; a padded convolution on a zero-pointed input has its border written with the zero
point and runs unpadded) give the numbers of the float reference layer; residual layers are
refused. Checked on CPU tensors with the model of the cuDNN graph
(``int8_epilogue_reference``); on a GPU the tactic itself runs (``cuda`` marker)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.ir import DType, Graph, Node, OpType, TensorType
from ember.ops.attrs import Activation, ConvAttrs, QConvAttrs, QuantParams
from ember.ops.infer import infer_graph

CASES = {  # name: (k, stride, pads, x zp, activation, params, out params, residual params, float residual)
    "3x3_relu_int8_out_int8_residual": (3, 1, (1, 1, 1, 1), -128, Activation.RELU, (),
                                        QuantParams(0.04, -128, DType.INT8), QuantParams(0.06, 5, DType.INT8), False),
    "1x1_unpadded_float_out": (1, 1, (0, 0, 0, 0), -100, Activation.NONE, (), None, None, False),
    "3x3_stride2_relu6_int8_out": (3, 2, (1, 1, 1, 1), -128, Activation.CLIP, (0.0, 6.0),
                                   QuantParams(6 / 255, -128, DType.INT8), None, False),
    "3x3_symmetric_input_float_residual": (3, 1, (1, 1, 1, 1), 0, Activation.RELU, (), None, None, True),
    "5x5_pad2_zero_point_float_out": (5, 1, (2, 2, 2, 2), 37, Activation.NONE, (), None, None, False),
    "7x7_stride2_three_channels": (7, 2, (3, 3, 3, 3), -128, Activation.RELU, (),
                                   QuantParams(0.05, -128, DType.INT8), None, False),
}
CHANNELS = {"7x7_stride2_three_channels": 3}  # an image's channels: cuDNN's INT8 kernels read fours


def _case(name: str):
    k, stride, pads, zp, act, params, out, res, float_res = CASES[name]
    cin = CHANNELS.get(name, 16)
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((24, cin, k, k)) / (4 * k)).astype(np.float32)
    consts = {"w": w, "b": (rng.standard_normal(24) * 0.1).astype(np.float32)}
    ws = tuple(float(v) for v in np.abs(w).max(axis=(1, 2, 3)) / 127)
    has_res = res is not None or float_res
    attrs = QConvAttrs(ConvAttrs((k, k), (stride, stride), pads, (1, 1)), QuantParams(0.05, zp, DType.INT8), ws,
                       act, params, has_res, out, res)
    types = {"x": TensorType(DType.INT8, (2, cin, 11, 11))}
    inputs = ["x"]
    ins: tuple[str, ...] = ("x", "w", "b")
    if has_res:
        oh = (11 + pads[0] + pads[2] - k) // stride + 1
        types["r"] = TensorType(DType.INT8 if res is not None else DType.FLOAT32, (2, 24, oh, oh))
        inputs.append("r")
        ins += ("r",)
    node = Node("q", OpType.QCONV, ins, ("y",), attrs)
    g = infer_graph(Graph("g", [node], inputs, ["y"], types, consts))
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (2, cin, 11, 11), generator=gen).to(torch.int8)
    r = None
    if has_res:
        shape = types["r"].shape
        r = (torch.randint(-128, 128, shape, generator=gen).to(torch.int8) if res is not None
             else torch.randn(shape, generator=gen))
    return g, node, x, r


def _reference(g, node, x, r, device="cpu"):
    """The float32 reference layer (dequantized operands), as the CUDA fallback computes it."""
    from ember.backends.base import CompileContext
    from ember.backends.cuda.kernels.qlayers import qconv_dequantized
    from ember.plan.config import Precision

    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    kernel = qconv_dequantized(node, CompileContext(g, consts, torch.device(device), "", Precision.INT8))
    return kernel([x, consts["w"], consts["b"], r])[0]


def _close_to_reference(got: torch.Tensor, want: torch.Tensor, int8_out: bool, name: str) -> None:
    if int8_out:  # within one 8-bit step (a tie rounded the other way), rarely off at all
        diff = (got.double() - want.double()).abs()
        assert float(diff.max()) <= 1.0 and float((diff > 0).double().mean()) < 0.02, name
    else:
        ref = want.double()
        assert float((got.double() - ref).norm() / ref.norm()) < 2e-3, name


UNRESIDUAL = [n for n, c in CASES.items() if c[7] is None and not c[8]]


@pytest.mark.parametrize("name", UNRESIDUAL)
def test_int8_epilogue_gives_the_reference_layer(name):
    """What the tactic runs: a padded convolution on a zero-pointed input gets its border written
    with the zero point and runs unpadded, so every bias is per channel."""
    import torch.nn.functional as F

    from ember.backends.cpu.kernels.qlayers import quantize_weight
    from ember.backends.cuda.kernels.qlayers import int8_epilogue, int8_epilogue_reference

    g, node, x, r = _case(name)
    a = node.attrs
    wq = quantize_weight(torch.from_numpy(g.constants["w"]), torch.tensor(a.w_scales, dtype=torch.float64), 0)
    t, left, b, rt = a.conv.pads
    padding = (t, left)
    xp = x
    if a.x.zero_point and any(a.conv.pads):
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, left, rt, t, b), value=a.x.zero_point).permute(0, 3, 1, 2)
        padding = (0, 0)
    ep = int8_epilogue(wq, a, torch.from_numpy(g.constants["b"]))
    assert tuple(ep.scale.shape) == tuple(ep.bias.shape) == (1, 24, 1, 1)
    out_dtype = torch.int8 if a.out is not None else torch.float16
    got = int8_epilogue_reference(xp, wq, ep, padding, tuple(a.conv.strides), (1, 1), out_dtype)
    _close_to_reference(got, _reference(g, node, x, r), a.out is not None, name)


@pytest.mark.parametrize("name", [n for n in CASES if n not in UNRESIDUAL])
def test_a_residual_layer_is_not_the_tactic_s(name):
    """cuDNN has not run an INT8 graph with a residual on a GPU yet: the tactic is not offered for
    such a layer, and asked directly it refuses with a reason."""
    from ember.backends.base import CompileContext
    from ember.backends.cuda.kernels.qlayers import _cudnn_int8_applies, qconv_cudnn_int8
    from ember.errors import BuildError
    from ember.plan.config import Precision

    g, node, _, _ = _case(name)
    assert not _cudnn_int8_applies(node, g)
    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    with pytest.raises(BuildError, match="Triton INT8 tactics run this layer"):
        qconv_cudnn_int8(node, CompileContext(g, consts, torch.device("cpu"), "cudnn_int8", Precision.INT8))


def test_int8_epilogue_refuses_an_activation_cudnn_cannot_fuse():
    from ember.backends.cuda.kernels.qlayers import int8_epilogue
    from ember.errors import BuildError

    a = QConvAttrs(ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)), QuantParams(0.1, 0, DType.INT8), (0.01,) * 4,
                   Activation.SIGMOID)
    with pytest.raises(BuildError, match="sigmoid"):
        int8_epilogue(torch.ones(4, 4, 1, 1, dtype=torch.int8), a, None)


@pytest.mark.cuda
@pytest.mark.parametrize("name", UNRESIDUAL)
def test_cudnn_int8_tactic_on_cuda(name):
    from ember.backends.base import CompileContext
    from ember.backends.cuda.kernels.qlayers import qconv_cudnn_int8
    from ember.backends.cuda.libs import cudnn_graph
    from ember.plan.config import Precision

    if not cudnn_graph.available():
        pytest.skip("the cuDNN frontend is not installed")
    g, node, x, r = _case(name)
    want = _reference(g, node, x, r)
    dev = torch.device("cuda")
    consts = {k: torch.from_numpy(v).to(dev) for k, v in g.constants.items()}
    ctx = CompileContext(g, consts, dev, "cudnn_int8", Precision.INT8)
    kernel = qconv_cudnn_int8(node, ctx)
    got = kernel([x.to(dev), consts["w"], consts["b"], None])[0].cpu()
    _close_to_reference(got, want, node.attrs.out is not None, name)


@pytest.mark.parametrize("name", UNRESIDUAL)
def test_the_tactic_feeds_cudnn_what_the_layer_needs(name, monkeypatch):
    """The tactic's own steps (the channel padding to fours, the zero-point border, the epilogue,
    the destination) on CPU tensors, with the cuDNN graph replaced by its model: the layer's
    numbers come out, and every operand is what a verified graph takes (per-channel scale and
    bias, int8 channels-last input with a channel count divisible by 4)."""
    from ember.backends.base import CompileContext
    from ember.backends.cuda.kernels import qlayers
    from ember.plan.config import Precision

    seen: dict = {}

    class FakeGraph:
        def __init__(self, padding, stride, dilation):
            self.padding, self.stride, self.dilation = padding, stride, dilation

        def run(self, t):
            ep = qlayers.Int8Epilogue(t["scale"], t["bias"], seen["act"], seen["clip"])
            t["out"].copy_(qlayers.int8_epilogue_reference(t["x"], t["w"], ep, tuple(self.padding),
                                                           tuple(self.stride), tuple(self.dilation), t["out"].dtype))

    def fake_graph(x, w, scale, bias, out, padding, stride, dilation, act, clip, check=None):
        assert x.dtype == torch.int8 and x.is_contiguous(memory_format=torch.channels_last)
        assert x.shape[1] % 4 == 0 and w.shape[1] == x.shape[1]
        assert tuple(scale.shape) == tuple(bias.shape) == (1, w.shape[0], 1, 1)
        seen.update(act=act, clip=clip)
        return FakeGraph(padding, stride, dilation)

    monkeypatch.setattr(qlayers.cudnn_graph, "qconv_graph", fake_graph)
    g, node, x, r = _case(name)
    want = _reference(g, node, x, r)
    consts = {k: torch.from_numpy(v) for k, v in g.constants.items()}
    kernel = qlayers.qconv_cudnn_int8(node, CompileContext(g, consts, torch.device("cpu"), "cudnn_int8",
                                                           Precision.INT8))
    got = kernel([x, consts["w"], consts["b"], None])[0]
    assert tuple(got.shape) == tuple(want.shape)
    assert got.dtype == (torch.int8 if node.attrs.out is not None else torch.float16)
    _close_to_reference(got, want, node.attrs.out is not None, name)

"""Conv, ConvTranspose, BatchNormalization and FusedConv against ONNX Runtime / composition."""
from __future__ import annotations

import numpy as np
import pytest

from ember.ir.optype import OpType
from ember.ops.attrs import (
    AutoPad,
    BatchNormAttrs,
    ConvAttrs,
    ConvTransposeAttrs,
)

F32 = np.float32


def _onnx_conv_attrs(a: ConvAttrs) -> dict:
    out = {"kernel_shape": list(a.kernel_shape), "strides": list(a.strides),
           "dilations": list(a.dilations), "group": a.group}
    if a.auto_pad is AutoPad.NOTSET:
        out["pads"] = list(a.pads)
    else:
        out["auto_pad"] = a.auto_pad.value
    return out


CONV_CASES = [
    # (input shape, weight shape, attrs)
    ((1, 3, 9, 9), (4, 3, 3, 3), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1))),
    ((2, 4, 10, 9), (6, 2, 3, 2), ConvAttrs((3, 2), (2, 1), (0, 1, 2, 0), (1, 2), group=2)),
    ((1, 6, 8, 8), (6, 1, 3, 3), ConvAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), group=6)),
    ((1, 3, 11), (5, 3, 4), ConvAttrs((4,), (2,), (1, 2), (2,))),
    ((1, 2, 5, 6, 7), (3, 2, 2, 3, 2), ConvAttrs((2, 3, 2), (1, 2, 1), (0, 1, 1, 1, 0, 0), (1, 1, 2))),
    ((1, 3, 10, 9), (4, 3, 3, 4), ConvAttrs((3, 4), (2, 3), (), (1, 1), auto_pad=AutoPad.SAME_UPPER)),
    ((1, 3, 10, 9), (4, 3, 3, 4), ConvAttrs((3, 4), (2, 3), (), (1, 1), auto_pad=AutoPad.SAME_LOWER)),
    ((1, 3, 10, 9), (4, 3, 3, 4), ConvAttrs((3, 4), (2, 3), (), (2, 1), auto_pad=AutoPad.VALID)),
    ((1, 8, 7, 7), (16, 8, 1, 1), ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1))),
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(check, rng, xs, ws, attrs, bias):
    inputs = {"x": rng.standard_normal(xs).astype(F32), "w": rng.standard_normal(ws).astype(F32)}
    if bias:
        inputs["b"] = rng.standard_normal(ws[0]).astype(F32)
    check("Conv", inputs, OpType.CONV, attrs, _onnx_conv_attrs(attrs), const=(1, 2), rtol=1e-4, atol=1e-4)


def _onnx_deconv_attrs(a: ConvTransposeAttrs) -> dict:
    out = {"kernel_shape": list(a.kernel_shape), "strides": list(a.strides),
           "dilations": list(a.dilations), "group": a.group, "output_padding": list(a.output_padding)}
    if a.output_shape is not None:
        out["output_shape"] = list(a.output_shape)
    if a.auto_pad is AutoPad.NOTSET:
        if a.output_shape is None:
            out["pads"] = list(a.pads)
    else:
        out["auto_pad"] = a.auto_pad.value
    return out


DECONV_CASES = [
    ((1, 4, 5, 5), (4, 3, 3, 3), ConvTransposeAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1))),
    ((1, 4, 5, 6), (4, 2, 3, 2), ConvTransposeAttrs((3, 2), (2, 3), (0, 1, 2, 0), (1, 1), (0, 1), group=2)),
    ((2, 3, 6), (3, 2, 4), ConvTransposeAttrs((4,), (3,), (1, 1), (2,), (2,))),
    ((1, 2, 4, 4), (2, 3, 3, 3), ConvTransposeAttrs((3, 3), (2, 2), (), (1, 1), (0, 0), output_shape=(9, 10))),
    ((1, 2, 4, 5), (2, 3, 3, 3), ConvTransposeAttrs((3, 3), (2, 2), (), (1, 1), (0, 0), auto_pad=AutoPad.SAME_UPPER)),
    ((1, 2, 4, 5), (2, 3, 3, 3), ConvTransposeAttrs((3, 3), (2, 2), (), (1, 1), (0, 0), auto_pad=AutoPad.SAME_LOWER)),
    ((1, 2, 3, 3, 3), (2, 2, 2, 2, 2), ConvTransposeAttrs((2, 2, 2), (2, 2, 2), (0,) * 6, (1, 1, 1), (1, 0, 1))),
]


@pytest.mark.parametrize("xs,ws,attrs", [c for c in DECONV_CASES if c[2].group == 1])
def test_conv_transpose(check, rng, xs, ws, attrs):
    inputs = {"x": rng.standard_normal(xs).astype(F32), "w": rng.standard_normal(ws).astype(F32),
              "b": rng.standard_normal(ws[1] * attrs.group).astype(F32)}
    check("ConvTranspose", inputs, OpType.CONV_TRANSPOSE, attrs, _onnx_deconv_attrs(attrs),
          const=(1, 2), rtol=1e-4, atol=1e-4, oracle="reference")


# both oracles: the reference evaluator mishandles groups, so it skips those cases (above)
@pytest.mark.parametrize("xs,ws,attrs", DECONV_CASES)
def test_conv_transpose_ort(check, rng, xs, ws, attrs):
    inputs = {"x": rng.standard_normal(xs).astype(F32), "w": rng.standard_normal(ws).astype(F32)}
    check("ConvTranspose", inputs, OpType.CONV_TRANSPOSE, attrs, _onnx_deconv_attrs(attrs),
          const=(1,), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3), (1, 3, 4, 2, 2)])
def test_batch_norm(check, rng, shape):
    c = shape[1]
    inputs = {"x": rng.standard_normal(shape).astype(F32), "s": rng.standard_normal(c).astype(F32),
              "b": rng.standard_normal(c).astype(F32), "m": rng.standard_normal(c).astype(F32),
              "v": rng.uniform(0.5, 2, c).astype(F32)}
    check("BatchNormalization", inputs, OpType.BATCH_NORM, BatchNormAttrs(1e-3), {"epsilon": 1e-3},
          const=(1, 2, 3, 4), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("auto_pad", [AutoPad.SAME_UPPER, AutoPad.NOTSET])
def test_prepacked_conv_with_dynamic_input_shape(rng, auto_pad):
    """A weight prepacked without knowing the input size still serves every input size."""
    import torch

    from ember.backends.base import CompileContext
    from ember.backends.cpu import CPUBackend
    from ember.ir.dtype import DType
    from ember.ir.graph import Graph, Node
    from ember.ir.types import TensorType

    w = rng.standard_normal((6, 3, 3, 3)).astype(F32)
    attrs = ConvAttrs((3, 3), (2, 2), (1, 0, 1, 2) if auto_pad is AutoPad.NOTSET else (), (1, 1),
                      auto_pad=auto_pad)
    node = Node("c", OpType.CONV, ("x", "w"), ("y",), attrs)
    types = {"x": TensorType(DType.FLOAT32, ("batch", 3, "h", "w")), "w": TensorType(DType.FLOAT32, w.shape)}
    graph = Graph("g", [node], ["x"], ["y"], types, {"w": w})
    backend = CPUBackend()
    assert [t for t in backend.tactics(node, graph) if t != "onednn_persistent"][0] == "mkldnn_prepacked"
    consts = {"w": torch.from_numpy(w)}
    fast = backend.compile_node(node, CompileContext(graph, consts, torch.device("cpu"), "mkldnn_prepacked"))
    ref = backend.compile_node(node, CompileContext(graph, consts, torch.device("cpu"), "aten"))
    for shape in [(1, 3, 9, 11), (2, 3, 16, 7)]:
        x = torch.from_numpy(rng.standard_normal(shape).astype(F32))
        with torch.inference_mode():
            torch.testing.assert_close(fast([x, consts["w"]])[0], ref([x, consts["w"]])[0], rtol=1e-4, atol=1e-4)

"""The optimizer on explicitly quantized graphs: constant folding turns the DequantizeLinear of
constant weights into float32 weights (exact: the CPU kernels evaluate it), the Q/DQ pair on an
activation stays and no fusion reaches across it; a half-precision build keeps the Q/DQ nodes in
fp32, whose arithmetic ONNX defines in float32."""
from __future__ import annotations

import numpy as np

from ember.ir import Node, OpType
from ember.ir.dtype import DType
from ember.ops.attrs import ConvAttrs, QuantizeAttrs

from passkit import assert_same_outputs, ir_graph, ops, run_pass


def _qdq_conv_relu(cin: int = 3):
    nodes = [
        Node("q", OpType.QUANTIZE_LINEAR, ("x", "s", "z"), ("xq",), QuantizeAttrs()),
        Node("dq", OpType.DEQUANTIZE_LINEAR, ("xq", "s", "z"), ("xd",), QuantizeAttrs()),
        Node("dq_w", OpType.DEQUANTIZE_LINEAR, ("w", "ws"), ("wd",), QuantizeAttrs(axis=0)),
        Node("conv", OpType.CONV, ("xd", "wd", "b"), ("c",),
             ConvAttrs(kernel_shape=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1))),
        Node("relu", OpType.RELU, ("c",), ("r",)),
        Node("q2", OpType.QUANTIZE_LINEAR, ("r", "s2", "z"), ("rq",), QuantizeAttrs()),
        Node("dq2", OpType.DEQUANTIZE_LINEAR, ("rq", "s2", "z"), ("y",), QuantizeAttrs()),
    ]
    r = np.random.default_rng(0)
    consts = {"s": np.array(0.05, np.float32), "z": np.array(128, np.uint8), "s2": np.array(0.02, np.float32),
              "w": r.integers(-127, 128, (4, cin, 3, 3)).astype(np.int8),
              "ws": r.uniform(0.005, 0.02, 4).astype(np.float32), "b": r.normal(0, 0.1, 4).astype(np.float32)}
    return ir_graph(nodes, {"x": (1, cin, 6, 6)}, ["y"], consts)


def test_fold_turns_weight_dequantize_into_float_weights_and_keeps_activation_qdq():
    g = _qdq_conv_relu()
    out, fired = run_pass(g, "fold_constants")
    assert ops(out) == ["QuantizeLinear", "DequantizeLinear", "Conv", "Relu", "QuantizeLinear", "DequantizeLinear"]
    assert out.constants["wd"].dtype == np.float32 and fired["f(constants) => constant"] == 1
    assert_same_outputs(g, out, rtol=0, atol=0)


def test_whole_pipeline_folds_the_input_pair_into_an_int8_conv_and_keeps_the_output_pair():
    from ember.passes.pipeline import run_pipeline
    from ember.plan.config import BuildConfig

    g = _qdq_conv_relu()
    out = run_pipeline(g, BuildConfig(device="cpu"))
    assert [n.op for n in out.graph.nodes] == [OpType.QCONV, OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR]
    qconv = out.graph.nodes[0]
    assert qconv.inputs[0] == "x" and qconv.attrs.activation.value == "relu"
    assert (qconv.attrs.x.scale, qconv.attrs.x.zero_point) == (np.float32(0.05), 128)
    assert out.records.precision.layers[qconv.name] == "int8"
    x = np.random.default_rng(1).uniform(-4, 4, (1, 3, 6, 6)).astype(np.float32)
    # the output pair quantizes to steps of 0.02: the INT8 conv is within one step of ONNX's arithmetic
    assert_same_outputs(g, out.graph, {"x": x}, rtol=0, atol=0.0201)


def test_whole_pipeline_on_cuda_folds_the_input_pair_and_stores_8_bits_signed():
    from ember.passes.pipeline import run_pipeline
    from ember.plan.config import BuildConfig

    out = run_pipeline(_qdq_conv_relu(cin=4), BuildConfig(device="cuda"))
    assert [n.op for n in out.graph.nodes] == [OpType.QCONV, OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR]
    qconv = out.graph.nodes[0]
    # CUDA's kernels take int8 (the CPU's uint8 128 is int8 0: the same values)
    assert qconv.inputs[0] == "x" and (qconv.attrs.x.scale, qconv.attrs.x.zero_point) == (np.float32(0.05), 0)
    assert qconv.attrs.x.dtype is DType.INT8


def test_a_cuda_build_runs_a_three_channel_qdq_convolution_as_written_in_half_precision():
    """On CUDA a convolution of an image's 3 channels has no fast 8-bit kernel: its Q/DQ pair is
    not folded, the graph runs as written (Q/DQ in fp32, the convolution fp16), the rule counted."""
    from ember.passes.int8 import CUDA_FEW_CHANNELS
    from ember.passes.pipeline import run_pipeline
    from ember.plan.config import BuildConfig

    out = run_pipeline(_qdq_conv_relu(), BuildConfig(device="cuda"))
    assert OpType.QCONV not in [n.op for n in out.graph.nodes]
    assert any(n.op is OpType.QUANTIZE_LINEAR for n in out.graph.nodes)
    fired = {k: v for st in out.stats for k, v in st.fired.items()}
    assert fired[CUDA_FEW_CHANNELS] == 1


def test_half_precision_build_keeps_quantization_ops_in_fp32():
    from ember.passes.pipeline import run_pipeline
    from ember.plan.config import BuildConfig

    out = run_pipeline(_qdq_conv_relu(), BuildConfig(device="cuda", precision="fp16"))
    layers = out.records.precision.layers
    for n in out.graph.nodes:
        if n.op in (OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR):
            assert layers[n.name] == "fp32", n.name
        elif n.op is OpType.QCONV:  # the folded input pair: an INT8 layer
            assert layers[n.name] == "int8", n.name
        elif out.graph.types[n.outputs[0]].dtype is DType.FLOAT32:
            assert layers[n.name] == "fp16", n.name

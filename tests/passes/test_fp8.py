"""FP8 Q/DQ models (``ember.passes.fp8``): on CUDA a GEMM behind a float8e4m3fn Q/DQ pair becomes an
FP8 layer reading the pair's input, with the pair's scale recorded; on the CPU the model runs as
written. The folded layer's FP8 kernel (``gemm_fp8``, run here on CPU tensors) then computes what
ONNX's reference computes for the model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ember.backends.base import CompileContext
from ember.frontends.onnx import import_onnx as import_model
from ember.ir.dtype import DType
from ember.ir.optype import OpType
from ember.passes.fp8 import FOLDED
from ember.passes.pipeline import run_pipeline
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import QuantDType

F8 = DType.FLOAT8E4M3FN.to_numpy()


def _model(scale_q: float = 0.02, scale_dq: float = 0.02, reader: bool = False) -> bytes:
    """x -> Q/DQ (float8e4m3fn, per tensor) -> MatMul with a float8 weight dequantized per tensor
    -> + bias -> Relu; ``reader``: the dequantized input is also a graph output."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    w_scale = np.float32(np.abs(w).max() / 448)
    inits = [numpy_helper.from_array(np.array(scale_q, np.float32), "sq"),
             numpy_helper.from_array(np.array(scale_dq, np.float32), "sdq"),
             numpy_helper.from_array(np.array(0, np.float32).astype(F8), "zp"),
             numpy_helper.from_array((w / w_scale).astype(F8), "w8"),
             numpy_helper.from_array(np.array(w_scale, np.float32), "ws"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sq", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sdq", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w8", "ws"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["y"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 16])]
    if reader:
        outs.append(helper.make_tensor_value_info("xd", TensorProto.FLOAT, [8, 32]))
    g = helper.make_graph(nodes, "fp8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32])], outs,
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def _gemm(opt):
    (node,) = [n for n in opt.graph.nodes if n.op in (OpType.FUSED_GEMM, OpType.GEMM, OpType.MATMUL)]
    return node


def test_on_cuda_the_pair_folds_into_an_fp8_layer_with_its_scale():
    opt = run_pipeline(import_model(_model()), BuildConfig(device="cuda"), verify=True)
    node = _gemm(opt)
    assert node.inputs[0] == "x"
    assert not any(n.op in (OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR) for n in opt.graph.nodes)
    assert opt.records.precision.of(node.name, Precision.FP32) is Precision.FP8
    rec = opt.records.quantization.get("x")
    assert rec is not None and rec.dtype is QuantDType.FP8_E4M3 and rec.scale == pytest.approx((0.02,))
    assert rec.source == "qdq"
    assert sum(s.fired.get(FOLDED, 0) for s in opt.stats) == 1


def test_on_the_cpu_the_model_runs_as_written():
    opt = run_pipeline(import_model(_model()), BuildConfig(device="cpu"))
    assert any(n.op is OpType.QUANTIZE_LINEAR for n in opt.graph.nodes)
    assert _gemm(opt).inputs[0] != "x"


@pytest.mark.parametrize("case", ["scales_differ", "pair_read_elsewhere"])
def test_pairs_that_are_not_a_plain_input_quantization_stay(case):
    model = _model(scale_dq=0.03) if case == "scales_differ" else _model(reader=True)
    opt = run_pipeline(import_model(model), BuildConfig(device="cuda"))
    if case == "scales_differ":
        assert _gemm(opt).inputs[0] != "x"
        assert opt.records.quantization.get("x") is None
    else:  # folded into the GEMM, and still computed for the other reader
        assert _gemm(opt).inputs[0] == "x"
        assert any(n.op is OpType.DEQUANTIZE_LINEAR for n in opt.graph.nodes)


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="this PyTorch has no _scaled_mm")
def test_the_folded_layer_computes_what_onnx_reference_computes():
    from ember.backends.cuda import CUDABackend

    model = _model()
    opt = run_pipeline(import_model(model), BuildConfig(device="cuda"))
    node = _gemm(opt)
    consts = {k: torch.from_numpy(np.asarray(v)) for k, v in opt.graph.constants.items()}
    ctx = CompileContext(opt.graph, consts, torch.device("cpu"), "cublaslt_fp8", Precision.FP8, opt.records,
                         BuildConfig(device="cuda"))
    kernel = CUDABackend().compile_node(node, ctx)
    x = np.random.default_rng(1).standard_normal((8, 32)).astype(np.float32) * 3
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    # the input in fp16 as the engine's fp16 activations hold it; the rest is the model's arithmetic
    got = kernel([torch.from_numpy(x).half()])[0].float().numpy()
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())


def _conv_model() -> bytes:
    """x [1, 16, 6, 6] -> Q/DQ (float8e4m3fn, per tensor) -> Conv 3x3 with a float8 weight
    dequantized per tensor -> Relu."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    w_scale = np.float32(np.abs(w).max() / 448)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.float32).astype(F8), "zp"),
             numpy_helper.from_array((w / w_scale).astype(F8), "w8"),
             numpy_helper.from_array(np.array(w_scale, np.float32), "ws"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w8", "ws"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd", "bias"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "fp8conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def test_on_cuda_a_pair_in_front_of_a_convolution_folds_into_an_fp8_convolution():
    """The convolution's FP8 layer (``kernels/conv_fp8.py``) reads ``x``, with the pair's scale
    recorded; on the CPU the same model keeps its Q/DQ nodes."""
    opt = run_pipeline(import_model(_conv_model()), BuildConfig(device="cuda"), verify=True)
    (node,) = [n for n in opt.graph.nodes if n.op in (OpType.CONV, OpType.FUSED_CONV)]
    assert node.inputs[0] == "x"
    assert not any(n.op in (OpType.QUANTIZE_LINEAR, OpType.DEQUANTIZE_LINEAR) for n in opt.graph.nodes)
    assert opt.records.precision.of(node.name, Precision.FP32) is Precision.FP8
    rec = opt.records.quantization.get("x")
    assert rec is not None and rec.dtype is QuantDType.FP8_E4M3 and rec.scale == (pytest.approx(0.05),)
    cpu = run_pipeline(import_model(_conv_model()), BuildConfig(device="cpu"), verify=True)
    assert any(n.op is OpType.QUANTIZE_LINEAR for n in cpu.graph.nodes)

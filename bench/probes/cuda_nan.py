"""Probe: does a fused conv/GEMM + ReLU/Clip keep NaN on CUDA (fp32, fp16), as ONNX Runtime does?
Run on a GPU machine from the repository root: ``python bench/probes/cuda_nan.py``."""
import sys

import numpy as np

sys.path.insert(0, "tests/backends/cpu")
import onnxruntime as ort
from test_nan_propagation import _model

import ember

for kind in ("conv_relu", "conv_relu6", "conv_add_relu", "gemm_relu"):
    for prec in ("fp32", "fp16"):
        m = _model(kind)
        m.ir_version = 8  # the GPU machine's ONNX Runtime reads IR <= 13
        shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        x = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32); x.reshape(-1)[5] = np.nan
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        e = ember.build(m, ember.BuildConfig(device="cuda", precision=prec))
        with e.create_context() as c: got = np.asarray(c.infer({"x": x})["y"])
        same = np.array_equal(np.isnan(got), np.isnan(want))
        verdict = "NaN ok" if same else f"NaN LOST {np.isnan(got).sum()} vs {np.isnan(want).sum()}"
        print(kind, prec, [layer.tactic for layer in e.plan.layers], verdict)

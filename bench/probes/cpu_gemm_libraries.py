"""Probe: BERT-base's fp32 GEMMs on every library within Ember's reach, against ONNX Runtime (issue 19).

    .venv/bin/python bench/probes/cpu_gemm_libraries.py [--rows 128 1024] [--threads 2] [--rounds 15]

Each product ``x[M, K] @ w[K, N] + b`` at BERT-base's shapes (QKV 768x2304, attention output 768x768,
FFN 768x3072 and 3072x768) runs on:
- ``onednn``: PyTorch's oneDNN linear on a prepacked weight (Ember's ``mkldnn_prepacked`` tactic);
- ``aten``: ``torch.nn.functional.linear`` (MKL's ``sgemm`` on the plain weight: Ember's ``aten`` tactic);
- ``mkl_packed``: MKL's packed GEMM (``torch.ops.mkl._mkl_linear``, the weight packed for M rows once;
  not an Ember tactic);
- ``ort``: a one-node ONNX Runtime MatMul + Add (MLAS, its weight prepacked at session creation).

The runtimes take turns in blocks of 5 calls after 3 untimed ones and a 50 ms pause (without the
pause, a block right after another library's spinning threads loses up to half its speed: on the
AVX2 EPYC of the twenty-seventh session oneDNN read 42-51 GFLOP/s right after OpenBLAS's block,
100-108 alone). Prints GFLOP/s (median over the rounds) per shape and library.

Twenty-seventh session, AVX2 EPYC (2 cores), M = 128: oneDNN 70-109, aten 72-100, MKL packed
78-88, ORT 105-119 GFLOP/s; oneDNN loses most on 768x768 (70 against 105).
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]


def ort_session(w: np.ndarray, b: np.ndarray, m: int, threads: int) -> ort.InferenceSession:
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def libraries(m: int, k: int, n: int, threads: int) -> tuple[dict[str, Callable[[], Any]], dict[str, float]]:
    """The product on each library, and each one's max abs difference from float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T)), torch.from_numpy(b)
    fns: dict[str, Callable[[], Any]] = {}
    packed = torch.ops.mkldnn._reorder_linear_weight(wt, m)
    fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(xt, packed, bt, "none", [], "")
    fns["aten"] = lambda: torch.nn.functional.linear(xt, wt, bt)
    if torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"):
        mkl_w = torch.ops.mkl._mkl_reorder_linear_weight(wt, m)
        fns["mkl_packed"] = lambda: torch.ops.mkl._mkl_linear(xt, mkl_w, wt, bt, m)
    sess = ort_session(w, b, m, threads)
    fns["ort"] = lambda: sess.run(None, {"x": x})[0]
    ref = x.astype(np.float64) @ w.astype(np.float64) + b
    err = {}
    for name, f in fns.items():
        y = f()
        y = y.numpy() if isinstance(y, torch.Tensor) else y
        err[name] = float(np.abs(y - ref).max())
    return fns, err


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[128, 1024], help="M: 128 tokens x batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for m in args.rows:
        for k, n in SHAPES:
            fns, err = libraries(m, k, n, args.threads)
            times: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(args.rounds):
                for name, f in fns.items():
                    time.sleep(0.05)
                    for _ in range(3):
                        f()
                    t0 = time.perf_counter()
                    for _ in range(5):
                        f()
                    times[name].append((time.perf_counter() - t0) / 5)
            flop = 2.0 * m * k * n
            row = "  ".join(f"{name} {flop / statistics.median(t) / 1e9:6.1f}" for name, t in times.items())
            worst = max(err.values())
            print(f"M={m} {k}x{n}: {row}  GFLOP/s (max abs error vs float64 {worst:.1e})", flush=True)


if __name__ == "__main__":
    main()

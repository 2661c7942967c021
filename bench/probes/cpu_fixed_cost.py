"""Probe: what a layer costs beyond its arithmetic, Ember against ONNX Runtime (issue 19). A chain
of L 1x1 convolutions + ReLU of C channels on an HxW batch-1 image (add ``--dw``: every other
layer a 3x3 depthwise one), built by both runtimes, timed taking turns in blocks; and Ember's
chain alone in a tight loop (``run_chain``, no Python around it). With tiny layers (``50 16 8``)
the per-layer time is the fixed cost: the chain's step, oneDNN's execute path and, at two
threads, OpenMP's fork and join.

    .venv/bin/python bench/probes/cpu_fixed_cost.py 50 16 8 [--threads 2] [--dw]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import ember  # noqa: E402
from ember.backends.cpu.chains import run_chain  # noqa: E402


def model(layers: int, c: int, h: int, dw: bool) -> bytes:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        depthwise = dw and i % 2 == 1
        shape = (c, 1, 3, 3) if depthwise else (c, c, 1, 1)
        w = (rng.standard_normal(shape) * (0.3 if depthwise else 1 / np.sqrt(c))).astype(np.float32)
        extra = {"group": c, "pads": [1, 1, 1, 1]} if depthwise else {}
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], **extra),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")]
        x = f"r{i}"
    g = helper.make_graph(nodes, "fixed-cost", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("layers", type=int)
    ap.add_argument("channels", type=int)
    ap.add_argument("size", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dw", action="store_true")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    m = model(args.layers, args.channels, args.size, args.dw)
    ctx = ember.build(m, ember.BuildConfig(device="cpu"), progress=False).create_context()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])
    feeds = {"x": np.random.default_rng(1).standard_normal((1, args.channels, args.size, args.size))
             .astype(np.float32)}
    times: dict[str, list[float]] = {"ember": [], "ort": []}
    runners = {"ember": lambda: ctx.infer(feeds), "ort": lambda: session.run(None, feeds)}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            time.sleep(0.1)  # as bench/cpu.py: ONNX Runtime's workers spin after its block
            fn()
            for _ in range(10):
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e6)
    program = ctx.executor.program
    chain = program._chains[0]
    x = torch.from_numpy(feeds["x"]).contiguous(memory_format=torch.channels_last)
    for _ in range(100):
        run_chain(program._ext, chain, x)
    n = int(__import__("os").environ.get("FIXED_COST_N", 2000))
    t0 = time.perf_counter()
    for _ in range(n):
        run_chain(program._ext, chain, x)
    alone = (time.perf_counter() - t0) / n * 1e6
    e, o = statistics.median(times["ember"]), statistics.median(times["ort"])
    print(f"{args.layers} layers, {args.channels} channels, {args.size}x{args.size}, dw={args.dw}, "
          f"{args.threads} threads ({chain.layout}, {chain.convs[0].impl}):")
    print(f"  taking turns: Ember {e:.0f} us ({e / args.layers:.2f} us a layer), "
          f"ONNX Runtime {o:.0f} us ({o / args.layers:.2f} us a layer)")
    print(f"  Ember's chain alone, in a loop: {alone:.0f} us ({alone / args.layers:.2f} us a layer)")
    ctx.close()


if __name__ == "__main__":
    main()

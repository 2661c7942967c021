"""Probe: the tools' CUDA paths (bench, profile, inspect --device-memory, run) on a small model.

    python bench/probes/tools_cuda_paths.py

They reach a CUDA engine only through ``ExecutionContext.executor`` (the backend's public
per-context executor).
"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

rng = np.random.default_rng(0)
inits = [nh.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
         nh.from_array(rng.standard_normal(8).astype(np.float32), "b"),
         nh.from_array(rng.standard_normal((5, 8)).astype(np.float32), "fw"),
         nh.from_array(rng.standard_normal(5).astype(np.float32), "fb")]
nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         h.make_node("Relu", ["c"], ["r"], name="relu"),
         h.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
         h.make_node("Flatten", ["g"], ["f"], name="flat"),
         h.make_node("Gemm", ["f", "fw", "fb"], ["l"], name="fc", transB=1),
         h.make_node("Softmax", ["l"], ["y"], name="softmax", axis=-1)]
g = h.make_graph(nodes, "small", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                 [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), "/tmp/small.onnx")

from ember.cli import main  # noqa: E402

p = "/tmp/small.onnx"
for argv in (["bench", p, "--device", "cuda", "--batch", "4", "--iterations", "20", "--peers", "onnxruntime",
              "--json", "/tmp/b.json"],
             ["profile", p, "--device", "cuda", "--batch", "4", "--iterations", "5", "--top", "3"],
             ["build", p, "-o", "/tmp/s.ember", "--device", "cuda", "--precision", "fp16",
              "--shapes", "x:4x3x8x8"],
             ["inspect", "/tmp/s.ember", "--device-memory", "--no-layers"],
             ["run", "/tmp/s.ember", "--random"]):
    print("=====", " ".join(argv[:2]), "->", main(argv), flush=True)
r = json.load(open("/tmp/b.json"))
print({k: r["ember"].get(k) for k in ("split_ms", "cuda_graphs", "streams", "fallback", "arena")})
print(r.get("accuracy"))

"""Helpers of the Ray integration tests: tiny ONNX models and their repository layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((16, 32)).astype(np.float32)
B1 = RNG.standard_normal(32).astype(np.float32)
W2 = RNG.standard_normal((32, 8)).astype(np.float32)

MLP_CONFIG = ("max_batch_size: 8\n"
              "dynamic_batching:\n  max_queue_delay_microseconds: 3000\n  preferred_batch_size: [8]\n")
PAIR_CONFIG = "max_batch_size: 16\n"


def mlp_model() -> onnx.ModelProto:
    """y = softmax(relu(x @ W1 + B1) @ W2), x: float32[batch, 16] -> y: float32[batch, 8]."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])
    nodes = [oh.make_node("Gemm", ["x", "w1", "b1"], ["h"]), oh.make_node("Relu", ["h"], ["r"]),
             oh.make_node("MatMul", ["r", "w2"], ["m"]), oh.make_node("Softmax", ["m"], ["y"], axis=-1)]
    graph = oh.make_graph(nodes, "mlp", [x], [y],
                          [onh.from_array(W1, "w1"), onh.from_array(B1, "b1"), onh.from_array(W2, "w2")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def pair_model() -> onnx.ModelProto:
    """Two named inputs and outputs: total = sum(a, axis=1) (float32[batch]), idx = k + 1 (int64[batch, 2])."""
    a = oh.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["batch", 3])
    k = oh.make_tensor_value_info("k", onnx.TensorProto.INT64, ["batch", 2])
    total = oh.make_tensor_value_info("total", onnx.TensorProto.FLOAT, ["batch"])
    idx = oh.make_tensor_value_info("idx", onnx.TensorProto.INT64, ["batch", 2])
    nodes = [oh.make_node("ReduceSum", ["a", "axes"], ["total"], keepdims=0),
             oh.make_node("Add", ["k", "one"], ["idx"])]
    graph = oh.make_graph(nodes, "pair", [a, k], [total, idx],
                          [onh.from_array(np.array([1], np.int64), "axes"),
                           onh.from_array(np.array(1, np.int64), "one")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def write_model(root: Path, name: str, model: onnx.ModelProto, config: str) -> Path:
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / name / "1" / "model.onnx")
    (root / name / "config.yaml").write_text(config)
    return root / name


TABLE = np.arange(40, dtype=np.float32).reshape(10, 4)
GATHER_CONFIG = "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_microseconds: 1000\n"


def gather_model() -> onnx.ModelProto:
    """rows = TABLE[ids]: ids int64[batch, 2] -> float32[batch, 2, 4]; an id past 9 is the request's fault."""
    ids = oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", 2])
    rows = oh.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, ["batch", 2, 4])
    graph = oh.make_graph([oh.make_node("Gather", ["table", "ids"], ["rows"], axis=0)], "gather", [ids], [rows],
                          [onh.from_array(TABLE, "table")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])

"""Helpers of the serve tests: tiny ONNX models, a repository layout, a Python-function engine."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

W = np.arange(16, dtype=np.float32).reshape(4, 4) / 10 - 0.5


def matmul_relu_model() -> onnx.ModelProto:
    """y = relu(x @ W), x: float32[batch, 4]."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    nodes = [oh.make_node("MatMul", ["x", "w"], ["m"]), oh.make_node("Relu", ["m"], ["y"])]
    graph = oh.make_graph(nodes, "simple", [x], [y], [onh.from_array(W, "w")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def two_io_model() -> onnx.ModelProto:
    """sum = a + b (float32[batch, n], n dynamic) and idx = k + 1 (int64[batch, 2])."""
    a = oh.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["batch", "n"])
    b = oh.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["batch", "n"])
    k = oh.make_tensor_value_info("k", onnx.TensorProto.INT64, ["batch", 2])
    s = oh.make_tensor_value_info("sum", onnx.TensorProto.FLOAT, ["batch", "n"])
    i = oh.make_tensor_value_info("idx", onnx.TensorProto.INT64, ["batch", 2])
    nodes = [oh.make_node("Add", ["a", "b"], ["sum"]), oh.make_node("Add", ["k", "one"], ["idx"])]
    graph = oh.make_graph(nodes, "two_io", [a, b, k], [s, i], [onh.from_array(np.array(1, np.int64), "one")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def fixed_model() -> onnx.ModelProto:
    """y = x * 2 for x: float32[2, 3] (no batch dim: served with max_batch_size 0)."""
    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    graph = oh.make_graph([oh.make_node("Mul", ["x", "two"], ["y"])], "fixed", [x], [y],
                          [onh.from_array(np.array(2, np.float32), "two")])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def write_model(root: Path, name: str, model: onnx.ModelProto, config: str, version: int = 1) -> None:
    (root / name / str(version)).mkdir(parents=True, exist_ok=True)
    onnx.save(model, root / name / str(version) / "model.onnx")
    (root / name / "config.yaml").write_text(config)


REPOSITORY = {
    "simple": (matmul_relu_model, "max_batch_size: 8\ninstance_count: 2\n"
                                  "dynamic_batching:\n  max_queue_delay_microseconds: 2000\n"),
    "simple_nobatch": (matmul_relu_model, "max_batch_size: 8\n"),
    "two_io": (two_io_model, "max_batch_size: 4\ndynamic_batching: {max_queue_delay_microseconds: 1000}\n"
                             "inputs:\n"
                             "  - {name: a, datatype: FP32, shape: [-1], profile: {min: [1], opt: [4], max: [16]}}\n"
                             "  - {name: b, datatype: FP32, shape: [-1], profile: {min: [1], opt: [4], max: [16]}}\n"
                             "  - {name: k, datatype: INT64, shape: [2]}\n"),
    "fixed": (fixed_model, "max_batch_size: 0\n"),
    # waits 1 s for company in the queue, and holds one request at most: full-queue and timeout tests
    "queued": (matmul_relu_model, "max_batch_size: 8\ndynamic_batching:\n  max_queue_delay_microseconds: 1000000\n"
                                  "  max_queue_size: 1\n"),
}


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W, 0)


# ---- an engine made of a Python function, for scheduler tests ------------------------------
class FakeEngine:
    """A ``ModelEngine`` (``ember.serve.engines``) whose contexts call ``fn``; records each call's
    batch size and thread."""

    def __init__(self, fn, inputs, outputs, delay_s: float = 0.0) -> None:
        self.fn = fn
        self.inputs = [SimpleNamespace(name=n, dtype=np.dtype(d), shape=s) for n, d, s in inputs]
        self.outputs = [SimpleNamespace(name=n, dtype=np.dtype(d), shape=s) for n, d, s in outputs]
        self.delay_s = delay_s
        self.calls: list[dict] = []
        self.active = 0
        self.max_active = 0
        self.opened = 0
        self.closed = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def create_context(self):
        self.opened += 1
        try:
            yield SimpleNamespace(infer=self._infer)
        finally:
            self.closed += 1

    def _infer(self, feeds):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls.append({k: v.shape for k, v in feeds.items()})
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return self.fn(feeds)
        finally:
            with self._lock:
                self.active -= 1

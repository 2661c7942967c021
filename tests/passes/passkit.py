"""Helpers for pass tests: build small graphs, run them node by node, compare with ONNX Runtime.

``run_graph`` executes a graph with ``ember.backends.cpu.evaluate`` one node at a time: an
oracle that is independent of the builder and runtime, so a pass test fails only for the pass.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ember.ir.dtype import DType
from ember.ir.graph import Graph, Node
from ember.ir.types import TensorType
from ember.plan.config import BuildConfig

if TYPE_CHECKING:
    from ember.passes.manager import PassContext
    from ember.passes.pipeline import Optimized

F32 = np.float32


def ir_graph(nodes: Sequence[Node], inputs: Mapping[str, tuple], outputs: Sequence[str],
             constants: Optional[Mapping[str, np.ndarray]] = None, name: str = "test") -> Graph:
    """A typed IR graph; ``inputs`` maps name -> shape (float32) or (shape, DType)."""
    from ember.ops.infer import infer_graph

    types: dict[str, TensorType] = {}
    for k, spec in inputs.items():
        if len(spec) == 2 and isinstance(spec[1], DType):
            types[k] = TensorType(spec[1], tuple(spec[0]))
        else:
            types[k] = TensorType(DType.FLOAT32, tuple(spec))
    consts = {k: np.asarray(v) for k, v in (constants or {}).items()}
    return infer_graph(Graph(name, list(nodes), list(inputs), list(outputs), types, consts))


def run_graph(graph: Graph, feeds: Mapping[str, np.ndarray],
              extra: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Runs ``graph`` node by node with the CPU backend's generic kernels."""
    from ember.backends.cpu import evaluate

    env: dict[str, Any] = dict(graph.constants)
    env.update(feeds)
    for node in graph.nodes:
        outs = evaluate(node, [np.array(env[i]) if i else None for i in node.inputs], graph)
        for o, v in zip(node.outputs, outs):
            if o:
                env[o] = v
    return {k: env[k] for k in list(graph.outputs) + list(extra)}


def optimize(graph: Graph, keep: Iterable[str] = (), **config: Any) -> Graph:
    """The full pipeline with the verifier after every pass: the optimized graph."""
    return optimized(graph, keep, **config).graph


def optimized(graph: Graph, keep: Iterable[str] = (), **config: Any) -> Optimized:
    """The full pipeline with the verifier after every pass: graph, records and pass statistics."""
    from ember.passes.pipeline import run_pipeline

    return run_pipeline(graph, BuildConfig(**config), verify=True, keep=keep)


def run_pass(graph: Graph, *names: str, keep: Iterable[str] = (), **config: Any) -> tuple[Graph, dict]:
    """Runs the named passes (verifier after each); returns the graph and the rule counts."""
    graph, ctx = run_pass_ctx(graph, *names, keep=keep, **config)
    return graph, dict(ctx.fired)


def run_pass_ctx(graph: Graph, *names: str, keep: Iterable[str] = (), **config: Any) -> tuple[Graph, PassContext]:
    """Runs the named passes (verifier after each); returns the graph and the pass context (its
    ``records`` and ``fired`` counts)."""
    from ember.ops.verify import verify_graph as verify
    from ember.passes.manager import PassContext, get_pass

    ctx = PassContext(config=BuildConfig(**config), keep=frozenset(keep))
    for name in names:
        graph = get_pass(name)(graph, ctx)
        verify(graph)
    return graph, ctx


def random_feeds(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.types[name]
        if t.dtype.is_float:
            feeds[name] = rng.standard_normal(t.shape).astype(t.dtype.to_numpy())
        else:
            feeds[name] = rng.integers(0, 4, t.shape).astype(t.dtype.to_numpy())
    return feeds


def assert_same_outputs(before: Graph, after: Graph, feeds: Optional[dict] = None,
                        rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The two graphs compute the same outputs on ``feeds`` (random by default)."""
    feeds = feeds if feeds is not None else random_feeds(before)
    a, b = run_graph(before, feeds), run_graph(after, feeds)
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=f"output {k}")


def ops(graph: Graph) -> list[str]:
    """The op types of ``graph``'s nodes, in order."""
    return [n.op.value for n in graph.nodes]


def rng_const(*shape: int, seed: int = 0, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(F32)


# ---- ONNX models and ONNX Runtime --------------------------------------------------------------
def onnx_model(nodes: list, inputs: Mapping[str, tuple], outputs: Sequence[str],
               initializers: Optional[Mapping[str, np.ndarray]] = None, opset: int = 17,
               input_types: Optional[Mapping[str, int]] = None):
    """An ONNX model from ``onnx.helper`` nodes; inputs are float32 unless ``input_types`` says."""
    from onnx import TensorProto, helper, numpy_helper

    ins = [helper.make_tensor_value_info(k, (input_types or {}).get(k, TensorProto.FLOAT), list(s))
           for k, s in inputs.items()]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outputs]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "test", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_run(model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs (``onnx.reference``'s for 8-bit ops where ONNX Runtime's saturate:
    ``tests/int8ref.py``)."""
    import onnxruntime as ort

    from tests.int8ref import needs_other_reference, reference_run

    if needs_other_reference(model):
        return dict(zip([o.name for o in model.graph.output], reference_run(model, feeds)))

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds))))


def check_against_ort(model, feeds: Optional[dict] = None, rtol: float = 1e-4, atol: float = 1e-5,
                      **config: Any) -> Graph:
    """Imports ``model``, runs the full pipeline (verified), checks outputs against ORT; returns
    the optimized graph."""
    return optimized_against_ort(model, feeds, rtol, atol, **config).graph


def optimized_against_ort(model, feeds: Optional[dict] = None, rtol: float = 1e-4, atol: float = 1e-5,
                          **config: Any) -> Optimized:
    """``check_against_ort``, returning the pipeline's whole result (graph, records, statistics)."""
    from ember.frontends.onnx import import_onnx

    graph = import_onnx(model)
    feeds = feeds if feeds is not None else random_feeds(graph)
    out = optimized(graph, **config)
    ours, theirs = run_graph(out.graph, feeds), ort_run(model, feeds)
    for k, v in theirs.items():
        np.testing.assert_allclose(ours[k], v, rtol=rtol, atol=atol, err_msg=f"output {k}")
    return out

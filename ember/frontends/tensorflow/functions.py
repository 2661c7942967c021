"""Concrete functions (a traced Keras model, a ``tf.function``) frozen into a GraphDef, with the
names of their inputs and outputs taken from the function's structured signature."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ember.errors import ModelLoadError
from ember.frontends.graph_builder import ShapeMap
from ember.frontends.tensorflow.libs import require
from ember.frontends.tensorflow.traced import Traced


def spec_shape(dims: Sequence[object]) -> list[Optional[int]]:
    """An Ember shape (ints and symbolic strings) as a TensorSpec shape (None for a symbol)."""
    return [d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None for d in dims]


def check_shape_names(shapes: Optional[ShapeMap], names: Sequence[str], label: str) -> None:
    unknown = sorted(set(shapes or {}) - set(names))
    if unknown:
        raise ModelLoadError(f"{label}: shapes= names {', '.join(map(repr, unknown))}, which are not "
                             f"inputs of the model; its inputs are {', '.join(map(repr, names))}")


def output_names(structured: Any, tf: Any) -> list[str]:
    """The user-facing output names of a function's structured outputs: a dict's keys, else
    ``output_0``, ``output_1``, ... in flattening order."""
    if isinstance(structured, Mapping):
        return [str(k) for k in structured]
    return [f"output_{i}" for i in range(len(tf.nest.flatten(structured)))]


def freeze(tf: Any, tf2onnx: Any, fn: Any, arg_names: Sequence[str], out_names: Sequence[str], *,
           trackable: Any, label: str, kind: str, fmt: str,
           layers: Optional[Mapping[str, str]] = None) -> Traced:
    """Freezes the concrete function ``fn`` whose first ``len(arg_names)`` inputs are its
    arguments (the rest are captured variables) and whose outputs are a dict keyed by
    ``out_names`` (in the order the model declares them)."""
    tf_loader = require("tf2onnx.tf_loader", label)
    args = [t.name for t in fn.inputs[:len(arg_names)]]
    structured = fn.structured_outputs
    # fn.outputs follow tf.nest's flattening of the dict: its keys sorted
    tensor_of = {str(k): t.name for k, t in zip(sorted(structured), fn.outputs)}
    outputs = [tensor_of[k] for k in out_names]
    names = dict(zip(args, arg_names)) | {tensor_of[k]: k for k in out_names}
    try:
        if trackable is not None:
            graph_def, _tables = tf_loader.from_trackable(trackable, fn, args, outputs, False)
        else:
            graph_def = tf_loader.from_function(fn, args, outputs)
    except ValueError as e:
        if "2GB" in str(e) or "string too long" in str(e):
            raise ModelLoadError(
                f"{label}: the {kind} is larger than protobuf's 2 GB limit, which tf2onnx's in-memory "
                f"conversion cannot pass; convert it to ONNX with tf2onnx's --large_model option and "
                f"build the .onnx file") from e
        raise ModelLoadError(f"{label}: TensorFlow could not freeze the {kind} ({type(e).__name__}: "
                             f"{_first_line(e)})") from e
    return Traced(graph_def, args, outputs, names, label, kind, fmt, dict(layers or {}))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:500] if text else type(e).__name__


def from_function(tf: Any, tf2onnx: Any, source: Any, shapes: Optional[ShapeMap], label: str) -> Traced:
    """A ``tf.function`` with an ``input_signature`` (or one of its concrete functions)."""
    fn = source
    if not hasattr(fn, "structured_input_signature"):  # a tf.function, not yet concrete
        if getattr(fn, "input_signature", None) is None:
            raise ModelLoadError(
                f"{label}: a tf.function without an input_signature has no fixed inputs to convert; "
                f"declare one (@tf.function(input_signature=[tf.TensorSpec(...)])) or pass "
                f"fn.get_concrete_function(...)")
        fn = fn.get_concrete_function()
    specs = [s for s in tf.nest.flatten(fn.structured_input_signature) if isinstance(s, tf.TensorSpec)]
    placeholders = fn.inputs[:len(specs)]
    arg_names = [s.name or t.name.split(":")[0] for s, t in zip(specs, placeholders)]
    check_shape_names(shapes, arg_names, label)
    outs = output_names(fn.structured_outputs, tf)
    signature = fn.structured_input_signature

    shapes = shapes or {}
    new_specs = [tf.TensorSpec(spec_shape(shapes[n]) if n in shapes else s.shape, s.dtype, name=n)
                 for s, n in zip(specs, arg_names)]

    def keyed(*args: Any) -> dict[str, Any]:
        given = iter(args)
        leaves = [next(given) if isinstance(leaf, tf.TensorSpec) else leaf
                  for leaf in tf.nest.flatten(signature)]
        pos, kw = tf.nest.pack_sequence_as(signature, leaves)
        return dict(zip(outs, tf.nest.flatten(fn(*pos, **kw))))

    try:
        keyed_fn = tf.function(keyed, input_signature=new_specs, autograph=False).get_concrete_function()
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{label}: the function cannot be called with its own signature "
                             f"({type(e).__name__}: {_first_line(e)})") from e
    return freeze(tf, tf2onnx, keyed_fn, arg_names, outs, trackable=None, label=label,
                  kind="tf.function", fmt="tensorflow")


"""TensorFlow and Keras models into Ember's IR: freeze (``keras_model``, ``saved_model``,
``graphdef``, ``functions``), convert with tf2onnx, then import with Ember's ONNX frontend.

tf2onnx leaves a TensorFlow op it cannot convert in the ONNX graph under its TensorFlow name;
those are found here and listed in one ``UnsupportedOpError`` with their nodes (and, for Keras,
the layers that hold them), before the ONNX frontend would report them as unknown ONNX ops.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from ember.errors import EmberError, ModelLoadError, UnsupportedOpError
from ember.frontends.graph_builder import ShapeMap
from ember.frontends.tensorflow import extra_ops, libs
from ember.frontends.tensorflow.source import (
    KERAS_NAME,
    TF_NAME,
    graph_def_bytes,
    is_saved_model_proto,
    saved_model_dir,
)
from ember.frontends.tensorflow.traced import Traced
from ember.ir.graph import Graph, SourceInfo

#: Domains whose ops tf2onnx writes when it converts (anything else there is a TensorFlow op it
#: could not convert).
_ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
#: TensorFlow 1's loop ops, which freezing with lower_control_flow=True writes for a while loop.
_LOWERED_LOOPS = frozenset({"Enter", "Exit", "Merge", "Switch", "NextIteration", "LoopCond"})
#: The options each kind of source takes.
KERAS_OPTIONS = ("custom_objects", "safe_mode", "opset")
TF_OPTIONS = ("inputs", "outputs", "signature", "tags", "opset")


# ---- entry points --------------------------------------------------------------------------
def load_keras(source: Any, shapes: Optional[ShapeMap] = None, **options: Any) -> Graph:
    """The IR graph of a Keras model (a ``.keras``/``.h5`` path or a ``keras.Model``).

    Options: ``custom_objects={"Name": cls}`` for layers of the user's own classes,
    ``safe_mode=False`` to load Lambda layers, ``opset=`` for the ONNX conversion (tf2onnx's
    default, 15, otherwise)."""
    proto, traced = _keras_onnx(source, shapes, options)
    return _import(proto, traced, shapes)


def load_tensorflow(source: Any, shapes: Optional[ShapeMap] = None, **options: Any) -> Graph:
    """The IR graph of a TensorFlow model: a SavedModel folder (options ``signature=``,
    ``tags=``), a frozen GraphDef (``.pb``/``.pbtxt`` path, bytes or ``tf.compat.v1.GraphDef``;
    options ``inputs=[...]``, ``outputs=[...]``), or a ``tf.function`` / concrete function."""
    proto, traced = _tensorflow_onnx(source, shapes, options)
    return _import(proto, traced, shapes)


def to_onnx(source: Any, *, format: Optional[str] = None, shapes: Optional[ShapeMap] = None,
            **options: Any) -> Any:
    """The ``onnx.ModelProto`` Ember imports for a TensorFlow or Keras ``source`` (tf2onnx's
    conversion with Ember's names), e.g. to compare with ONNX Runtime.

    >>> proto = to_onnx("model.keras")                       # doctest: +SKIP
    >>> [i.name for i in proto.graph.input]                  # doctest: +SKIP
    ['image']
    """
    if format is None:
        from ember.frontends.loader import detect

        format = detect(source).name
    if format == KERAS_NAME:
        return _keras_onnx(source, shapes, options)[0]
    if format == TF_NAME:
        return _tensorflow_onnx(source, shapes, options)[0]
    raise ModelLoadError(f"to_onnx converts TensorFlow and Keras models; {format!r} is neither")


# ---- sources into frozen graphs ------------------------------------------------------------
def _check_options(options: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ModelLoadError(f"{what} takes no option(s) {', '.join(unknown)}; its options are "
                             f"shapes={{input: dims}}, {', '.join(f'{o}=' for o in allowed)}")


def _keras_onnx(source: Any, shapes: Optional[ShapeMap], options: Mapping[str, Any]) -> tuple[Any, Traced]:
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        return _tensorflow_onnx(source, shapes, options)  # a Keras 2 SavedModel folder
    _check_options(options, KERAS_OPTIONS, "the Keras frontend")
    from ember.frontends.tensorflow import keras_model

    what = f"the Keras model {source}" if isinstance(source, (str, os.PathLike)) else "a Keras model"
    tf, tf2onnx = libs.tensorflow(what)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        model = keras_model.load_file(path, options.get("custom_objects"), bool(options.get("safe_mode", True)))
        label = str(path)
    else:
        model = source
        label = f"the Keras model {getattr(model, 'name', '?')!r}"
    with libs.quiet(tf) as log:
        traced = keras_model.trace(tf, tf2onnx, model, shapes, label)
        return _convert(tf2onnx, traced, options.get("opset"), log), traced


def _tensorflow_onnx(source: Any, shapes: Optional[ShapeMap],
                     options: Mapping[str, Any]) -> tuple[Any, Traced]:
    _check_options(options, TF_OPTIONS, "the TensorFlow frontend")
    from ember.frontends.tensorflow import functions, graphdef, saved_model

    kind, label, path = _kind(source)
    _only(options, ("signature", "tags"), kind == "SavedModel", "a SavedModel", label)
    _only(options, ("inputs", "outputs"), kind == "frozen graph", "a frozen graph", label)
    tf, tf2onnx = libs.tensorflow(f"the {kind} {label}")
    with libs.quiet(tf) as log:
        if kind == "SavedModel":
            assert path is not None
            tags = options.get("tags")
            traced = saved_model.load(tf, path, shapes, [tags] if isinstance(tags, str) else tags,
                                      options.get("signature"))
        elif kind == "frozen graph":
            gd = graphdef.read(tf, path if path is not None else source, label)
            traced = graphdef.select(tf, gd, label, _names(options.get("inputs"), "inputs", label),
                                     _names(options.get("outputs"), "outputs", label), shapes)
        else:
            traced = functions.from_function(tf, tf2onnx, source, shapes, label)
        return _convert(tf2onnx, traced, options.get("opset"), log), traced


def _names(value: Any, what: str, label: str) -> Optional[list[str]]:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value) or not value:
        raise ModelLoadError(f"{label}: {what}= takes a list of node or tensor names, e.g. "
                             f"{what}=['x'] or {what}=['x:0']; got {value!r}")
    return list(value)


def _only(options: Mapping[str, Any], names: Sequence[str], applies: bool, what: str, label: str) -> None:
    given = [n for n in names if options.get(n) is not None]
    if given and not applies:
        raise ModelLoadError(f"{label}: option(s) {', '.join(given)} apply to {what} only")


def _kind(source: Any) -> tuple[str, str, Optional[Path]]:
    """(what the source is, its label, its path or None)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            if not saved_model_dir(path):
                raise ModelLoadError(f"the folder {path} holds no saved_model.pb, so it is not a "
                                     f"SavedModel; pass the folder tf.saved_model.save wrote")
            return "SavedModel", str(path), path
        if not path.exists():
            raise ModelLoadError(f"model file {path} does not exist; check the path")
        from ember.frontends.sniff import file_message_fields

        if path.suffix.lower() != ".pbtxt" and is_saved_model_proto(file_message_fields(path)):
            return "SavedModel", str(path.parent), path.parent  # its saved_model.pb
        if path.name == "saved_model.pbtxt":
            return "SavedModel", str(path.parent), path.parent
        return "frozen graph", str(path), path
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not graph_def_bytes(source):
            raise ModelLoadError("the given bytes are not a serialized TensorFlow GraphDef; pass a "
                                 "frozen graph's bytes, or a SavedModel folder's path")
        return "frozen graph", "<GraphDef bytes>", None
    if type(source).__name__ == "GraphDef":
        return "frozen graph", "<tf.GraphDef>", None
    name = getattr(source, "name", None) or getattr(source, "__name__", None) or type(source).__name__
    return "tf.function", f"the tf.function {str(name)!r}", None


# ---- tf2onnx and the ONNX it writes ---------------------------------------------------------
def _convert(tf2onnx: Any, traced: Traced, opset: Any, log: list[str]) -> Any:
    if opset is not None and not (isinstance(opset, int) and 7 <= opset <= 18):
        raise ModelLoadError(f"opset={opset!r}: tf2onnx writes ONNX opsets 7 through 18")
    try:
        proto, _ = tf2onnx.convert.from_graph_def(
            traced.graph_def, name=traced.label, input_names=list(traced.inputs),
            output_names=list(traced.outputs), opset=opset, tensors_to_rename=dict(traced.names),
            custom_op_handlers=dict(extra_ops.HANDLERS),
            shape_override={k: list(v) for k, v in traced.shape_override.items()} or None)
    except Exception as e:  # noqa: BLE001 - tf2onnx raises many kinds; each becomes one message here
        text = [line for line in str(e).strip().splitlines() if line.strip()]
        detail = "".join(f"\n  tf2onnx: {line}" for line in log[:10])
        raise ModelLoadError(f"{traced.label}: tf2onnx could not convert the {traced.kind} to ONNX "
                             f"({type(e).__name__}: {text[0][:400] if text else ''}){detail}") from e
    _check_converted(proto, traced, log)
    _tidy(proto, traced)
    return proto


def _nodes(graph: Any) -> Iterator[Any]:
    """Every node of an ONNX graph, those of its subgraphs (Loop and If bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def layer_of(node: str, layers: Mapping[str, str]) -> Optional[str]:
    """The Keras layer a TensorFlow node belongs to, from its name scope (``model/conv1_1/Conv2D``:
    layer ``conv1``; Keras adds ``_1`` when a model is traced again), or None."""
    parts = node.split("/")
    for part in reversed(parts[:-1] or parts):
        for name in (re.sub(r"_\d+$", "", part), part):
            if name in layers:
                return f"Keras layer '{name}', class {layers[name]}"
    return None


def _where(names: list[str], traced: Traced) -> str:
    shown = names[:5]
    text = ", ".join(repr(n) for n in shown) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    found = sorted({w for w in (layer_of(n, traced.layers) for n in names) if w})
    return f"node{'s' if len(names) > 1 else ''} {text}" + (f" ({'; '.join(found)})" if found else "")


def _check_converted(proto: Any, traced: Traced, log: list[str]) -> None:
    import onnx

    left: dict[str, list[str]] = {}
    for node in _nodes(proto.graph):
        if node.domain in _ONNX_DOMAINS and not onnx.defs.has(node.op_type, node.domain):
            left.setdefault(node.op_type, []).append(node.name)
    if not left:
        return
    lines = [f"  - {op}: {_where(names, traced)}" for op, names in sorted(left.items())]
    failures = [line for line in log if not line.startswith(("Unsupported ops", "Tensorflow op ["))]
    detail = "".join(f"\n  tf2onnx: {line}" for line in failures[:10])
    if any(op.startswith("TensorList") or op in _LOWERED_LOOPS for op in left):
        hint = ("\nThese ops are a while loop (an RNN's) lowered when the graph was frozen, a form tf2onnx "
                "does not convert: freeze it with convert_variables_to_constants_v2(fn, "
                "lower_control_flow=False), or pass the SavedModel or Keras file instead")
    else:
        hint = ("\nRebuild those parts of the model from ops tf2onnx converts, or export the model to ONNX "
                "yourself and give Ember a plugin for the custom ops (ember.plugin)")
    raise UnsupportedOpError(
        f"{traced.label}: tf2onnx cannot convert {len(left)} TensorFlow op type(s) of the {traced.kind} "
        f"to ONNX, so Ember cannot import it:\n" + "\n".join(lines) + detail + hint)


def _tidy(proto: Any, traced: Traced) -> None:
    """Unknown dims lose tf2onnx's made-up names (``unk__12``), so Ember names them after the
    input (``image_d0``); outputs come in the order the model declares them."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and re.fullmatch(r"unk__\d+", dim.dim_param):
                dim.ClearField("dim_param")
    order = [traced.name_of(t) for t in traced.outputs]
    by_name = {o.name: o for o in proto.graph.output}
    if sorted(order) == sorted(by_name) and order != list(by_name):
        outputs = [type(by_name[n])() for n in order]
        for new, n in zip(outputs, order):
            new.CopyFrom(by_name[n])
        del proto.graph.output[:]
        proto.graph.output.extend(outputs)


def _import(proto: Any, traced: Traced, shapes: Optional[ShapeMap]) -> Graph:
    from ember.frontends.onnx.importer import import_onnx

    try:
        graph = import_onnx(proto, shapes=shapes)
    except EmberError as e:
        raise type(e)(_relabel(str(e), proto, traced)) from e
    tf, tf2onnx = libs.tensorflow(traced.label)
    info = graph.source_info
    tf_nodes = sum(1 for n in traced.graph_def.node if n.op not in ("Const", "Placeholder", "NoOp"))
    producer = f"tf2onnx {tf2onnx.__version__} (TensorFlow {tf.__version__})"
    return graph.copy(source=traced.label, source_info=SourceInfo(
        traced.fmt, producer, tf_nodes, dict(info.opsets), info.ir_version))


def _relabel(message: str, proto: Any, traced: Traced) -> str:
    """An ONNX frontend error about the converted model, naming the TensorFlow source (and for
    Keras the layers of the nodes it names)."""
    message = message.replace("<onnx.ModelProto>", f"{traced.label} (as converted to ONNX by tf2onnx)")
    if traced.layers:
        named = [n.name for n in _nodes(proto.graph) if n.name and f"'{n.name}'" in message]
        found = sorted({w for w in (layer_of(n, traced.layers) for n in named) if w})
        if found:
            message += "\nThe nodes named come from: " + "; ".join(found)
    return message

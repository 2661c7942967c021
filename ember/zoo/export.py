"""Export zoo models to ONNX with ``torch.onnx.export``, cached on disk.

An export of ResNet-50 or BERT-base takes seconds to tens of seconds on a small CPU, so files are
kept under ``cache_dir()`` keyed by everything that changes their bytes: model, batch, opset,
dynamic batch, exporter, seed, the zoo's own source and the torch version.

ONNX node names are made from the PyTorch module path of the layer that produced them
(``layer1.0.conv1`` -> ``layer1/0/conv1``; GoogLeNet's modules carry Caffe's names, so its nodes
read ``conv1/7x7_s2``, ``inception_3a/1x1``), which is what fused layer names are built from.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import onnx
import torch
from torch import nn

from ember.errors import ModelLoadError
from ember.zoo import layers
from ember.zoo.registry import build_model, get

DEFAULT_OPSET = 17
#: The PyTorch ONNX exporters ``export_onnx`` can use (``exporter=``).
EXPORTERS = ("torchscript", "dynamo")
_DYNAMO_OPSET = 18  # what torch's dynamo exporter writes before any conversion


def cache_dir() -> Path:
    """Where exported zoo models live: ``$EMBER_CACHE/zoo``, else ``~/.cache/ember/zoo``."""
    root = os.environ.get("EMBER_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ember") / "zoo"


def export_onnx(name: str, path: str | Path | None = None, batch: int = 1, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, dynamo: bool = False, *, exporter: Optional[str] = None,
                seed: int = 0, progress: Optional[bool] = None) -> Path:
    """Exports zoo model ``name`` to ONNX and returns the file's path.

    The file is made once per key and then served from ``cache_dir()``; with ``path`` a copy is
    written there too. Inputs are named ``input`` (CNNs) or ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (BERT); ``dynamic_batch`` makes dim 0 of every input and output the
    symbolic ``batch``. ``exporter`` picks the PyTorch exporter: ``"torchscript"`` (the default,
    ``torch.onnx.export(..., dynamo=False)``) or ``"dynamo"`` (the ``torch.export``-based one,
    ``dynamo=True``; it writes opset 18 or later natively, and a lower ``opset`` is converted);
    ``dynamo=True`` is the older spelling of ``exporter="dynamo"``. ``progress=None`` shows
    progress when stderr is a terminal.

    >>> p = export_onnx("resnet-18", batch=1)                                 # doctest: +SKIP
    >>> q = export_onnx("resnet-18", batch=1, exporter="dynamo", opset=20)    # doctest: +SKIP
    """
    spec = get(name)
    if batch < 1:
        raise ModelLoadError(f"export of zoo model {name!r}: batch must be >= 1, got {batch}")
    if exporter is None:
        exporter = "dynamo" if dynamo else "torchscript"
    if exporter not in EXPORTERS:
        raise ModelLoadError(f"export of zoo model {name!r}: exporter {exporter!r} is not one of "
                             f"{', '.join(EXPORTERS)}")
    if dynamo and exporter != "dynamo":
        raise ModelLoadError(f"export of zoo model {name!r}: dynamo=True asks for the dynamo exporter but "
                             f"exporter={exporter!r}; pass only exporter=")
    dynamo = exporter == "dynamo"
    key = (f"{name}-b{batch}-opset{opset}-{'dyn' if dynamic_batch else 'static'}-"
           f"{'dynamo' if dynamo else 'ts'}-s{seed}-{source_fingerprint()}.onnx")
    cached = cache_dir() / key
    if not cached.exists():
        from ember.builder.progress import BuildProgress

        with BuildProgress(progress) as prog:
            with prog.phase(f"{name}: create (seed {seed})"):
                model = build_model(name, seed)
            example = _example_inputs(name, max(batch, 2) if (dynamic_batch and dynamo) else batch, seed)
            dynamic = {i.name: {0: "batch"} for i in spec.inputs} if dynamic_batch else None
            label = "dynamo" if dynamo else "TorchScript"
            with prog.phase(f"{name}: export ({label}, opset {opset})"):
                export_module(model, example, spec.outputs, cached, opset=opset,
                              dynamic=dynamic, dynamo=dynamo)
    if path is None:
        return cached
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, target)
    return target


def export_module(module: nn.Module, inputs: Mapping[str, torch.Tensor], outputs: Sequence[str],
                  path: str | Path, *, opset: int = DEFAULT_OPSET,
                  dynamic: Optional[Mapping[str, Mapping[int, str]]] = None, dynamo: bool = False) -> Path:
    """Exports ``module(*inputs.values())`` to one self-contained ONNX file at ``path``.

    ``dynamic`` maps input names to ``{dim: symbol}`` (e.g. ``{"input": {0: "batch"}}``); outputs
    not named there get the batch symbol in dim 0. Nodes are renamed after their modules (see module doc).
    The file appears atomically, so a crash never leaves a half-written model in a cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with _quiet():
            if dynamo:
                _export_dynamo(module, inputs, outputs, raw, opset, dynamic)
            else:
                _export_torchscript(module, inputs, outputs, raw, opset, dynamic)
        model = onnx.load(str(raw))  # also pulls in any external data file
        _check_opset(model, opset, type(module).__name__)
        if not dynamo:
            name_nodes_after_modules(model, dynamo=False)
        onnx.checker.check_model(model)
        final = Path(tmp) / "final.onnx"
        onnx.save_model(model, str(final))
        os.replace(final, path)
    return path


def _export_torchscript(module: nn.Module, inputs: Mapping[str, torch.Tensor], outputs: Sequence[str],
                        path: Path, opset: int, dynamic: Optional[Mapping[str, Mapping[int, str]]]) -> None:
    axes = None
    if dynamic:
        axes = {k: dict(v) for k, v in dynamic.items()}
        leading = {dims[0] for dims in dynamic.values() if 0 in dims}
        if len(leading) == 1:  # a dynamic batch: outputs carry it in dim 0 too
            axes.update({out: {0: next(iter(leading))} for out in outputs if out not in axes})
    # PRESERVE (the module is in eval mode) skips the exporter's eval-mode peephole, which would
    # fold BatchNorm into Conv: the file keeps BatchNormalization for Ember's own folding to do.
    with torch.no_grad():
        torch.onnx.export(module, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=list(outputs), opset_version=opset, dynamic_axes=axes,
                          do_constant_folding=True, training=torch.onnx.TrainingMode.PRESERVE,
                          dynamo=False)


def _export_dynamo(module: nn.Module, inputs: Mapping[str, torch.Tensor], outputs: Sequence[str],
                   path: Path, opset: int, dynamic: Optional[Mapping[str, Mapping[int, str]]]) -> None:
    import onnxscript.optimizer

    shapes = None
    if dynamic:
        dims: dict[str, torch.export.Dim] = {}
        shapes = tuple({d: dims.setdefault(s, torch.export.Dim(s)) for d, s in dynamic.get(n, {}).items()}
                       for n in inputs)  # output dims follow from the traced program
    # The exporter writes opset 18 natively; its own optimizer would also fold BatchNorm into
    # Conv, so only constants are folded here, then the file is converted to the asked opset.
    with torch.no_grad():
        program = torch.onnx.export(module, tuple(inputs.values()), None, input_names=list(inputs),
                                    output_names=list(outputs), opset_version=max(opset, _DYNAMO_OPSET),
                                    dynamic_shapes=shapes, dynamo=True, optimize=False, verbose=False,
                                    custom_translation_table=layers.dynamo_translations())
    assert program is not None  # dynamo=True returns the program (None is the TorchScript exporter's)
    onnxscript.optimizer.fold_constants(program.model)
    onnxscript.optimizer.remove_unused_nodes(program.model)
    proto = program.model_proto
    name_nodes_after_modules(proto, dynamo=True)  # before conversion, which drops node metadata
    if _opset_of(proto) != opset:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
        except Exception as exc:  # the converter raises bare RuntimeErrors
            raise ModelLoadError(f"the dynamo exporter wrote {type(module).__name__} at opset "
                                 f"{_opset_of(proto)} and it could not be converted to opset {opset} "
                                 f"({exc}); ask for opset {_opset_of(proto)}") from None
        _drop_attrs_newer_than(proto, opset)
    onnx.save_model(proto, str(path))


# Attributes the ONNX version converter leaves behind when it moves a Reduce op's axes from an
# input back to an attribute (onnx 1.23): (op, attribute) -> first opset that has the attribute.
_ATTR_SINCE = {(op, "noop_with_empty_axes"): 18 for op in
               ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")}


def _drop_attrs_newer_than(model: onnx.ModelProto, opset: int) -> None:
    for node in model.graph.node:
        stale = [a for a in node.attribute if _ATTR_SINCE.get((node.op_type, a.name), 0) > opset]
        for attr in stale:
            if attr.i != 0:  # 0 is the default, the only value with a meaning in the older opset
                raise ModelLoadError(f"node {node.name!r} ({node.op_type}) needs opset "
                                     f"{_ATTR_SINCE[(node.op_type, attr.name)]}; ask for that opset")
            node.attribute.remove(attr)


def _opset_of(model: onnx.ModelProto) -> Optional[int]:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check_opset(model: onnx.ModelProto, opset: int, what: str) -> None:
    if _opset_of(model) != opset:
        raise ModelLoadError(f"exporting {what} to ONNX opset {opset} gave opset {_opset_of(model)}; "
                             f"ask for opset {_opset_of(model)} instead")


def name_nodes_after_modules(model: onnx.ModelProto, dynamo: bool) -> None:
    """Renames nodes to the module path that made them: the first real node of a module gets the
    bare path (``inception_3a/1x1``), any other ``<path>/<OpType>[_k]``; names stay unique."""
    taken: set[str] = set()
    used_scopes: set[str] = set()
    for node in model.graph.node:
        scope = _dynamo_module_path(node) if dynamo else _torchscript_module_path(node)
        if scope is None:  # a node of the root module's own forward
            new = node.name.lstrip("/") or node.op_type
        elif node.op_type != "Constant" and scope not in used_scopes:
            used_scopes.add(scope)
            new = scope
        else:
            new = f"{scope}/{node.op_type}"
        node.name = _unique(new, taken)


def _dynamo_module_path(node: onnx.NodeProto) -> Optional[str]:
    # ": Root/layer1: Sequential/layer1.0: Bottleneck/layer1.0.conv1: Conv2d/conv2d: aten.conv2d"
    meta = {p.key: p.value for p in node.metadata_props}
    parts = meta.get("namespace", "").split("/")
    if len(parts) < 3:
        return None
    return parts[-2].split(": ")[0].replace(".", "/") or None


def _torchscript_module_path(node: onnx.NodeProto) -> Optional[str]:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1/0/conv1``.

    Each segment is the name of a called module in its caller, written ``<caller>.<child>`` for
    container children (``<list>.<index>`` for an iterated ModuleList); a module called twice
    gets ``_1``, ``_2`` (kept, as in ``relu_1``).
    """
    parts = node.name.split("/")
    if len(parts) < 3 or parts[0] != "":
        return None
    path: list[str] = []
    previous = ""
    for segment in parts[1:-1]:
        path.append(segment[len(previous) + 1:] if previous and segment.startswith(previous + ".") else segment)
        previous = segment
    # Module names cannot hold ".", so one left is a container step (ModuleList "layer.5").
    return "/".join(path).replace(".", "/") or None


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 1
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return candidate


def _example_inputs(name: str, batch: int, seed: int) -> dict[str, torch.Tensor]:
    from ember.zoo.registry import sample_inputs

    return {k: torch.from_numpy(v) for k, v in sample_inputs(name, batch, seed).items()}


def source_fingerprint() -> str:
    """Hash of the zoo's source and the torch/onnx versions: a change to either re-exports."""
    digest = hashlib.sha256(f"{torch.__version__} {onnx.__version__}".encode())
    for file in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print and warn a lot about their own internals; keep the user's screen."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

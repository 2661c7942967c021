"""``ember quantize``: Ember's INT8 calibration written out as a standard QDQ ONNX model.

    ember quantize model.onnx --calib-data calib.npz -o model_qdq.onnx
                   [--calibrator entropy|minmax|percentile|mse] [--percentile 99.99]
                   [--calib-cache model.calib] [--per-tensor-weights]

The fp32 CPU engine is built with the optimizer on, every tensor the export needs kept under its
source name (as extra outputs, the way ``ember compare --per-layer`` keeps layer tensors), and
calibrated (``ember.builder.calibration.calibrate``). The ORIGINAL model (not the optimized
graph) is then written with, as ONNX Runtime's ``quantize_static`` writes its QDQ format:

- a QuantizeLinear -> DequantizeLinear pair (int8, symmetric, zero point 0, per-tensor scale
  from calibration) before each activation input of Conv, ConvTranspose (group 1), Gemm and
  MatMul, shared by every quantized reader of the tensor;
- each constant float32 weight of those nodes stored as int8 with per-output-channel scales
  (``max|w| / 127``; axis 0 for Conv, 1 for ConvTranspose, the output axis of Gemm (0 with
  ``transB``, else 1) and the last axis of MatMul) behind a DequantizeLinear;
- each constant bias stored as int32 with scale ``s_in * s_w`` (per channel) behind a
  DequantizeLinear, as ``quantize_static`` does: it is the form QDQ-fusing runtimes (ONNX Runtime,
  TensorRT) expect for an integer convolution's accumulator, and its rounding error (half of
  ``s_in * s_w``) is far below one step of the output. A bias that would overflow int32, or that
  is not one value per output channel, stays float.

Everything else stays float. A model below opset 13 (the first with per-axis Q/DQ) is converted
with ONNX's version converter; where that fails, the model is refused.

>>> qdq = quantize_model("model.onnx", "calib.npz", calibrator="entropy")   # doctest: +SKIP
>>> onnx.save(qdq, "model_qdq.onnx")                                        # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.errors import BuildError

if TYPE_CHECKING:
    import onnx

    from ember.builder.calibration import CalibrationData

HELP = "calibrate a model on data and write it as a standard QDQ (INT8) ONNX model"

#: The first opset with per-axis QuantizeLinear/DequantizeLinear.
QDQ_OPSET = 13
#: Ops whose inputs are quantized.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops that mark a model as quantized already.
QUANTIZED_MARKERS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                               "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})
_INT32_MAX = 2**31 - 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``ember quantize``."""
    p.add_argument("model", help="model file (.onnx)")
    p.add_argument("-o", "--output", help="QDQ model to write (default: <model>_qdq.onnx)")
    p.add_argument("--calib-data", metavar="PATH",
                   help="calibration data: an .npz of arrays named after the inputs, stacked along the "
                        "batch axis, or a folder of them (not needed with a usable --calib-cache)")
    p.add_argument("--calibrator", choices=("entropy", "minmax", "percentile", "mse"), default="entropy",
                   help="how activation scales are chosen (default entropy)")
    p.add_argument("--percentile", type=float, default=99.99, help="the percentile calibrator's (default 99.99)")
    p.add_argument("--calib-cache", metavar="FILE", help="calibration cache to reuse and write")
    p.add_argument("--per-tensor-weights", action="store_true",
                   help="one scale per weight instead of one per output channel")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ember quantize``."""
    import onnx

    out = Path(args.output) if args.output else Path(args.model).with_name(Path(args.model).stem + "_qdq.onnx")
    qdq = quantize_model(args.model, args.calib_data, calibrator=args.calibrator, percentile=args.percentile,
                         cache=args.calib_cache, per_channel=not args.per_tensor_weights,
                         progress=None)
    try:
        onnx.save(qdq, str(out))
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot write {out}: {e}") from None
    counts = qdq_counts(qdq)
    print(f"wrote {out}: {counts['activations']} activations and {counts['weights']} weights quantized "
          f"to int8 in {counts['nodes']} nodes ({args.calibrator} calibration); run it with ONNX Runtime "
          f"or build it with `ember build`")
    return 0


# ---- the model's quantizable nodes ------------------------------------------------------------
@dataclass(frozen=True)
class Weight:
    """A constant weight input: its tensor and its output-channel axis."""

    tensor: str
    axis: int


@dataclass
class Site:
    """One node to quantize: its index, activation inputs, weight and bias (constant names)."""

    index: int
    activations: list[tuple[int, str]] = field(default_factory=list)  # (input slot, tensor)
    weight: tuple[int, Weight] | None = None
    bias: tuple[int, str] | None = None


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers (but not those a graph input may override) and Constant-node values, by name."""
    from onnx import numpy_helper

    inputs = {i.name for i in model.graph.input}
    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name not in inputs}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    found[n.output[0]] = numpy_helper.to_array(a.t)
    return found


def _dynamic(model: onnx.ModelProto) -> set[str]:
    """Tensors that depend on a graph input (activations), in the main graph."""
    inits = {t.name for t in model.graph.initializer}
    live = {i.name for i in model.graph.input if i.name not in inits}
    for n in model.graph.node:
        if any(i in live for i in n.input if i):
            live.update(o for o in n.output if o)
    return live


def _not_float32(model: onnx.ModelProto) -> set[str]:
    """Tensors whose element type shape inference knows and is not float32 (Q/DQ at opset 13
    quantizes float32 only)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference is a hint here; the build checks types anyway
        inferred = model.graph
    infos = [*inferred.input, *inferred.value_info, *inferred.output]
    return {v.name for v in infos
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type not in (0, onnx.TensorProto.FLOAT)}


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def find_sites(model: onnx.ModelProto) -> list[Site]:
    """The nodes of ``model``'s main graph that ``quantize_model`` quantizes."""
    consts = _constants(model)
    live = _dynamic(model) - _not_float32(model)
    sites = []
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in QUANTIZED_OPS:
            continue
        site = _site(index, node, consts, live)
        if site is not None:
            sites.append(site)
    return sites


def _float_const(consts: dict[str, np.ndarray], name: str) -> bool:
    return name in consts and consts[name].dtype == np.float32


def _site(index: int, node: Any, consts: dict[str, np.ndarray], live: set[str]) -> Site | None:
    ins = list(node.input)
    op = node.op_type
    if not ins or ins[0] not in live:
        return None
    site = Site(index, activations=[(0, ins[0])])
    if op in ("Conv", "ConvTranspose"):
        if len(ins) < 2 or not _float_const(consts, ins[1]) or consts[ins[1]].ndim < 3:
            return None
        if op == "ConvTranspose" and int(_attr(node, "group", 1)) != 1:
            return None
        site.weight = (1, Weight(ins[1], 0 if op == "Conv" else 1))
        if len(ins) > 2 and ins[2] and _float_const(consts, ins[2]):
            site.bias = (2, ins[2])
        return site
    if op == "Gemm":
        if int(_attr(node, "transA", 0)) or len(ins) < 2:
            return None
        if _float_const(consts, ins[1]) and consts[ins[1]].ndim == 2:
            site.weight = (1, Weight(ins[1], 0 if int(_attr(node, "transB", 0)) else 1))
            plain = float(_attr(node, "alpha", 1.0)) == 1.0 and float(_attr(node, "beta", 1.0)) == 1.0
            if len(ins) > 2 and ins[2] and plain and _float_const(consts, ins[2]):
                site.bias = (2, ins[2])
        elif ins[1] in live:
            site.activations.append((1, ins[1]))
        else:
            return None
        return site
    # MatMul
    if len(ins) < 2:
        return None
    if _float_const(consts, ins[1]) and consts[ins[1]].ndim >= 2:
        site.weight = (1, Weight(ins[1], consts[ins[1]].ndim - 1))
    elif ins[1] in live:
        site.activations.append((1, ins[1]))
    else:
        return None
    return site


# ---- checks and opset -------------------------------------------------------------------------
def _load(model: Any) -> onnx.ModelProto:
    """The ONNX model through the ONNX frontend's reader (paths, bytes, external data), as a copy
    that the rewrite may change without touching the caller's proto."""
    from ember.frontends.onnx.loader import load_model

    proto, _ = load_model(model)
    return copy.deepcopy(proto) if proto is model else proto


def _check_unquantized(model: onnx.ModelProto) -> None:
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_MARKERS})
    if found:
        raise BuildError(f"the model is already quantized (it has {', '.join(found)} nodes); "
                         f"`ember quantize` takes a float model: build this one with `ember build`, "
                         f"or quantize the float model it came from")


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def with_qdq_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at opset 13 or above: as it is when it is there already, else converted by
    ONNX's version converter (a ``BuildError`` when it cannot be converted safely)."""
    import onnx
    from onnx import version_converter

    version = _opset(model)
    if version >= QDQ_OPSET:
        return model
    try:
        converted = version_converter.convert_version(model, QDQ_OPSET)
        onnx.checker.check_model(converted)
    except Exception as e:  # noqa: BLE001 - the converter raises RuntimeError and others
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BuildError(f"the model is at opset {version} and per-channel Q/DQ needs opset {QDQ_OPSET}; "
                         f"ONNX's version converter cannot raise it ({first[:200]}); re-export the model "
                         f"at opset {QDQ_OPSET} or later") from None
    return converted


# ---- the rewrite --------------------------------------------------------------------------------
class _Names:
    """Fresh tensor names, unique in the model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.used = {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
        self.used |= {x for n in g.node for x in (*n.input, *n.output)} | {v.name for v in g.value_info}

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def weight_scale(w: np.ndarray, axis: int | None) -> np.ndarray:
    """Symmetric INT8 scales of ``w``: per index of ``axis``, or one (``axis=None``)."""
    from ember.builder.calibration import weight_scales

    scales = np.asarray(weight_scales(w, axis).scale, dtype=np.float32)
    return scales if axis is not None else scales.reshape(())


def _quantize_int(values: np.ndarray, scale: np.ndarray, axis: int | None, lo: int, hi: int) -> np.ndarray:
    shape = [1] * values.ndim
    if axis is not None and scale.ndim:
        shape[axis] = -1
    q = np.round(values.astype(np.float64) / scale.astype(np.float64).reshape(shape))
    return np.clip(q, lo, hi)


def quantize_model(model: Any, data: CalibrationData | None = None, *, calibrator: str = "entropy",
                   percentile: float = 99.99, cache: str | os.PathLike[str] | None = None,
                   per_channel: bool = True, batch_size: int | None = None,
                   progress: bool | None = False) -> onnx.ModelProto:
    """``model`` (a path or ``onnx.ModelProto``, float) as a QDQ model calibrated on ``data``.

    ``data``: calibration data (``ember.builder.calibration.calibration_batches``: feed dicts, an
    ``.npz`` or a folder of them); not needed when ``cache`` holds a usable calibration.
    ``calibrator``/``percentile``/``cache``: as ``calibrate``'s. ``per_channel``: per-output-channel
    weight scales (default) or one scale per weight. See the module's docstring for the format.

    >>> qdq = quantize_model("mlp.onnx", {"x": samples}, calibrator="minmax")   # doctest: +SKIP
    """
    import onnx

    source = _load(model)
    _check_unquantized(source)
    sites = find_sites(source)
    if not sites:
        raise BuildError(f"the model has nothing to quantize: no {', '.join(QUANTIZED_OPS)} node reads a "
                         f"float32 activation with a constant float32 weight (or two activations)")
    out = with_qdq_opset(source)
    if out is not source:
        sites = find_sites(out)  # the converter may have rewritten nodes: find them again
    scales = _calibrate(out, sites, data, calibrator, percentile, cache, batch_size, progress)
    _rewrite(out, sites, scales, per_channel)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:
        raise BuildError(f"the QDQ model fails ONNX's checker ({e}); this is a bug of `ember quantize`") from None
    return out


def _calibrate(source: onnx.ModelProto, sites: list[Site], data: CalibrationData | None, calibrator: str,
               percentile: float, cache: str | os.PathLike[str] | None, batch_size: int | None,
               progress: bool | None) -> dict[str, float]:
    """Activation scales by source tensor name, from the fp32 CPU engine with those tensors kept."""
    from onnx import helper

    from ember.builder.build import build
    from ember.builder.calibration import calibrate
    from ember.plan.config import BuildConfig, Device

    tensors = list(dict.fromkeys(t for s in sites for _, t in s.activations))
    kept = copy.deepcopy(source)
    present = {i.name for i in kept.graph.input} | {o.name for o in kept.graph.output}
    for t in tensors:
        if t not in present:  # kept under its name: a graph output no pass may rename or fuse away
            kept.graph.output.append(helper.make_empty_tensor_value_info(t))
    engine = build(kept, BuildConfig(device=Device.CPU), progress=False)
    plan = calibrate(engine, data, calibrator, percentile, cache, tensors, progress, batch_size=batch_size)
    return {t: float(plan.tensors[t].scale[0]) for t in tensors}


def _rewrite(model: onnx.ModelProto, sites: list[Site], scales: dict[str, float], per_channel: bool) -> None:
    """Inserts the Q/DQ nodes and replaces the weights and biases of ``sites`` in ``model``."""
    from onnx import helper, numpy_helper

    g = model.graph
    fresh = _Names(model)
    consts = _constants(model)
    nodes = list(g.node)
    before: dict[int, list[Any]] = {}
    head: list[Any] = []
    act_dq: dict[str, str] = {}
    weight_dq: dict[tuple[str, int | None], tuple[str, np.ndarray]] = {}  # (weight, axis) -> (DQ, scale)
    inits: list[Any] = []

    def const(base: str, value: np.ndarray) -> str:
        name = fresh(base)
        inits.append(numpy_helper.from_array(value, name))
        return name

    def qdq_activation(t: str, at: int) -> str:
        if t not in act_dq:
            s = const(f"{t}_scale", np.array(scales[t], dtype=np.float32))
            z = const(f"{t}_zero_point", np.array(0, dtype=np.int8))
            q, dq = fresh(f"{t}_QuantizeLinear_Output"), fresh(f"{t}_DequantizeLinear_Output")
            before.setdefault(at, []).extend([
                helper.make_node("QuantizeLinear", [t, s, z], [q], name=fresh(f"{t}_QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q, s, z], [dq], name=fresh(f"{t}_DequantizeLinear"))])
            act_dq[t] = dq
        return act_dq[t]

    def dq_const(base: str, q: np.ndarray, scale: np.ndarray, axis: int | None) -> str:
        s = const(f"{base}_scale", scale)
        z = const(f"{base}_zero_point", np.zeros(scale.shape, dtype=q.dtype))
        qname = const(f"{base}_quantized", q)
        out = fresh(f"{base}_DequantizeLinear_Output")
        node = helper.make_node("DequantizeLinear", [qname, s, z], [out], name=fresh(f"{base}_DequantizeLinear"))
        if axis is not None and scale.ndim:
            node.attribute.append(helper.make_attribute("axis", axis))
        head.append(node)
        return out

    for site in sites:
        node = nodes[site.index]
        for slot, t in site.activations:
            node.input[slot] = qdq_activation(t, site.index)
        if site.weight is None:
            continue
        slot, w = site.weight
        axis = w.axis if per_channel else None
        if (w.tensor, axis) not in weight_dq:
            value = consts[w.tensor]
            ws = weight_scale(value, axis)
            q = _quantize_int(value, ws, axis, -127, 127).astype(np.int8)
            weight_dq[(w.tensor, axis)] = (dq_const(w.tensor, q, ws, axis), ws)
        node.input[slot], ws = weight_dq[(w.tensor, axis)]
        if site.bias is not None and len(site.activations) == 1:
            _quantize_bias(node, site.bias, consts, scales[site.activations[0][1]], ws, dq_const)

    order = [*head]
    for i, n in enumerate(nodes):
        order.extend(before.get(i, []))
        order.append(n)
    del g.node[:]
    g.node.extend(order)
    g.initializer.extend(inits)
    _drop_unread(model, {w for w, _ in weight_dq} | {s.bias[1] for s in sites if s.bias})


def _drop_unread(model: onnx.ModelProto, names: set[str]) -> None:
    """Removes the float weights and biases in ``names`` that nothing reads any more (ONNX
    Runtime warns of unused initializers), and Constant nodes that made them."""
    g = model.graph
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    gone = names - read
    keep = [t for t in g.initializer if t.name not in gone]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    made = [n for n in g.node if not (n.op_type == "Constant" and list(n.output) and n.output[0] in gone)]
    if len(made) != len(g.node):
        del g.node[:]
        g.node.extend(made)


def _quantize_bias(node: Any, bias: tuple[int, str], consts: dict[str, np.ndarray], s_in: float,
                   ws: np.ndarray, dq_const: Any) -> None:
    """The bias as int32 with scale ``s_in * s_w`` (left float where it would not fit)."""
    slot, name = bias
    b = consts[name]
    channels = ws.size if ws.ndim else None
    if b.ndim != 1 or (channels is not None and b.shape[0] != channels):
        return
    scale = (np.float32(s_in) * ws).astype(np.float32)
    if np.any(scale <= 0):
        return
    q = _quantize_int(b, scale, 0 if scale.ndim else None, -_INT32_MAX - 1, _INT32_MAX)
    if np.any(np.abs(b.astype(np.float64) / scale.astype(np.float64).reshape(-1 if scale.ndim else ())) >
              _INT32_MAX):
        return
    node.input[slot] = dq_const(name, q.astype(np.int32), scale, 0)


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many activations (QuantizeLinear nodes), int8 weights (DequantizeLinear nodes of an
    int8 initializer) and quantized nodes (``QUANTIZED_OPS`` reading a DequantizeLinear)."""
    g = model.graph
    int8 = {t.name for t in g.initializer if t.data_type == 3}  # TensorProto.INT8
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    dq_out = {n.output[0] for n in dq}
    return {"activations": sum(n.op_type == "QuantizeLinear" for n in g.node),
            "weights": sum(n.input[0] in int8 for n in dq),
            "nodes": sum(n.op_type in QUANTIZED_OPS and any(i in dq_out for i in n.input) for n in g.node)}

"""Builds ``blocked_net.cpp`` (once, cached) and turns an Ember plan's convolution chain into a ``Net``.

    python bench/probes/onednn_blocked/net.py --model resnet-50 --batch 1   # build, print each op's layout and impl

The extension is compiled as ``../onednn_persistent/build.py`` compiles the persistent-primitive
probe (``torch.utils.cpp_extension.load``, ninja, the machine's g++), against the libdnnl of a
prefix (``$EMBER_ONEDNN_PREFIX``, else this interpreter's prefix: the ``onednn`` extra installs
oneDNN 3.2 from ``onednn-cpu-gomp`` there), with the same checks (no SYCL build, one OpenMP
runtime in the process).

``from_plan(ext, engine, layout)`` walks the built Ember engine's graph in execution order:
each ``Conv`` / ``FusedConv`` becomes a convolution primitive with the same folded weights, bias,
geometry and fused epilogue (residual add, then ReLU / Clip), ``MaxPool`` and
``GlobalAveragePool`` become oneDNN pooling primitives, and the chain ends at the tensor the
classifier (``Flatten`` / ``Gemm``) reads. Any other op in that stretch is an error naming it.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "blocked_net.cpp"
LAYOUTS = ("nhwc", "any", "blocked")


class ProbeError(RuntimeError):
    """The probe cannot represent this model or cannot load its extension; the message says why."""


def _persistent_build() -> ModuleType:
    """``../onednn_persistent/build.py`` (its prefix checks), imported under its own name."""
    path = HERE.parent / "onednn_persistent" / "build.py"
    spec = importlib.util.spec_from_file_location("onednn_persistent_build", path)
    if spec is None or spec.loader is None:
        raise ProbeError(f"{path}: cannot import the persistent probe's build checks")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load(prefix: Optional[Path] = None, verbose: bool = False) -> ModuleType:
    """The compiled ``blocked_net`` extension for the libdnnl under ``prefix`` (built on first use)."""
    from torch.utils import cpp_extension

    pb = _persistent_build()
    prefix = Path(prefix) if prefix is not None else pb.default_prefix()
    if prefix is None:
        raise ProbeError("no oneDNN prefix: pass --prefix or set EMBER_ONEDNN_PREFIX (a directory with "
                         "include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so, e.g. pip install --prefix DIR "
                         "onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0)")
    prefix = prefix.resolve()
    try:
        pb._check_prefix(prefix)
    except pb.OneDNNUnavailable as e:
        raise ProbeError(str(e)) from None
    key = hashlib.sha256(SOURCE.read_bytes() + str(prefix).encode()).hexdigest()[:12]
    build_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ember-onednn-blocked" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    lib = str(prefix / "lib")
    mod = cpp_extension.load(name=f"blocked_net_{key}", sources=[str(SOURCE)], build_directory=str(build_dir),
                             extra_include_paths=[str(prefix / "include")], extra_cflags=["-O2", "-std=c++17"],
                             extra_ldflags=[f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"], verbose=verbose)
    v = mod.version()
    if v["header_version"] != f"{v['major']}.{v['minor']}.{v['patch']}":
        raise ProbeError(f"compiled against oneDNN {v['header_version']} headers, loaded libdnnl "
                         f"{v['major']}.{v['minor']}.{v['patch']}: clear {build_dir} and rebuild")
    gomps = pb.loaded_openmp()
    if len(gomps) > 1:
        raise ProbeError(f"more than one OpenMP runtime mapped in this process: {gomps}")
    return mod


@dataclass
class Chain:
    """A ``Net`` made from an engine, and which of the engine's tensors its output is."""

    net: Any
    layout: str
    output: str  # the Ember tensor name the chain ends at (GlobalAveragePool's output)
    convs: int
    input_shape: tuple[int, ...]
    conv_weights: list[tuple[int, ...]]  # each convolution's weight shape, in execution order


def _shape(graph: Any, name: str, node: Any) -> tuple[int, ...]:
    t = graph.types.get(name)
    if t is None or not all(isinstance(d, int) for d in t.shape) or len(t.shape) != 4:
        raise ProbeError(f"node {node.name!r}: input {name!r} has no static 4-D shape ({t}); export the model "
                         f"with a fixed batch (zoo.export_onnx(..., batch=N))")
    return tuple(int(d) for d in t.shape)


def from_plan(ext: Any, engine: Any, layout: str, impls: Optional[dict[str, str]] = None,
              reuse: bool = True, residual: str = "binary") -> Chain:
    """The engine's convolution chain (up to the classifier) as a ``Net`` in ``layout``; ``impls``
    names, per convolution layer, the oneDNN implementation to use instead of oneDNN's first choice;
    ``reuse=False`` gives every tensor a buffer of its own (no arena); ``residual="sum"`` adds each
    residual with oneDNN's in-place sum post-op instead of a binary add (see ``blocked_net.cpp``)."""
    from ember.backends.cpu.kernels.common import split_pads
    from ember.backends.cpu.kernels.conv import conv_geometry
    from ember.ir.optype import OpType
    from ember.ops.attrs import Activation, FusedConvAttrs

    if layout not in LAYOUTS:
        raise ProbeError(f"layout {layout!r}: one of {', '.join(LAYOUTS)}")
    graph = engine.plan.graph
    if len(graph.inputs) != 1:
        raise ProbeError(f"the probe takes one image input, the graph has {list(graph.inputs)}")
    net = ext.Net(layout, residual)
    first = graph.nodes[0]
    in_shape = _shape(graph, graph.inputs[0], first)
    ids = {graph.inputs[0]: net.add_input(list(in_shape))}
    end, convs = None, 0
    weights: list[tuple[int, ...]] = []
    for node in graph.nodes:
        if node.op in (OpType.FLATTEN, OpType.GEMM, OpType.RESHAPE):
            end = node.inputs[0]
            break
        missing = [n for n in node.inputs[:1] if n not in ids]
        if missing:
            raise ProbeError(f"node {node.name!r} ({node.op}) reads {missing[0]!r}, which no earlier op of the "
                             f"chain produced")
        src = ids[node.inputs[0]]
        if node.op in (OpType.CONV, OpType.FUSED_CONV):
            a = node.attrs
            fused = isinstance(a, FusedConvAttrs)
            conv_a = a.conv if fused else a
            act = a.activation if fused else Activation.NONE
            params = tuple(a.act_params) if fused else ()
            w = graph.constants.get(node.input(1))
            if w is None or np.asarray(w).ndim != 4:
                raise ProbeError(f"node {node.name!r}: the weight is not a constant 4-D tensor")
            w_t = torch.from_numpy(np.array(w, dtype=np.float32, copy=True))
            b = graph.constants.get(node.input(2)) if len(node.inputs) > 2 and node.input(2) else None
            b_t = torch.from_numpy(np.array(b, dtype=np.float32, copy=True)).reshape(-1) if b is not None else None
            shape = _shape(graph, node.inputs[0], node)
            geo = conv_geometry(conv_a, shape, tuple(w_t.shape))
            if act is Activation.RELU:
                kind, lo, hi = "relu", 0.0, 0.0
            elif act is Activation.CLIP and len(params) == 2:
                kind, lo, hi = "clip", float(params[0]), float(params[1])
            elif act is Activation.NONE:
                kind, lo, hi = "none", 0.0, 0.0
            else:
                raise ProbeError(f"node {node.name!r}: epilogue {act} {params} is not one the probe fuses")
            res = -1
            if fused and a.has_residual:
                r = node.inputs[3]
                if r not in ids:
                    raise ProbeError(f"node {node.name!r}: residual {r!r} comes from outside the chain")
                res = ids[r]
            ids[node.outputs[0]] = net.add_conv(
                node.name, src, w_t, b_t, list(geo.strides), list(geo.begins), list(geo.ends), list(geo.dilations),
                conv_a.group, kind, lo, hi, res, (impls or {}).get(node.name, ""))
            convs += 1
            weights.append(tuple(w_t.shape))
        elif node.op is OpType.MAX_POOL:
            p = node.attrs
            if p.ceil_mode or any(d != 1 for d in (p.dilations or ())):
                raise ProbeError(f"node {node.name!r}: MaxPool with ceil_mode / dilation is not covered")
            begins, ends = split_pads(p.pads or (0,) * 4)
            ids[node.outputs[0]] = net.add_pool(node.name, src, "max", list(p.kernel_shape), list(p.strides or (1, 1)),
                                                begins, ends)
        elif node.op is OpType.GLOBAL_AVERAGE_POOL:
            shape = _shape(graph, node.inputs[0], node)
            ids[node.outputs[0]] = net.add_pool(node.name, src, "avg", list(shape[2:]), [1, 1], [0, 0], [0, 0])
        else:
            raise ProbeError(f"node {node.name!r}: op {node.op} is not one the probe's chain covers "
                             f"(Conv, FusedConv, MaxPool, GlobalAveragePool, then Flatten/Gemm)")
    if end is None or end not in ids:
        raise ProbeError("the graph has no Flatten / Gemm after its convolutions to end the chain at")
    net.finish(ids[end], reuse)
    return Chain(net, layout, end, convs, in_shape, weights)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", type=Path, default=None)
    p.add_argument("--model", default="resnet-50")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    args = p.parse_args(argv)
    import ember
    from ember import zoo

    ext = load(args.prefix)
    print("libdnnl:", ext.version())
    engine = ember.build(str(zoo.export_onnx(args.model, batch=args.batch)), ember.BuildConfig(device=ember.Device.CPU),
                         progress=False)
    for layout in args.layouts.split(","):
        chain = from_plan(ext, engine, layout)
        print(f"--- {layout}: arena {chain.net.arena_bytes() / 2**20:.1f} MiB")
        for op in chain.net.info():
            print(f"  {op['kind']:8s} {op['src']:>8s} -> {op['dst']:8s} {op['impl']:28s} {op['name']}")
    return 0



def residual_layers(engine: Any) -> set[str]:
    """Names of the engine's convolutions that add a residual."""
    from ember.ops.attrs import FusedConvAttrs

    return {n.name for n in engine.plan.graph.nodes if isinstance(n.attrs, FusedConvAttrs) and n.attrs.has_residual}


if __name__ == "__main__":
    sys.exit(main())

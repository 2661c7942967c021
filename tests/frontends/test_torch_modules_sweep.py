"""A sweep of common torch layers and functional ops, exported by both torch.onnx exporters,
imported by Ember and compared with torch (see ``sweep_modules.MODULES``).

TorchScript (dynamo=False): every module at opset 17 and at the lowest opset the exporter
accepts for it. Dynamo (dynamo=True): the modules bundled by input kind, one export per bundle
(a dynamo export costs about a second whatever its size), at opset 18 (and some at 21).
"""
from __future__ import annotations

import io
import warnings
from typing import Callable

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import ember
from ember.frontends.onnx import import_onnx
from tests.frontends.sweep_modules import MODULES, Inputs

#: The lowest opset the TorchScript exporter (torch 2.13) exports each module at (default 11).
TS_MIN_OPSET = {"mha": 13, "mha_causal": 14, "encoder_post_norm": 14, "encoder_pre_norm": 14,
                "activations": 12, "einsum": 12, "tile_repeat": 14, "grid_sample": 16, "sort_any": 13}

TS_CASES = sorted({(name, opset) for name in MODULES for opset in (TS_MIN_OPSET.get(name, 11), 17)})


def _leaves(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _leaves(item)]


def _export(model: nn.Module, args: Inputs, dynamo: bool, opset: int) -> onnx.ModelProto:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(model, args, None, dynamo=True, opset_version=opset, verbose=False).model_proto
        buf = io.BytesIO()
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset)
        return onnx.load_model_from_string(buf.getvalue())


def _check(model: nn.Module, proto: onnx.ModelProto, args: Inputs, labels: list[str]) -> None:
    """Builds ``proto`` with Ember on the CPU and compares every output with torch's."""
    with torch.no_grad():
        want = _leaves(model(*args))
    engine = ember.build(proto, ember.BuildConfig(device="cpu"))
    feeds = {i.name: a.numpy() for i, a in zip(proto.graph.input, args)}
    with engine.create_context() as ctx:
        got = list(ctx.infer(feeds).values())
    assert len(got) == len(want)
    for label, out, ref in zip(labels, got, want):
        ref = ref.numpy()
        out = np.asarray(out)
        assert out.shape == ref.shape, f"{label}: shape {out.shape} != torch {ref.shape}"
        if ref.dtype.kind == "f":
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, err_msg=label)
        else:
            np.testing.assert_array_equal(out.astype(ref.dtype), ref, err_msg=label)


def _labels(name: str, model: nn.Module, args: Inputs) -> list[str]:
    with torch.no_grad():
        n = len(_leaves(model(*args)))
    return [f"{name} output {k}" for k in range(n)]


@pytest.mark.parametrize("name, opset", TS_CASES, ids=[f"{n}-ts{o}" for n, o in TS_CASES])
def test_torchscript_export_matches_torch(name: str, opset: int) -> None:
    make, inputs = MODULES[name]
    torch.manual_seed(0)
    model, args = make().eval(), inputs()
    proto = _export(model, args, dynamo=False, opset=opset)
    _check(model, proto, args, _labels(name, model, args))


class Bundle(nn.Module):
    """Several sweep modules on the same inputs; their outputs flattened into one tuple."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.names = names
        self.parts = nn.ModuleList([MODULES[n][0]() for n in names])

    def forward(self, *args):
        return tuple(t for part in self.parts for t in _leaves(part(*args)))


def _bundles() -> dict[str, list[str]]:
    groups: dict[Callable[[], Inputs], list[str]] = {}
    for name, (_, inputs) in MODULES.items():
        groups.setdefault(inputs, []).append(name)
    return {"+".join(names[:2]) + (f"+{len(names) - 2}" if len(names) > 2 else ""): names
            for names in groups.values()}


BUNDLES = _bundles()
#: Every bundle at opset 18; the attention and image bundles (the most varied ops) at 21 too.
DYNAMO_CASES = [(b, 18) for b in BUNDLES] + [(b, 21) for b in BUNDLES if {"mha", "group_norm"} & set(BUNDLES[b])]


@pytest.fixture(scope="session")
def dynamo_exports():
    """Each (bundle, opset) exported once per session."""
    cache: dict[tuple[str, int], tuple[Bundle, onnx.ModelProto, Inputs]] = {}

    def get(bundle: str, opset: int):
        if (bundle, opset) not in cache:
            names = BUNDLES[bundle]
            model, args = Bundle(names).eval(), MODULES[names[0]][1]()
            cache[(bundle, opset)] = model, _export(model, args, dynamo=True, opset=opset), args
        return cache[(bundle, opset)]

    return get


@pytest.mark.parametrize("bundle, opset", DYNAMO_CASES, ids=[f"{b}-dynamo{o}" for b, o in DYNAMO_CASES])
def test_dynamo_export_matches_torch(dynamo_exports, bundle: str, opset: int) -> None:
    model, proto, args = dynamo_exports(bundle, opset)
    labels = [label for name, part in zip(model.names, model.parts) for label in _labels(name, part, args)]
    _check(model, proto, args, labels)


def test_data_dependent_shape_op_runs() -> None:
    """NonZero (an output length known only at run time) imports and runs."""
    model = nn.Module()
    model.forward = lambda x: torch.nonzero(x > 0)  # type: ignore[method-assign]
    x = torch.randn(3, 4)
    proto = _export(model, (x,), dynamo=False, opset=17)
    engine = ember.build(proto, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        (out,) = ctx.infer({engine.inputs[0].name: x.numpy()}).values()
    np.testing.assert_array_equal(np.asarray(out), torch.nonzero(x > 0).numpy())


DYNAMIC_BATCH = ["depth_space", "topk", "one_hot", "lstm", "argmax", "group_norm", "einsum", "grid_sample", "mha"]


@pytest.mark.parametrize("name", DYNAMIC_BATCH)
def test_torchscript_dynamic_batch_runs_at_other_batch_sizes(name: str) -> None:
    """Exported with a symbolic batch dim: the new ops keep it symbolic and run at batch 1 and 3."""
    make, inputs = MODULES[name]
    torch.manual_seed(0)
    model, args = make().eval(), inputs()
    names = [f"in{i}" for i in range(len(args))]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=TS_MIN_OPSET.get(name, 17),
                          input_names=names, dynamic_axes={n: {0: "batch"} for n in names})
    proto = onnx.load_model_from_string(buf.getvalue())
    graph = import_onnx(proto)
    for out in graph.outputs:
        assert any(isinstance(d, str) for d in graph.types[out].shape), f"{out}: batch dim lost: {graph.types[out]}"
    for batch in (1, 3):
        resized = tuple(a.repeat(3, *[1] * (a.dim() - 1))[:batch] for a in args)
        _check(model, proto, resized, _labels(name, model, resized))

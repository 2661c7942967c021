"""Models exported by both torch.onnx exporters (TorchScript and dynamo) import and run.

Small modules cover what the zoo's CNNs and BERT-style encoders export to: Conv/BN/ReLU,
depthwise convs with ReLU6/HardSwish/HardSigmoid, pooling, LRN, upsampling, Linear/LayerNorm/GELU,
embeddings, attention with a padding mask, and a dynamic batch dimension.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import ember
from ember.frontends.onnx import import_onnx


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Hardsigmoid())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Hardswish())
        self.lrn = nn.LocalResponseNorm(5)
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = self.stem(x)
        y = self.dw(y) * self.se(y) + y
        y = self.lrn(self.pw(y))
        y = nn.functional.max_pool2d(y, 3, 2, ceil_mode=True)
        z = self.up(y)
        z = nn.functional.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False)
        a = nn.functional.avg_pool2d(y, 2, 1, padding=1)
        p = torch.flatten(nn.functional.adaptive_avg_pool2d(a, 1), 1)
        return torch.log_softmax(nn.functional.dropout(self.head(p), 0.5, self.training), -1), z


class Encoder(nn.Module):
    """A tiny BERT-style encoder layer with embeddings and an additive padding mask."""

    def __init__(self, vocab=50, d=32, heads=4) -> None:
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(64, d)
        self.ln0 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.ln2 = nn.LayerNorm(d)

    def forward(self, ids, mask):
        b, s = ids.shape
        pos = torch.arange(s, device=ids.device).unsqueeze(0)
        x = self.ln0(self.emb(ids) + self.pos(pos))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        shape = (b, s, self.heads, -1)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        bias = (1.0 - mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5) + bias, dim=-1)
        ctx = (att @ v).transpose(1, 2).reshape(b, s, -1)
        x = self.ln1(x + self.out(ctx))
        x = self.ln2(x + self.ff(x))
        return x.mean(dim=1), x[:, 0]


def _export(model: nn.Module, args: tuple, names: list[str], dynamo: bool, opset: int, dyn: dict) -> bytes:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = {n: {k: torch.export.Dim(v, min=1, max=64) for k, v in axes.items()} for n, axes in dyn.items()}
            prog = torch.onnx.export(model, args, None, dynamo=True, opset_version=opset, input_names=names,
                                     dynamic_shapes=shapes, verbose=False)
            return prog.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset, input_names=names,
                          dynamic_axes=dyn)
        return buf.getvalue()


VARIANTS = [("torchscript", 11), ("torchscript", 17), ("dynamo", 18), ("dynamo", 20)]


def _inputs(kind: str, batch: int):
    g = torch.Generator().manual_seed(batch)
    if kind == "conv":
        return (torch.randn(batch, 3, 16, 16, generator=g),)
    ids = torch.randint(0, 50, (batch, 7), generator=g)
    mask = torch.ones(batch, 7, dtype=torch.int64)
    mask[0, 5:] = 0
    return ids, mask


@pytest.fixture(scope="session")
def exported():
    """Every (model, exporter, opset) exported once per test session."""
    torch.manual_seed(0)
    models = {"conv": ConvNet(), "encoder": Encoder()}
    names = {"conv": ["x"], "encoder": ["ids", "mask"]}
    dyn = {"conv": {"x": {0: "batch"}}, "encoder": {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}}
    cache = {}

    def get(kind: str, exporter: str, opset: int):
        key = (kind, exporter, opset)
        if key not in cache:
            cache[key] = _export(models[kind], _inputs(kind, 2), names[kind], exporter == "dynamo", opset, dyn[kind])
        return models[kind], cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("exporter, opset", VARIANTS, ids=[f"{e}-{o}" for e, o in VARIANTS])
@pytest.mark.parametrize("kind", ["conv", "encoder"])
def test_exported_model_imports_and_matches_torch(exported, kind, exporter, opset):
    model, data = exported(kind, exporter, opset)
    proto = onnx.load_model_from_string(data)
    graph = import_onnx(proto)
    assert graph.opset == opset
    first = graph.types[graph.inputs[0]].shape
    assert isinstance(first[0], str), f"batch dim should stay symbolic, got {first}"
    engine = ember.build(proto, ember.BuildConfig(device="cpu"))
    for batch in (2, 3):
        args = _inputs(kind, batch)
        with torch.no_grad():
            want = model(*args)
        feeds = {name: a.numpy() for name, a in zip(graph.inputs, args)}
        with engine.create_context() as ctx:
            got = ctx.infer(feeds)
        for out, ref in zip(got.values(), want):
            np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)

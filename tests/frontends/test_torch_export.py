"""PyTorch modules straight into the IR through torch.export (``ember.frontends.torch_export``):
the zoo's models give the ONNX route's outputs and layers; unmapped ops are listed in one error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ember
from ember import zoo
from ember.errors import ModelLoadError, UnsupportedOpError
from ember.frontends import detect, load
from ember.frontends.torch_export import SUPPORTED_OPS

CPU = ember.BuildConfig(device="cpu")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


def run(engine: ember.Engine, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)
    return [out[s.name] for s in engine.plan.outputs]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def both_routes(name: str, batch: int) -> None:
    """The zoo model through torch.export and through its ONNX export: same outputs (< 1e-4
    relative) and the same optimized layers."""
    spec = zoo.get(name)
    feeds = zoo.sample_inputs(name, batch=batch)
    via_onnx = ember.build(zoo.export_onnx(name, batch=batch), CPU)
    args = tuple(torch.from_numpy(feeds[i.name]) for i in spec.inputs)
    via_torch = ember.build(zoo.build_model(name), CPU, example_inputs=args)
    assert via_torch.plan.build_info["source_format"] == "torch"
    torch_feeds = {s.name: feeds[i.name] for s, i in zip(via_torch.plan.inputs, spec.inputs)}
    for ours, theirs in zip(run(via_torch, torch_feeds), run(via_onnx, feeds)):
        assert ours.shape == theirs.shape and rel(ours, theirs) < 1e-4
    kinds = sorted(layer.kind.replace("Flatten", "Reshape") for layer in via_torch.plan.layers)
    assert kinds == sorted(layer.kind.replace("Flatten", "Reshape") for layer in via_onnx.plan.layers)


def test_resnet50_matches_the_onnx_route():
    both_routes("resnet-50", 1)


def test_mobilenet_v2_matches_the_onnx_route():
    both_routes("mobilenet-v2", 1)


@pytest.mark.slow
def test_bert_base_matches_the_onnx_route():
    both_routes("bert-base", 1)


def test_bert_tiny_with_a_dynamic_batch():
    name = "bert-tiny"
    model, spec = zoo.build_model(name), zoo.get(name)
    feeds = zoo.sample_inputs(name, batch=2)
    args = tuple(torch.from_numpy(feeds[i.name]) for i in spec.inputs)
    batch = torch.export.Dim("batch", min=1, max=8)
    dynamic = {i.name: {0: batch} for i in spec.inputs}
    graph = load(model, example_inputs=args, dynamic_shapes=dynamic)
    assert [graph.types[i].shape for i in graph.inputs] == [("batch", 128)] * 3
    profiles = {i.name: ((1, 128), (2, 128), (4, 128)) for i in spec.inputs}
    engine = ember.build(model, ember.BuildConfig(device="cpu", profiles=profiles),
                         example_inputs=args, dynamic_shapes=dynamic)
    for n in (1, 3):
        f = zoo.sample_inputs(name, batch=n, seed=n)
        with torch.no_grad():
            ref = model(*(torch.from_numpy(f[i.name]) for i in spec.inputs))
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        assert rel(run(engine, f)[0], ref.numpy()) < 1e-4


class Small(nn.Module):
    """Ops the zoo's CNNs don't use, checked against PyTorch itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, groups=2, dilation=1)
        self.bn = nn.BatchNorm2d(8, affine=False)
        self.ln = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = nn.functional.silu(self.bn(self.conv(x)))
        y = nn.functional.avg_pool2d(nn.functional.hardswish(y), 2, ceil_mode=True)
        y = torch.cat([y, torch.sigmoid(y) * 2 - 1, nn.functional.relu6(y)], 1)  # (n, 24, 3, 3)
        z = self.ln(y.flatten(2).transpose(1, 2).reshape(-1, 3, 24)[..., :6])
        z = torch.softmax(self.fc(nn.functional.gelu(z, approximate="tanh")), -1)
        return y.mean((2, 3)), z.squeeze(1).permute(0, 2, 1) if z.shape[1] == 1 else z


def test_other_ops_match_pytorch():
    torch.manual_seed(0)
    m = Small().eval()
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 6, 6)
    assert detect(m).name == "torch"
    engine = ember.build(m, CPU, example_inputs=(x,), output_names=["pooled", "probs"])
    assert [s.name for s in engine.plan.outputs] == ["pooled", "probs"]
    with torch.no_grad():
        refs = m(x)
    for ours, ref in zip(run(engine, {"x": x.numpy()}), refs):
        assert ours.shape == tuple(ref.shape) and rel(ours, ref.numpy()) < 1e-5


def test_an_exported_program_is_accepted():
    m = nn.Sequential(nn.Linear(5, 4), nn.ReLU()).eval()
    x = torch.randn(3, 5)
    graph = load(torch.export.export(m, (x,)))
    assert graph.source_info.format == "torch" and [n.op.value for n in graph.nodes] == ["Gemm", "Relu"]
    assert [n.name for n in graph.nodes] == ["0", "1"]  # module paths name the layers


class Unmapped(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.flip(x, [1]) + torch.cummax(x, 1).values
        return torch.relu(y) + torch.flip(y, [0])


def test_unsupported_ops_are_listed_in_one_error():
    with pytest.raises(UnsupportedOpError) as info:
        load(Unmapped(), example_inputs=(torch.randn(2, 3),))
    message = str(info.value)
    assert "aten.flip.default (2x" in message and "aten.cummax.default (1x" in message
    assert "relu" not in message and "2 ATen op(s)" in message
    assert "aten.convolution" in SUPPORTED_OPS


def test_a_module_needs_example_inputs():
    with pytest.raises(ModelLoadError, match="example_inputs"):
        ember.build(nn.ReLU(), CPU)

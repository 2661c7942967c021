"""The network-definition API (``ember.Network``): typed handles, errors at the call, the same
IR (and the same fusions and outputs) as the equivalent ONNX model."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

import ember
from ember.errors import GraphError, ModelLoadError, ShapeError
from ember.frontends import detect, load
from ember.ir import DType, OpType

CPU = ember.BuildConfig(device="cpu")


def run(engine: ember.Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with engine.create_context() as ctx:
        return ctx.infer(feeds)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def test_issue_example_typed_handles_and_names():
    rng = np.random.default_rng(0)
    net = ember.Network()
    x = net.input("x", (1, 3, 32, 32))
    assert (x.name, x.shape, x.dtype) == ("x", (1, 3, 32, 32), DType.FLOAT32)
    w, b = rng.standard_normal((8, 3, 7, 7)), rng.standard_normal(8)  # float64: takes x's dtype
    y = net.conv2d(x, w, b, stride=2, padding=3).relu()
    assert y.shape == (1, 8, 16, 16) and y.dtype is DType.FLOAT32
    z = net.conv2d(y, torch.randn(8, 1, 3, 3), groups=8, padding=2, dilation=2).relu()  # torch weights
    assert z.shape == (1, 8, 16, 16) and z.name != y.name  # auto names are unique
    net.output(z, "y")
    assert net.lrn(z, 5).shape == z.shape  # not an output: dropped from the graph
    assert detect(net).name == "network"
    graph = load(net)
    assert graph.inputs == ["x"] and graph.outputs == ["y"]
    assert [n.op for n in graph.nodes] == [OpType.CONV, OpType.RELU, OpType.CONV, OpType.RELU]
    assert len({n.name for n in graph.nodes}) == 4
    engine = ember.build(net, CPU)
    feed = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = torch.relu(torch.nn.functional.conv2d(
        torch.relu(torch.nn.functional.conv2d(torch.from_numpy(feed), torch.from_numpy(w).float(),
                                              torch.from_numpy(b).float(), stride=2, padding=3)),
        torch.from_numpy(graph.constants[graph.nodes[2].inputs[1]]), padding=2, dilation=2, groups=8))
    assert rel(run(engine, {"x": feed})["y"], ref.numpy()) < 1e-5


def test_errors_are_raised_by_the_call_that_causes_them():
    net = ember.Network("bad")
    x = net.input("x", (1, 3, 8, 8))
    with pytest.raises(ShapeError, match=r"conv2d\(\).*3 channels"):
        net.conv2d(x, np.ones((2, 4, 3, 3), np.float32))
    with pytest.raises(ShapeError, match=r"add\(\).*broadcast"):
        x + net.input("z", (1, 5, 8, 8))
    with pytest.raises(ShapeError, match="linear"):
        net.linear(net.flatten(x), np.ones((10, 7), np.float32))
    with pytest.raises(GraphError, match="already used"):
        net.input("x", (1,))
    with pytest.raises(ShapeError):
        net.reshape(x, (5, -1))
    other = ember.Network("other").input("x", (1, 3, 8, 8))
    with pytest.raises(GraphError, match="another Network"):
        net.add(x, other)
    with pytest.raises(ModelLoadError, match="no outputs"):
        load(net)
    # the failed calls left nothing behind (and the Flatten no output reads is left out)
    net.output(net.relu(x), "y")
    assert [n.op for n in load(net).nodes] == [OpType.RELU]


def test_conv_bn_relu_fuses_to_one_fused_conv():
    rng = np.random.default_rng(1)
    net = ember.Network()
    x = net.input("x", (1, 4, 8, 8))
    y = net.conv2d(x, rng.standard_normal((6, 4, 3, 3)), padding=1, name="conv")
    y = net.batch_norm(y, rng.random(6) + 0.5, rng.standard_normal(6), rng.standard_normal(6),
                       rng.random(6) + 0.5, name="bn").relu()
    net.output(y, "y")
    engine = ember.build(net, CPU)
    assert [layer.kind for layer in engine.plan.layers] == ["FusedConv"]
    assert engine.plan.layers[0].origin == ("conv", "bn", "relu")


class Block(nn.Module):
    """A ResNet basic block, a stem and a head: the ops of the zoo's CNNs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn0(self.stem(x))))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + x)
        return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)), -1)


def block_network(m: Block, batch: object) -> ember.Network:
    def bn(net: ember.Network, t: ember.frontends.network.Tensor, b: nn.BatchNorm2d) -> ember.frontends.network.Tensor:
        return net.batch_norm(t, b.weight, b.bias, b.running_mean, b.running_var, eps=b.eps)

    net = ember.Network("block")
    x = net.input("input", (batch, 3, 16, 16))
    x = net.max_pool2d(bn(net, net.conv2d(x, m.stem.weight, stride=2, padding=1), m.bn0).relu(), 3, 2, 1)
    y = bn(net, net.conv2d(x, m.conv1.weight, padding=1), m.bn1).relu()
    y = (bn(net, net.conv2d(y, m.conv2.weight, padding=1), m.bn2) + x).relu()
    out = net.linear(net.global_avg_pool(y).flatten(1), m.fc.weight, m.fc.bias).softmax(-1)
    net.output(out, "output")
    return net


def block() -> Block:
    torch.manual_seed(0)
    m = Block().eval()
    for b in (m.bn0, m.bn1, m.bn2):
        b.running_mean.uniform_(-1, 1)
        b.running_var.uniform_(0.5, 2)
    return m


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_resnet_block_matches_the_onnx_route():
    m = block()
    x = torch.randn(2, 3, 16, 16)
    buf = io.BytesIO()
    torch.onnx.export(m, (x,), buf, input_names=["input"], output_names=["output"], opset_version=17,
                      dynamo=False)
    via_onnx = ember.build(buf.getvalue(), CPU)
    via_net = ember.build(block_network(m, 2), CPU)
    feed = {"input": x.numpy()}
    ours, theirs = run(via_net, feed)["output"], run(via_onnx, feed)["output"]
    assert rel(ours, theirs) < 1e-5
    with torch.no_grad():
        assert rel(ours, m(x).numpy()) < 1e-4
    kinds = sorted(layer.kind for layer in via_net.plan.layers)
    assert kinds == sorted(layer.kind for layer in via_onnx.plan.layers)
    assert kinds.count("FusedConv") == 3


def test_dynamic_batch_with_a_profile():
    m = block()
    net = block_network(m, "batch")
    assert net.inputs[0].shape == ("batch", 3, 16, 16)
    cfg = ember.BuildConfig(device="cpu", profiles={"input": ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))})
    engine = ember.build(net, cfg)
    for n in (1, 3):
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            assert rel(run(engine, {"input": x.numpy()})["output"], m(x).numpy()) < 1e-4


def test_transformer_ops():
    rng = np.random.default_rng(2)
    net = ember.Network("tf")
    ids = net.input("ids", (2, 5), DType.INT64)
    h = net.embedding(ids, rng.standard_normal((11, 8)).astype(np.float32))
    h = net.layer_norm(h, np.ones(8), np.zeros(8), eps=1e-12)
    q = net.linear(h, rng.standard_normal((8, 8)), rng.standard_normal(8))
    s = (q @ net.transpose(h, (0, 2, 1)) / 2.0).softmax(-1)
    a = net.matmul(s, h)
    g = net.concat([a.gelu(), a.sigmoid(), a.tanh(), a.silu(), a.relu6()], axis=-1)
    out = net.mean(net.reshape(g, (2, 5, 5, 8)), axes=2)
    out = net.unsqueeze(out - 1.0, 0) * 0.5
    net.output(net.squeeze(out, 0), "out")
    assert out.shape == (1, 2, 5, 8)
    engine = ember.build(net, CPU)
    ids_v = rng.integers(0, 11, (2, 5))
    got = run(engine, {"ids": ids_v})["out"]
    g_ = load(net)
    t = torch.from_numpy
    table = [v for k, v in g_.constants.items() if v.shape == (11, 8)][0]
    hh = torch.nn.functional.layer_norm(t(table)[t(ids_v)], (8,), eps=1e-12)
    wq = [v for k, v in g_.constants.items() if k.startswith("linear.weight")][0]
    bq = [v for k, v in g_.constants.items() if k.startswith("linear.bias")][0]
    qq = hh @ t(wq) + t(bq)
    aa = torch.softmax(qq @ hh.transpose(1, 2) / 2, -1) @ hh
    gg = torch.cat([nn.functional.gelu(aa), aa.sigmoid(), aa.tanh(), nn.functional.silu(aa),
                    nn.functional.relu6(aa)], -1)
    ref = (gg.reshape(2, 5, 5, 8).mean(2) - 1) * 0.5
    assert rel(got, ref.numpy()) < 1e-5

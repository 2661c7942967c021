"""INT8 CUDA builds end to end (Ember's Triton INT8 layers): calibrated on the GPU, the engine keeps
the fp32 engine's results, its INT8 layers read and write 8 bits, it survives the engine file, the
CPU and CUDA INT8 engines of one calibration cache agree, an explicitly quantized (Q/DQ) model runs
its layers in INT8 and a transformer keeps its embeddings. All need a GPU with Triton (``cuda``)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import ember
from ember.ir import OpType

pytestmark = pytest.mark.cuda


class Net(torch.nn.Module):
    """Stem, residual block, depthwise conv (stays fp16 on CUDA), pool and classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(32)
        self.c2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c3 = torch.nn.Conv2d(32, 32, 1)
        self.dw = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.c4 = torch.nn.Conv2d(32, 64, 1)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x)))
        z = torch.relu(self.c3(torch.relu(self.c2(y))) + y)
        z = torch.relu(self.c4(torch.relu(self.dw(z))))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


def _export(net: torch.nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return buf.getvalue()


@pytest.fixture(scope="module")
def model() -> bytes:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return _export(net, torch.zeros(1, 3, 16, 16))


def _batches(n: int = 4, seed: int = 0, batch: int = 8) -> list[dict[str, np.ndarray]]:
    r = np.random.default_rng(seed)
    return [{"x": r.normal(0, 1, (batch, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _run(engine: ember.Engine, feeds) -> np.ndarray:
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)["y"]
    return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def test_calibrated_cuda_engine_keeps_fp32_results_and_survives_the_engine_file(model, tmp_path):
    shapes = {"x": (8, 3, 16, 16)}
    fp32 = ember.build(model, ember.BuildConfig(device="cuda", shapes=shapes))
    cache = tmp_path / "m.calib"
    cfg = ember.BuildConfig(device="cuda", precision="int8", shapes=shapes, calibration_cache=str(cache))
    q = ember.build(model, cfg, calibration_data=_batches())
    ops = {n.name: n.op for n in q.plan.graph.nodes}
    # c2, c3 (+ residual), c4; dw (grouped) and c1 (an image's 3 channels) stay fp16
    assert sum(op is OpType.QCONV for op in ops.values()) == 3
    assert sum(op is OpType.QGEMM for op in ops.values()) == 1
    # 8 bits between INT8 layers, stored int8 on CUDA (the tensor cores multiply signed bytes)
    assert any(t.dtype.name == "INT8" for t in q.plan.graph.types.values())
    assert not any(t.dtype.name == "UINT8" for t in q.plan.graph.types.values())
    assert {str(lay.precision) for lay in q.plan.layers} <= {"int8", "fp16", "fp32"}
    assert any(str(lay.tactic).startswith("triton_int8_") for lay in q.plan.layers)
    feeds = _batches(1, seed=7)[0]
    want, got = _run(fp32, feeds), _run(q, feeds)
    assert np.abs(got - want).max() / np.abs(want).max() < 0.08
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75
    path = tmp_path / "q.ember"
    q.save(path)
    again = ember.load(path)
    np.testing.assert_array_equal(_run(again, feeds), got)
    # the CPU INT8 engine of the same calibration cache computes the same layers (oneDNN): close
    cpu = ember.build(model, ember.BuildConfig(device="cpu", precision="int8", shapes=shapes,
                                               calibration_cache=str(cache)))
    ref = _run(cpu, feeds)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 0.05


def test_qdq_model_runs_int8_on_cuda(model, tmp_path):
    import onnx

    from ember.tools.quantize import quantize_model

    qdq = tmp_path / "qdq.onnx"
    src = tmp_path / "m.onnx"
    src.write_bytes(model)
    onnx.save(quantize_model(str(src), _batches()), str(qdq))
    engine = ember.build(str(qdq), ember.BuildConfig(device="cuda", shapes={"x": (8, 3, 16, 16)}))
    assert any(n.op is OpType.QCONV for n in engine.plan.graph.nodes)
    fp32 = ember.build(model, ember.BuildConfig(device="cuda", shapes={"x": (8, 3, 16, 16)}))
    feeds = _batches(1, seed=3)[0]
    want, got = _run(fp32, feeds), _run(engine, feeds)
    assert np.abs(got - want).max() / np.abs(want).max() < 0.1


class _Encoder(torch.nn.Module):
    """``is_causal=False`` passed explicitly: the TorchScript exporter otherwise traces it as a
    tensor and fails inside SDPA (as in ``tests/frontends/sweep_modules.py``)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, src_mask=None, is_causal=False)


def test_transformer_layers_keep_their_embeddings(tmp_path):
    torch.manual_seed(0)
    layer = _Encoder().eval()
    x = torch.randn(4, 16, 64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    r = np.random.default_rng(1)
    calib = [{"x": r.normal(0, 1, (4, 16, 64)).astype(np.float32)} for _ in range(4)]
    fp32 = ember.build(buf.getvalue(), ember.BuildConfig(device="cuda"))
    q = ember.build(buf.getvalue(), ember.BuildConfig(device="cuda", precision="int8", calibrator="minmax"),
                    calibration_data=calib)
    assert sum(n.op is OpType.QGEMM for n in q.plan.graph.nodes) >= 3
    feeds = {"x": r.normal(0, 1, (4, 16, 64)).astype(np.float32)}
    a, b = _run(q, feeds).reshape(-1, 64), _run(fp32, feeds).reshape(-1, 64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.mean() >= 0.99, cos.mean()

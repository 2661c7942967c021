"""Correctness of the persistent-primitive extension against PyTorch's own convolution.

    EMBER_ONEDNN_PREFIX=/tmp/onednn-gomp python -m pytest -q -p no:cacheprovider bench/probes/onednn_persistent

Skipped where no oneDNN prefix is configured (``build.default_prefix``) or no compiler is present;
``make test`` runs ``tests/`` only, so the shared suite does not collect this folder.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import build  # noqa: E402

CL = torch.channels_last


@pytest.fixture(scope="module")
def ext():
    prefix = build.default_prefix()
    if prefix is None or shutil.which("c++") is None:
        pytest.skip("no oneDNN prefix (EMBER_ONEDNN_PREFIX) or no C++ compiler")
    return build.load(prefix)


def _ref(x, w, b, stride, pad_l, pad_r, groups, act, lo=0.0, hi=6.0, residual=None):
    xp = F.pad(x, (pad_l[1], pad_r[1], pad_l[0], pad_r[0]))
    y = F.conv2d(xp, w, b, stride, 0, 1, groups)
    if residual is not None:
        y = y + residual
    if act == "relu":
        y = torch.relu(y)
    elif act == "clip":
        y = y.clamp(lo, hi)
    return y


@pytest.mark.parametrize("cin,cout,k,stride,groups,pads,act,residual", [
    (16, 96, 1, 1, 1, (0, 0, 0, 0), "clip", False),       # MobileNetV2 expansion
    (96, 96, 3, 2, 96, (1, 1, 1, 1), "clip", False),      # depthwise stride 2
    (144, 144, 3, 1, 144, (1, 1, 1, 1), "clip", False),   # depthwise stride 1
    (144, 24, 1, 1, 1, (0, 0, 0, 0), "none", True),       # projection + residual
    (3, 32, 3, 2, 1, (1, 1, 1, 1), "clip", False),        # stem
    (64, 64, 3, 1, 1, (1, 1, 1, 1), "relu", True),        # ResNet block conv + residual, ReLU after the add
    (8, 12, 3, 2, 4, (0, 0, 1, 1), "none", False),        # grouped, asymmetric (SAME_UPPER-like) pads
])
@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_matches_torch(ext, cin, cout, k, stride, groups, pads, act, residual, batch):
    torch.manual_seed(0)
    hw = 15
    x = torch.randn(batch, cin, hw, hw).contiguous(memory_format=CL)
    w = torch.randn(cout, cin // groups, k, k) / (cin // groups * k * k) ** 0.5
    b = torch.randn(cout)
    pad_l, pad_r = [pads[0], pads[1]], [pads[2], pads[3]]
    conv = ext.Conv(w, b, list(x.shape), [stride, stride], pad_l, pad_r, [1, 1], groups,
                    activation=act, alpha=0.0, beta=6.0, residual=residual)
    out_shape = list(F.conv2d(F.pad(x, (pad_l[1], pad_r[1], pad_l[0], pad_r[0])), w, None, stride, 0, 1, groups).shape)
    r = torch.randn(out_shape).contiguous(memory_format=CL) if residual else None
    ref = _ref(x, w, b, [stride, stride], pad_l, pad_r, groups, act, residual=r)
    assert conv.dst_desc.dims == list(ref.shape)
    out = torch.empty(ref.shape, memory_format=CL)
    conv.run(x, out, r) if residual else conv.run(x, out)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out2 = torch.full(ref.shape, float("nan")).contiguous(memory_format=CL)  # runs again, same result
    conv.run(x, out2, r) if residual else conv.run(x, out2)
    torch.testing.assert_close(out2, out, rtol=0, atol=0)


def test_int8_requantized_output_within_one_step(ext):
    torch.manual_seed(1)
    n, cin, cout, hw = 2, 32, 48, 9
    xs, ws, os_, ozp = 0.05, torch.rand(cout) * 0.01 + 0.002, 0.08, 3
    qx = torch.randint(0, 255, (n, cin, hw, hw), dtype=torch.uint8).contiguous(memory_format=CL)
    qw = torch.randint(-127, 128, (cout, cin, 3, 3), dtype=torch.int8)
    b = torch.randn(cout)
    conv = ext.Conv(qw, b, [n, cin, hw, hw], [1, 1], [1, 1], [1, 1], [1, 1], 1, activation="clip", alpha=0.0,
                    beta=6.0, src_dtype="u8", dst_dtype="u8", src_scale=xs, w_scales=ws, dst_scale=os_, dst_zp=ozp)
    real = F.conv2d(qx.double() * xs, qw.double() * ws.double()[:, None, None, None], b.double(), 1, 1)
    want = torch.clamp(torch.round(real.clamp(0, 6) / os_) + ozp, 0, 255)
    out = torch.empty(n, cout, hw, hw, dtype=torch.uint8).contiguous(memory_format=CL)
    conv.run(qx, out)
    assert (out.double() - want).abs().max() <= 1


def test_int8_residual_sum_and_zero_point(ext):
    torch.manual_seed(2)
    n, c, hw = 1, 24, 7
    xs, xzp, ws = 0.04, 5, torch.full((c,), 0.01)
    rs, rzp, os_, ozp = 0.06, 128, 0.07, 128
    qx = torch.randint(0, 255, (n, c, hw, hw), dtype=torch.uint8).contiguous(memory_format=CL)
    qr = torch.randint(0, 255, (n, c, hw, hw), dtype=torch.uint8).contiguous(memory_format=CL)
    qw = torch.randint(-127, 128, (c, c, 1, 1), dtype=torch.int8)
    conv = ext.Conv(qw, None, [n, c, hw, hw], [1, 1], [0, 0], [0, 0], [1, 1], 1, residual=True, src_dtype="u8",
                    dst_dtype="u8", src_scale=xs, src_zp=xzp, w_scales=ws, dst_scale=os_, dst_zp=ozp,
                    residual_scale=rs, residual_zp=rzp, residual_dtype="u8")
    real = F.conv2d((qx.double() - xzp) * xs, qw.double() * 0.01) + (qr.double() - rzp) * rs
    want = torch.clamp(torch.round(real / os_) + ozp, 0, 255)
    out = torch.empty(n, c, hw, hw, dtype=torch.uint8).contiguous(memory_format=CL)
    conv.run(qx, out, qr)
    assert (out.double() - want).abs().max() <= 1


def test_bad_input_is_a_clear_error(ext):
    conv = ext.Conv(torch.randn(8, 4, 1, 1), None, [1, 4, 5, 5], [1, 1], [0, 0], [0, 0], [1, 1], 1)
    out = torch.empty(1, 8, 5, 5, memory_format=CL)
    with pytest.raises(ValueError, match="shape"):
        conv.run(torch.randn(1, 4, 6, 6).contiguous(memory_format=CL), out)
    with pytest.raises(ValueError, match="channels-last"):
        conv.run(torch.randn(1, 4, 5, 5), out)
    with pytest.raises(ValueError, match="no residual"):
        conv.run(torch.randn(1, 4, 5, 5).contiguous(memory_format=CL), out, out)
    with pytest.raises(ValueError, match="channels"):
        ext.Conv(torch.randn(8, 4, 1, 1), None, [1, 5, 5, 5], [1, 1], [0, 0], [0, 0], [1, 1], 1)


def test_sycl_build_is_refused_with_a_reason(tmp_path):
    inc = tmp_path / "include" / "oneapi" / "dnnl"
    inc.mkdir(parents=True)
    (inc / "dnnl_config.h").write_text("#define DNNL_RUNTIME_TBB 4u\n#define DNNL_RUNTIME_SYCL 512u\n"
                                       "#define DNNL_CPU_THREADING_RUNTIME DNNL_RUNTIME_TBB\n"
                                       "#define DNNL_CPU_RUNTIME DNNL_RUNTIME_SYCL\n")
    (inc / "dnnl_version.h").write_text("#define DNNL_VERSION_MAJOR 3\n#define DNNL_VERSION_MINOR 13\n"
                                        "#define DNNL_VERSION_PATCH 2\n")
    assert build.config_of(tmp_path)["cpu_runtime"] == "SYCL"
    with pytest.raises(build.OneDNNUnavailable, match="SYCL CPU runtime"):
        build.load(tmp_path)


class _Block(torch.nn.Module):
    """Stem, ReLU6 expansion, depthwise stride 1 and 2, projection with a residual: MobileNetV2's kinds."""

    def __init__(self) -> None:
        super().__init__()
        c = torch.nn.Conv2d
        self.stem = torch.nn.Sequential(c(3, 16, 3, 2, 1), torch.nn.ReLU6())
        self.expand = torch.nn.Sequential(c(16, 48, 1), torch.nn.ReLU6(), c(48, 48, 3, 1, 1, groups=48),
                                          torch.nn.ReLU6(), c(48, 16, 1))
        self.down = torch.nn.Sequential(c(16, 32, 3, 2, 1, groups=16), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.down(y + self.expand(y))


def _engine(tmp_path, precision: str):
    import numpy as np

    import ember

    torch.manual_seed(3)
    model = _Block().eval()
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "block.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=False)
    feeds = [{"input": np.random.default_rng(s).standard_normal((2, 3, 32, 32)).astype(np.float32)} for s in range(4)]
    cfg = ember.BuildConfig(device=ember.Device.CPU, precision=ember.Precision(precision))
    kw = {"calibration_data": feeds} if precision == "int8" else {}
    return ember.build(str(path), cfg, progress=False, **kw), feeds


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_swapped_engine_matches_ember(ext, tmp_path, precision):
    import layers
    import numpy as np

    engine, feeds = _engine(tmp_path, precision)
    swap = layers.swap_convolutions(engine, ext)
    assert swap.replaced and not swap.kept, swap.kept
    if precision == "int8":  # the layers swapped are INT8 ones
        from ember.ir.optype import OpType

        ops = {n.op for n in engine.plan.graph.nodes if n.name in swap.replaced}
        assert ops == {OpType.QCONV}, ops
    for feed in feeds:
        with engine.create_context() as a, swap.engine.create_context() as b:
            want, got = np.asarray(a.infer(feed)["output"]), np.asarray(b.infer(feed)["output"])
        if precision == "fp32":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:  # one requantization step apart at most, where oneDNN 3.2 and 3.12 round a tie differently
            assert np.abs(got - want).max() <= 0.05 * np.abs(want).max() + 1e-6

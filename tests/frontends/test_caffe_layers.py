"""Caffe layers one by one against numpy/torch references (Caffe's own formulas, including its
ceil-mode pooling sizes, AVE divisors and LRN regions), on the CPU backend."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from caffe_util import caffemodel, net

import ember
from ember.errors import UnsupportedOpError
from ember.frontends.caffe import load

RNG = np.random.default_rng(7)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run(prototxt: str, blobs: Mapping[str, Sequence[np.ndarray]], feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    graph = load(prototxt, caffemodel(blobs) if blobs else None, outputs=outputs)
    engine = ember.build(graph, ember.BuildConfig(device="cpu"), progress=False)
    with engine.create_context() as ctx:
        return {k: np.asarray(v) for k, v in ctx.infer(dict(feeds)).items()}


def close(a: np.ndarray, b: np.ndarray | torch.Tensor, tol: float = 1e-5) -> None:
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


T = torch.from_numpy


# ---- convolution ---------------------------------------------------------------------------
@pytest.mark.parametrize("param, kw", [
    ("num_output: 4 kernel_size: 3 pad: 1", dict(padding=1)),
    ("num_output: 6 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1 group: 3",
     dict(stride=(2, 1), padding=(1, 0), groups=3)),
    ("num_output: 4 kernel_size: 3 kernel_size: 2 dilation: 2 stride: 2 pad: 2 bias_term: false",
     dict(stride=2, padding=2, dilation=2)),
])
def test_convolution(param: str, kw: dict) -> None:
    x = rand(2, 6, 9, 8)
    out = int(param.split()[1])
    group = kw.get("groups", 1)
    kh, kw_ = (3, 2) if "kernel_h" in param or "kernel_size: 2" in param else (3, 3)
    w = rand(out, 6 // group, kh, kw_)
    b = rand(out)
    blobs = [w] if "bias_term: false" in param else [w, b]
    y = run(net(f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ {param} }} }}',
                inputs='input: "data" input_shape { dim: 2 dim: 6 dim: 9 dim: 8 }'), {"c": blobs}, {"data": x})["c"]
    close(y, F.conv2d(T(x), T(w), None if len(blobs) == 1 else T(b), **kw), 1e-4)


def test_deconvolution() -> None:
    x, w, b = rand(1, 4, 5, 6), rand(4, 3, 4, 4), rand(6)
    y = run(net('layer { name: "d" type: "Deconvolution" bottom: "data" top: "d" '
                'convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }',
                inputs='input: "data" input_shape { dim: 1 dim: 4 dim: 5 dim: 6 }'), {"d": [w, b]}, {"data": x})["d"]
    assert y.shape == (1, 6, 10, 12)  # 2 * (5 - 1) + 4 - 2
    close(y, F.conv_transpose2d(T(x), T(w), T(b), stride=2, padding=1, groups=2), 1e-4)


# ---- pooling: Caffe's loops as the reference -------------------------------------------------
def caffe_pool(x: np.ndarray, k: int, s: int, pad: int, ave: bool, ceil: bool = True) -> np.ndarray:
    """Caffe's PoolingLayer::Forward_cpu (MAX and AVE) with its Reshape's output size."""
    n, c, h, w = x.shape

    def size(d: int) -> int:
        span = d + 2 * pad - k
        o = (math.ceil(span / s) if ceil else span // s) + 1
        return o - 1 if pad and (o - 1) * s >= d + pad else o

    oh, ow = size(h), size(w)
    y = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - pad, j * s - pad
            he, we = min(hs + k, h + pad), min(ws + k, w + pad)
            count = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we].astype(np.float64)
            y[:, :, i, j] = win.sum(axis=(2, 3)) / count if ave else win.max(axis=(2, 3))
    return y.astype(np.float32)


@pytest.mark.parametrize("size, k, s, pad", [((6, 7), 3, 2, 0), ((7, 7), 3, 2, 1), ((8, 5), 2, 2, 1),
                                             ((9, 9), 3, 3, 2), ((5, 6), 3, 1, 1), ((13, 13), 5, 3, 2)])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffe(size: tuple[int, int], k: int, s: int, pad: int, method: str) -> None:
    x = rand(2, 3, *size)
    y = run(net(f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param {{ pool: {method} '
                f'kernel_size: {k} stride: {s} pad: {pad} }} }}',
                inputs=f'input: "data" input_shape {{ dim: 2 dim: 3 dim: {size[0]} dim: {size[1]} }}'),
            {}, {"data": x})["p"]
    close(y, caffe_pool(x, k, s, pad, method == "AVE"))


def test_pooling_floor_round_mode_and_global() -> None:
    x = rand(1, 2, 7, 7)
    y = run(net('layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                'pooling_param { pool: AVE kernel_size: 2 stride: 2 round_mode: FLOOR } }',
                'layer { name: "g" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: MAX '
                'global_pooling: true } }',
                'layer { name: "a" type: "Pooling" bottom: "data" top: "a" pooling_param { pool: AVE '
                'global_pooling: true } }',
                inputs='input: "data" input_shape { dim: 1 dim: 2 dim: 7 dim: 7 }'), {}, {"data": x})
    close(y["p"], caffe_pool(x, 2, 2, 0, True, ceil=False))
    close(y["g"], x.max(axis=(2, 3), keepdims=True))
    close(y["a"], x.mean(axis=(2, 3), keepdims=True))


def test_pooling_window_past_the_input_is_refused() -> None:
    # 6 wide, kernel 1, stride 2, no pad: Caffe makes 4 windows, the last starting at 6 (empty)
    with pytest.raises(UnsupportedOpError, match=r"Pooling: layer 'p': .*starts past the input"):
        load(net('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 1 '
                 'stride: 2 } }',
                 inputs='input: "data" input_shape { dim: 1 dim: 1 dim: 6 dim: 6 }'))


# ---- inner product ---------------------------------------------------------------------------
@pytest.mark.parametrize("param", ["num_output: 5", "num_output: 5 axis: 2", "num_output: 5 transpose: true",
                                   "num_output: 5 bias_term: false"])
def test_inner_product(param: str) -> None:
    x = rand(2, 3, 4, 5)
    axis = 2 if "axis: 2" in param else 1
    k = int(np.prod(x.shape[axis:]))
    w, b = rand(5, k), rand(5)
    blob = w.T.copy() if "transpose" in param else w
    blobs = [blob] if "bias_term" in param else [blob, b]
    y = run(net(f'layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param {{ '
                f'{param} }} }}',
                inputs='input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }'), {"fc": blobs}, {"data": x})["fc"]
    ref = x.reshape(*x.shape[:axis], k) @ w.T + (0 if len(blobs) == 1 else b)
    close(y, ref, 1e-4)


# ---- element-wise ----------------------------------------------------------------------------
ACTIVATIONS = [
    ('type: "ReLU"', lambda x: np.maximum(x, 0)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda x: np.where(x > 0, x, 0.1 * x)),
    ('type: "Sigmoid"', lambda x: 1 / (1 + np.exp(-x))),
    ('type: "TanH"', np.tanh),
    ('type: "ELU" elu_param { alpha: 0.5 }', lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ('type: "AbsVal"', np.abs),
    ('type: "BNLL"', lambda x: np.log1p(np.exp(x))),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 3 }', lambda x: (3 + 0.5 * x) ** 2),
    ('type: "Power" power_param { scale: -2 }', lambda x: -2 * x),
    ('type: "Power"', lambda x: x),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', lambda x: 2 ** (1 + 0.5 * x)),
    ('type: "Exp"', np.exp),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 5 }', lambda x: np.log10(5 + 2 * x)),
    ('type: "Threshold" threshold_param { threshold: 0.2 }', lambda x: (x > 0.2).astype(np.float32)),
    ('type: "Clip" clip_param { min: -0.5 max: 0.25 }', lambda x: np.clip(x, -0.5, 0.25)),
    ('type: "Swish" swish_param { beta: 2 }', lambda x: x / (1 + np.exp(-2 * x))),
]


@pytest.mark.parametrize("spec, ref", ACTIVATIONS, ids=[a[0].split('"')[1] + str(i) for i, a in enumerate(ACTIVATIONS)])
def test_elementwise_layers(spec: str, ref) -> None:
    x = rand(2, 3, 6, 7)
    y = run(net(f'layer {{ name: "a" {spec} bottom: "data" top: "a" }}'), {}, {"data": x})["a"]
    close(y, ref(x.astype(np.float64)).astype(np.float32), 1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu(shared: bool) -> None:
    x = rand(2, 3, 6, 7)
    slope = rand(1) if shared else rand(3)
    param = "prelu_param { channel_shared: true }" if shared else ""
    y = run(net(f'layer {{ name: "pr" type: "PReLU" bottom: "data" top: "data" {param} }}'),
            {"pr": [slope.reshape(()) if shared else slope]}, {"data": x})
    (out,) = y.values()
    s = slope.reshape(1, -1, 1, 1) if not shared else slope[0]
    close(out, np.where(x > 0, x, s * x))


# ---- normalization ---------------------------------------------------------------------------
def test_lrn_across_channels() -> None:
    x = 4 * rand(2, 7, 5, 5)
    y = run(net('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 5 alpha: 0.3 '
                'beta: 0.6 k: 2 } }',
                inputs='input: "data" input_shape { dim: 2 dim: 7 dim: 5 dim: 5 }'), {}, {"data": x})["n"]
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    window = sum(sq[:, i:i + 7] for i in range(5))
    close(y, (x / (2 + 0.3 / 5 * window) ** 0.6).astype(np.float32))


def test_lrn_within_channel() -> None:
    x = 4 * rand(2, 3, 6, 5)
    y = run(net('layer { name: "n" type: "LRN" bottom: "data" top: "n" '
                'lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 7 norm_region: WITHIN_CHANNEL } }',
                inputs='input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 5 }'), {}, {"data": x})["n"]
    mean = caffe_pool(x.astype(np.float64) ** 2, 3, 1, 1, ave=True).astype(np.float64)
    close(y, (x / (1 + 0.5 * mean) ** 0.75).astype(np.float32))  # k is not used in this region


@pytest.mark.parametrize("factor", [2.5, 0.0])
def test_batch_norm_scale_factor_then_scale(factor: float) -> None:
    x = rand(2, 3, 4, 5)
    mean, var = rand(3), np.abs(rand(3)) + 0.5
    gamma, beta = rand(3), rand(3)
    y = run(net('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data" batch_norm_param { eps: 0.001 } }',
                'layer { name: "sc" type: "Scale" bottom: "data" top: "data" scale_param { bias_term: true } }',
                inputs='input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }'),
            {"bn": [mean, var, np.array([factor], np.float32)], "sc": [gamma, beta]}, {"data": x})
    (out,) = y.values()
    inv = 0.0 if factor == 0 else 1 / factor
    c = (1, 3, 1, 1)
    ref = (x - (mean * inv).reshape(c)) / np.sqrt((var * inv).reshape(c) + 0.001) * gamma.reshape(c) + beta.reshape(c)
    close(out, ref, 1e-4)


def test_batch_norm_with_batch_statistics() -> None:
    x = rand(4, 3, 5, 5)
    y = run(net('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { '
                'use_global_stats: false } }',
                inputs='input: "data" input_shape { dim: 4 dim: 3 dim: 5 dim: 5 }'), {}, {"data": x})["bn"]
    m, v = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    close(y, (x - m) / np.sqrt(v + 1e-5), 1e-4)


def test_scale_second_bottom_and_num_axes_and_bias() -> None:
    x, s, b = rand(2, 3, 4, 5), rand(3, 4), rand(4, 5)
    y = run(net('layer { name: "sc" type: "Scale" bottom: "data" bottom: "s" top: "sc" }',
                'layer { name: "sc2" type: "Scale" bottom: "data" top: "sc2" scale_param { num_axes: 2 } }',
                'layer { name: "b" type: "Bias" bottom: "data" top: "b" bias_param { axis: 2 num_axes: -1 } }',
                inputs='layer { name: "in" type: "Input" top: "data" top: "s" '
                       'input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } shape { dim: 3 dim: 4 } } }'),
            {"sc2": [s], "b": [b]}, {"data": x, "s": s})
    close(y["sc"], x * s[None, :, :, None])
    close(y["sc2"], x * s[None, :, :, None])
    close(y["b"], x + b[None, None])


# ---- many bottoms and tops -------------------------------------------------------------------
def test_eltwise_sum_with_coefficients_prod_and_max() -> None:
    a, b, c = rand(2, 3, 4, 4), rand(2, 3, 4, 4), rand(2, 3, 4, 4)
    inputs = ('layer { name: "in" type: "Input" top: "a" top: "b" top: "c" '
              'input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }')
    y = run(net('layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "s" '
                'eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 } }',
                'layer { name: "p" type: "Eltwise" bottom: "a" bottom: "b" top: "p" eltwise_param { operation: '
                'PROD } }',
                'layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "m" eltwise_param '
                '{ operation: MAX } }',
                'layer { name: "plain" type: "Eltwise" bottom: "a" bottom: "c" top: "plain" }',
                inputs=inputs), {}, {"a": a, "b": b, "c": c})
    close(y["s"], 0.5 * a - 2 * b + c)
    close(y["p"], a * b)
    close(y["m"], np.maximum(np.maximum(a, b), c))
    close(y["plain"], a + c)


def test_concat_slice_split_and_dropout() -> None:
    x = rand(2, 6, 3, 4)
    y = run(net('layer { name: "sl" type: "Slice" bottom: "data" top: "s1" top: "s2" top: "s3" '
                'slice_param { axis: 1 slice_point: 1 slice_point: 4 } }',
                'layer { name: "eq" type: "Slice" bottom: "data" top: "e1" top: "e2" slice_param { slice_dim: 3 } }',
                'layer { name: "sp" type: "Split" bottom: "s3" top: "t1" top: "t2" }',
                'layer { name: "dr" type: "Dropout" bottom: "t1" top: "t1" dropout_param { dropout_ratio: 0.9 } }',
                'layer { name: "cat" type: "Concat" bottom: "s2" bottom: "t1" bottom: "t2" bottom: "s1" top: "cat" }',
                'layer { name: "cat3" type: "Concat" bottom: "e2" bottom: "e1" top: "cat3" concat_param { axis: -1 } }',
                inputs='input: "data" input_shape { dim: 2 dim: 6 dim: 3 dim: 4 }'),
            {}, {"data": x}, outputs=["cat", "cat3", "s1", "e1"])
    close(y["cat"], np.concatenate([x[:, 1:4], x[:, 4:], x[:, 4:], x[:, :1]], axis=1))
    close(y["cat3"], np.concatenate([x[..., 2:], x[..., :2]], axis=3))
    close(y["s1"], x[:, :1])
    close(y["e1"], x[..., :2])


def test_flatten_reshape_permute_softmax() -> None:
    x = rand(2, 3, 4, 5)
    y = run(net('layer { name: "f" type: "Flatten" bottom: "data" top: "f" }',
                'layer { name: "f2" type: "Flatten" bottom: "data" top: "f2" flatten_param { axis: 1 end_axis: 2 } }',
                'layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 0 dim: '
                '-1 dim: 10 } } }',
                'layer { name: "r2" type: "Reshape" bottom: "data" top: "r2" '
                'reshape_param { shape { dim: 2 dim: 2 } axis: 2 num_axes: 1 } }',
                'layer { name: "r3" type: "Reshape" bottom: "data" top: "r3" reshape_param { shape { dim: 1 } '
                'axis: -1 num_axes: 0 } }',
                'layer { name: "pm" type: "Permute" bottom: "data" top: "pm" permute_param { order: 0 order: 2 '
                'order: 3 } }',
                'layer { name: "sm" type: "Softmax" bottom: "data" top: "sm" }',
                'layer { name: "sm2" type: "Softmax" bottom: "data" top: "sm2" softmax_param { axis: -1 } }',
                inputs='input: "data" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }'), {}, {"data": x})
    close(y["f"], x.reshape(2, 60))
    close(y["f2"], x.reshape(2, 12, 5))
    close(y["r"], x.reshape(2, 6, 10))
    close(y["r2"], x.reshape(2, 3, 2, 2, 5))
    close(y["r3"], x.reshape(2, 3, 4, 5, 1))
    close(y["pm"], x.transpose(0, 2, 3, 1))
    close(y["sm"], torch.softmax(T(x), 1))
    close(y["sm2"], torch.softmax(T(x), -1))


def test_crop_and_tile() -> None:
    x, ref = rand(1, 3, 9, 8), rand(1, 3, 5, 4)
    y = run(net('layer { name: "cr" type: "Crop" bottom: "data" bottom: "ref" top: "cr" crop_param { offset: 2 } }',
                'layer { name: "cr2" type: "Crop" bottom: "data" bottom: "ref" top: "cr2" '
                'crop_param { axis: 2 offset: 3 offset: 1 } }',
                'layer { name: "cr1" type: "Crop" bottom: "data" bottom: "ref" top: "cr1" crop_param { axis: 1 '
                'offset: 0 offset: 1 offset: 2 } }',
                'layer { name: "t" type: "Tile" bottom: "ref" top: "t" tile_param { axis: 2 tiles: 3 } }',
                inputs='layer { name: "in" type: "Input" top: "data" top: "ref" '
                       'input_param { shape { dim: 1 dim: 3 dim: 9 dim: 8 } shape { dim: 1 dim: 3 dim: 5 dim: 4 } } }'),
            {}, {"data": x, "ref": ref})
    close(y["cr"], x[:, :, 2:7, 2:6])
    close(y["cr2"], x[:, :, 3:8, 1:5])
    close(y["cr1"], x[:, 0:3, 1:6, 2:6])
    close(y["t"], np.tile(ref, (1, 1, 3, 1)))

"""Pooling: MAX and AVE (and global), with Caffe's output size.

Caffe rounds pooled sizes up (``round_mode: CEIL``, the default; newer Caffe also has FLOOR):
``out = ceil((in + 2 * pad - kernel) / stride) + 1``, less one where the last window would
start in the end padding, a rule Caffe applies only when there is padding. ONNX's ``ceil_mode``
(and Ember's) always applies it; the two differ only where Caffe's last window starts past the
input altogether (no padding, a stride larger than the kernel), a window Caffe fills with
-FLT_MAX (MAX) or a division by zero (AVE): such layers are refused. AVE divides by the window's
size clipped to the padded input, padding included (ONNX's ``count_include_pad``).
"""
from __future__ import annotations

import math
from typing import Any

from ember.frontends.caffe import caffe_pb2
from ember.frontends.caffe.context import CaffeContext, CaffeLayer, reject
from ember.frontends.caffe.registry import caffe_layer
from ember.ir.optype import OpType
from ember.ops.attrs import PoolAttrs, ReduceAttrs

_PARAM = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["pooling_param"].message_type
MAX = _PARAM.enum_types_by_name["PoolMethod"].values_by_name["MAX"].number
AVE = _PARAM.enum_types_by_name["PoolMethod"].values_by_name["AVE"].number
FLOOR = _PARAM.enum_types_by_name["RoundMode"].values_by_name["FLOOR"].number


def _pair(p: Any, name: str, default: int | None) -> tuple[int, int]:
    """``<name>`` for both axes, or ``<name>_h``/``<name>_w`` (pooling spells them once)."""
    base = "kernel_size" if name == "kernel" else name
    has_hw = p.HasField(f"{name}_h") or p.HasField(f"{name}_w")
    if has_hw:
        if p.HasField(base):
            raise reject(f"give either {base} or {name}_h/{name}_w, not both")
        if name != "pad" and not (p.HasField(f"{name}_h") and p.HasField(f"{name}_w")):
            raise reject(f"give both {name}_h and {name}_w")
        return int(getattr(p, f"{name}_h")), int(getattr(p, f"{name}_w"))
    if p.HasField(base) or default is None:
        if not p.HasField(base):
            raise reject(f"{base} is missing (give {base}, or {name}_h and {name}_w, or global_pooling)")
        v = int(getattr(p, base))
        return v, v
    return default, default


def caffe_pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Caffe's ``PoolingLayer::Reshape`` output size along one axis."""
    span = size + 2 * pad - kernel
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@caffe_layer("Pooling")
def pooling(ctx: CaffeContext, layer: CaffeLayer) -> None:
    p = layer.param.pooling_param
    layer.count(bottoms=1, tops=1)
    x = ctx.type(layer.bottom())
    if x.rank != 4:
        raise reject(f"Caffe pools 4-D blobs (N, C, H, W); this bottom is {x}")
    if p.pool not in (MAX, AVE):
        raise reject("STOCHASTIC pooling is not supported (only MAX and AVE)")
    if p.global_pooling:
        if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise reject("global_pooling takes its kernel from the input; give no kernel size")
        if _pair(p, "pad", 0) != (0, 0) or _pair(p, "stride", 1) != (1, 1):
            raise reject("global_pooling needs pad 0 and stride 1")
        if p.pool == AVE:
            ctx.emit(layer, OpType.GLOBAL_AVERAGE_POOL, (layer.bottom(),), (layer.top(),))
        else:
            ctx.emit(layer, OpType.REDUCE_MAX, (layer.bottom(),), (layer.top(),),
                     ReduceAttrs(axes=(2, 3), keepdims=True))
        return
    kernel = _pair(p, "kernel", None)
    pad = _pair(p, "pad", 0)
    stride = _pair(p, "stride", 1)
    if min(kernel) < 1 or min(stride) < 1:
        raise reject(f"kernel {kernel} and stride {stride} must be positive")
    if any(pd >= k for pd, k in zip(pad, kernel)):
        raise reject(f"pad {pad} must be smaller than the kernel {kernel} (Caffe checks the same)")
    ceil = p.round_mode != FLOOR
    _check_last_window(x.shape[2:], kernel, stride, pad, ceil)
    attrs = PoolAttrs(kernel_shape=kernel, strides=stride, pads=pad + pad, dilations=(1, 1),
                      ceil_mode=ceil, count_include_pad=p.pool == AVE)
    op = OpType.MAX_POOL if p.pool == MAX else OpType.AVERAGE_POOL
    ctx.emit(layer, op, (layer.bottom(),), (layer.top(),), attrs)


def _check_last_window(spatial: tuple[object, ...], kernel: tuple[int, int], stride: tuple[int, int],
                       pad: tuple[int, int], ceil: bool) -> None:
    for axis, (size, k, s, pd) in enumerate(zip(spatial, kernel, stride, pad)):
        if not ceil or pd or s <= k:
            continue  # Ember's ceil-mode size is Caffe's
        if not isinstance(size, int):
            raise reject(f"with stride {s} > kernel {k} and no padding, Caffe's pooled size needs a "
                         f"fixed input size on axis {axis + 2}; give fixed input shapes")
        out = caffe_pooled_size(size, k, s, pd, ceil)
        if (out - 1) * s >= size:
            raise reject(f"Caffe's last pooling window on axis {axis + 2} (input {size}, kernel {k}, "
                         f"stride {s}) starts past the input and holds no value (Caffe outputs "
                         f"-FLT_MAX or divides by zero there); use round_mode: FLOOR or padding")

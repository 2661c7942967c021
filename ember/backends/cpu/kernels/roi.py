"""RoiAlign: pooling of bilinearly sampled points over regions of interest, as ONNX defines it.

Every ROI's bins are sampled on a lattice of points per bin (``sampling_ratio`` along each axis,
or ``ceil(bin size)`` per ROI when it is 0). A point's value is the bilinear blend of its four
neighbouring pixels, with ONNX's edge rules: a point more than one pixel outside the image is 0,
one within a pixel of the border is clamped onto it. ``avg`` averages the points of a bin;
``max`` takes, over the points, the largest of the four *weighted* neighbours (ONNX's reference
and ONNX Runtime compute ``max(w1 * v1, w2 * v2, w3 * v3, w4 * v4)``, not the blended value).

Vectorized over ROIs, bins and points, for groups of ROIs sampled on one lattice (the largest of
the group's; extra points masked), so the intermediate stays under ``CHUNK_ELEMENTS``: ``avg``
samples with ``grid_sample`` (one call per image of the group) and pools with the points'
weights; ``max`` gathers the four neighbours as rows of the input laid out channels-last.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ember.backends.base import CompileContext, Kernel
from ember.backends.cpu.kernels.common import Inputs, Tensor
from ember.backends.cpu.registry import register_kernel
from ember.errors import IndexRangeError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import RoiAlignAttrs, RoiAlignMode, RoiCoordinateTransform

#: Sampled values (points x channels, x 4 neighbours for ``max``) of one chunk of ROIs. A single
#: ROI above it is still processed whole (an adaptive lattice over a huge ROI can be large).
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class _Geometry:
    """Per-ROI sampling geometry, ``[R]`` tensors: the first bin's corner, the bin size and the
    number of points per bin along each axis (0: the bin has no points)."""

    y1: Tensor
    x1: Tensor
    bin_h: Tensor
    bin_w: Tensor
    gh: Tensor
    gw: Tensor
    idx: Tensor

    def take(self, sel: Tensor) -> _Geometry:
        return _Geometry(*(t.index_select(0, sel) for t in
                           (self.y1, self.x1, self.bin_h, self.bin_w, self.gh, self.gw, self.idx)))


def _geometry(rois: Tensor, idx: Tensor, a: RoiAlignAttrs, work: torch.dtype) -> _Geometry:
    """ONNX's per-ROI arithmetic: scale, the half-pixel shift, 1x1 minimum for output_half_pixel,
    ``ceil(bin size)`` points when ``sampling_ratio`` is 0."""
    boxes = rois.to(work) * a.spatial_scale
    if a.coordinate_transformation_mode is RoiCoordinateTransform.HALF_PIXEL:
        boxes = boxes - 0.5
    x1, y1, x2, y2 = boxes.unbind(1)
    rw, rh = x2 - x1, y2 - y1
    if a.coordinate_transformation_mode is RoiCoordinateTransform.OUTPUT_HALF_PIXEL:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)  # malformed ROIs count as 1x1
    bin_h, bin_w = rh / a.output_height, rw / a.output_width
    if a.sampling_ratio > 0:
        gh = gw = torch.full_like(idx, a.sampling_ratio)
    else:
        gh, gw = torch.ceil(bin_h).clamp(min=0).to(torch.int64), torch.ceil(bin_w).clamp(min=0).to(torch.int64)
    return _Geometry(y1, x1, bin_h, bin_w, gh, gw, idx)


def _chunks(g: _Geometry, per_point: int, fixed: int) -> list[tuple[Tensor, int, int]]:
    """ROIs in groups (index tensor, lattice height, lattice width) of at most ``CHUNK_ELEMENTS``
    sampled values. Every ROI of a group is sampled on the group's largest lattice (extra points
    masked), so adaptive ROIs are grouped by lattice size in powers of two: one large ROI does
    not make every other ROI sample as many points."""
    r = g.idx.shape[0]
    if fixed:
        groups = [(torch.arange(r, device=g.idx.device), fixed, fixed)]
    else:
        size = torch.maximum(g.gh, g.gw).clamp(min=1).to(torch.float64)
        bucket = torch.ceil(torch.log2(size)).to(torch.int64)
        groups = []
        for b in torch.unique(bucket).tolist():
            sel = (bucket == b).nonzero().flatten()
            groups.append((sel, max(int(g.gh[sel].max()), 1), max(int(g.gw[sel].max()), 1)))
    out = []
    for sel, lat_h, lat_w in groups:
        step = max(1, CHUNK_ELEMENTS // max(lat_h * lat_w * per_point, 1))
        out += [(sel[i:i + step], lat_h, lat_w) for i in range(0, sel.shape[0], step)]
    return out


def _points(start: Tensor, bin_size: Tensor, per_bin: Tensor, bins: int, lattice: int) -> Tensor:
    """Sample coordinates ``[R, bins, lattice]``: ``start + b * bin + (i + 0.5) * bin / per_bin``."""
    b = torch.arange(bins, device=start.device, dtype=start.dtype).view(1, bins, 1)
    i = torch.arange(lattice, device=start.device, dtype=start.dtype).view(1, 1, lattice)
    s, size = start.view(-1, 1, 1), bin_size.view(-1, 1, 1)
    return s + b * size + (i + 0.5) * size / per_bin.clamp(min=1).to(start.dtype).view(-1, 1, 1)


def _lattice(coord: Tensor, per_bin: Tensor) -> Tensor:
    """Points of ``coord[R, bins, lattice]`` on the ROI's own lattice (not the group's padding)."""
    return (torch.arange(coord.shape[2], device=coord.device).view(1, 1, -1) < per_bin.view(-1, 1, 1)).expand(
        coord.shape)


def _used(coord: Tensor, per_bin: Tensor, size: int) -> Tensor:
    """Points that count: on the ROI's own lattice and at most one pixel outside the image
    (ONNX gives a point further out the value 0)."""
    return _lattice(coord, per_bin) & (coord >= -1.0) & (coord <= float(size))


def _outer(p: Tensor, q: Tensor) -> Tensor:
    """``[R, oh, lh]`` x ``[R, ow, lw]`` -> ``[lh, lw, R, oh, ow]``: points lattice-major, so the
    pooling over a bin's points is a reduction over the leading (contiguous) dims."""
    return p.permute(2, 0, 1)[:, None, :, :, None] * q.permute(2, 0, 1)[None, :, :, None, :]


def _normalized(coord: Tensor, size: int) -> Tensor:
    """Pixel coordinates clamped onto the image (ONNX's edge rule) as grid_sample's [-1, 1]
    (align_corners=True: -1 and 1 are the first and last pixel's centres)."""
    if size == 1:
        return torch.zeros_like(coord)
    return coord.clamp(0.0, size - 1.0) * (2.0 / (size - 1)) - 1.0


def _avg(x: Tensor, g: _Geometry, oh: int, ow: int, lat_h: int, lat_w: int) -> Tensor:
    """The mean of a bin's points, each the bilinear blend of its neighbours: grid_sample (the
    blend, with the coordinates clamped as ONNX does) weighted by 1 / points per used point.
    Returns ``[C, R, oh, ow]``."""
    n, c, h, w = x.shape
    ys = _points(g.y1, g.bin_h, g.gh, oh, lat_h)
    xs = _points(g.x1, g.bin_w, g.gw, ow, lat_w)
    count = (g.gh * g.gw).clamp(min=1).to(x.dtype).view(1, 1, -1, 1, 1)
    weight = _outer(_used(ys, g.gh, h).to(x.dtype), _used(xs, g.gw, w).to(x.dtype)) / count
    gy = _normalized(ys, h).permute(2, 0, 1)[:, None, :, :, None]  # [lh, 1, R, oh, 1]
    gx = _normalized(xs, w).permute(2, 0, 1)[None, :, :, None, :]  # [1, lw, R, 1, ow]
    grid = torch.stack(torch.broadcast_tensors(gx, gy), dim=-1)  # [lh, lw, R, oh, ow, 2]
    images = [0] if n == 1 else torch.unique(g.idx).tolist()
    if len(images) == 1:
        parts = [(None, x[images[0]:images[0] + 1], grid, weight)]
    else:  # grid_sample samples each image's own ROIs
        parts = []
        for image in images:
            sel = (g.idx == image).nonzero().flatten()
            parts.append((sel, x[image:image + 1], grid.index_select(2, sel), weight.index_select(2, sel)))
    out = x.new_empty((c, g.idx.shape[0], oh, ow))
    for sel, img, at, wt in parts:
        k = at.shape[2]
        sampled = F.grid_sample(img, at.reshape(1, lat_h * lat_w, k * oh * ow, 2), mode="bilinear",
                                padding_mode="border", align_corners=True)
        pooled = sampled.view(c, lat_h * lat_w, k * oh * ow).mul_(wt.reshape(1, lat_h * lat_w, -1)).sum(1)
        if sel is None:
            return pooled.view(c, k, oh, ow)
        out.index_copy_(1, sel, pooled.view(c, k, oh, ow))
    return out


def _taps(coord: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear taps along one axis, ONNX's edge rule applied: (low, high, low weight, high weight)."""
    c = coord.clamp(min=0.0)
    low = c.to(torch.int64)  # c >= 0: truncation is floor
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(c), c - low.to(c.dtype))
    return low, high, 1.0 - frac, frac


def _max(table: Tensor, g: _Geometry, hw: tuple[int, int], oh: int, ow: int, lat_h: int, lat_w: int) -> Tensor:
    """Over a bin's points, the largest of the four weighted neighbours ``w_i * v_i``; a bin
    without points is 0. ``table`` is the input channels-last, ``[N * H * W, C]``, followed by a
    row of zeros (what a point more than a pixel outside reads) and a row of -inf (what the
    group's padding points read, so they never win). Returns ``[R, oh, ow, C]``."""
    h, w = hw
    c = table.shape[1]
    zero_row, pad_row = table.shape[0] - 2, table.shape[0] - 1
    ys = _points(g.y1, g.bin_h, g.gh, oh, lat_h)
    xs = _points(g.x1, g.bin_w, g.gw, ow, lat_w)
    inside = _outer(_used(ys, g.gh, h), _used(xs, g.gw, w))  # [lh, lw, R, oh, ow]
    own = _outer(_lattice(ys, g.gh), _lattice(xs, g.gw))  # the ROI's own points, not the padding
    ylo, yhi, wylo, wyhi = _taps(ys, h)
    xlo, xhi, wxlo, wxhi = _taps(xs, w)
    base = (g.idx * (h * w)).view(1, 1, -1, 1, 1)
    rows, weights = [], []
    for yi, wy in ((ylo, wylo), (yhi, wyhi)):
        for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
            pos = base + _outer(yi * w, torch.ones_like(xi)) + _outer(torch.ones_like(yi), xi)
            pos = torch.where(inside, pos, torch.where(own, zero_row, pad_row))
            rows.append(pos)
            weights.append(torch.where(inside, _outer(wy, wx), 1.0))
    # one gather of every (neighbour, point): [4 * lh * lw * R * oh * ow, C], weighted in place
    vals = table.index_select(0, torch.stack(rows).reshape(-1)).mul_(torch.stack(weights).reshape(-1, 1))
    out = vals.view(4 * lat_h * lat_w, -1, c).amax(0).view(-1, oh, ow, c)
    empty = ~own.reshape(lat_h * lat_w, -1).any(0).view(-1, oh, ow)  # a bin with no points is 0
    return out.masked_fill_(empty[..., None], 0.0)


def _check_indices(node: Node, idx: Tensor, batch: int) -> None:
    if idx.is_meta:
        return  # a meta tensor has no values to check
    bad = (idx < 0) | (idx >= batch)
    if bool(bad.any()):
        first = int(idx[bad][0])
        raise IndexRangeError(f"node {node.name!r} (RoiAlign): batch_indices holds {first}, outside the "
                              f"{batch} images of X (valid: 0..{batch - 1}); check the values given "
                              f"for the model's ROI batch indices")


def roi_align(node: Node, x: Tensor, rois: Tensor, idx: Tensor, a: RoiAlignAttrs) -> Tensor:
    """RoiAlign of ``x[N, C, H, W]`` over ``rois[R, 4]`` of images ``idx[R]`` -> ``[R, C, oh, ow]``."""
    n, c, h, w = x.shape
    oh, ow = a.output_height, a.output_width
    if rois.dim() != 2 or rois.shape[1] != 4 or idx.reshape(-1).shape[0] != rois.shape[0]:
        raise ValueError(f"rois must be [num_rois, 4] with one batch index each, got rois "
                         f"{list(rois.shape)} and batch_indices {list(idx.shape)}")
    r = rois.shape[0]
    if r == 0:
        return x.new_zeros((0, c, oh, ow))
    idx = idx.reshape(-1).to(torch.int64)
    _check_indices(node, idx, n)
    work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    xw = x.to(work)
    geo = _geometry(rois, idx, a, work)
    avg = a.mode is RoiAlignMode.AVG
    table = xw if avg else torch.cat([xw.permute(0, 2, 3, 1).reshape(n * h * w, c), xw.new_zeros((1, c)),
                                      xw.new_full((1, c), -math.inf)])
    chunks = _chunks(geo, c * oh * ow * (1 if avg else 4), a.sampling_ratio)
    out = xw.new_empty((c, r, oh, ow) if avg else (r, oh, ow, c))
    for sel, lat_h, lat_w in chunks:
        g = geo if len(chunks) == 1 else geo.take(sel)
        part = _avg(xw, g, oh, ow, lat_h, lat_w) if avg else _max(table, g, (h, w), oh, ow, lat_h, lat_w)
        if len(chunks) == 1:  # the one chunk is every ROI, in order
            out = part
        else:
            out.index_copy_(1 if avg else 0, sel, part)
    out = out.permute(1, 0, 2, 3) if avg else out.permute(0, 3, 1, 2)
    return out.to(x.dtype).contiguous()


@register_kernel(OpType.ROI_ALIGN)
def roi_align_kernel(node: Node, ctx: CompileContext) -> Kernel:
    """RoiAlign(X, rois, batch_indices) with every ONNX mode (see the module docstring)."""
    a: RoiAlignAttrs = node.attrs or RoiAlignAttrs()

    def run(inputs: Inputs) -> list:
        x, rois, idx = inputs[0], inputs[1], inputs[2]
        return [roi_align(node, x, rois, idx, a)]

    return run

"""Observers: running statistics of tensors over calibration batches, and the observation run.

A ``TensorObserver`` keeps, per tensor, the running min/max, a count of NaN/inf values (left out
of every statistic) and a histogram of ``|x|`` over ``[0, range]`` in a fixed number of bins
(2048 by default). The first batch sets ``range`` to its largest ``|x|``; when a later batch
goes past it, ``range`` grows by the smallest whole factor ``k`` that covers the new value and
every ``k`` neighbouring bins merge into one, so the histogram stays exact (no interpolation)
at a coarser resolution: the usual way of growing a calibration histogram.

``observe_engine`` runs an fp32 engine over the batches once and feeds every graph input and
every intermediate float tensor (or a chosen subset) to its observer, through the ``observe``
hook of ``CPUProgram.run`` (CPU) or ``CudaProgram.forward`` (CUDA, eager: ``observed_runner``).

>>> import torch
>>> obs = TensorObserver("x")
>>> obs.update(torch.tensor([-3.0, 0.0, 1.0, float("nan")]))
>>> obs.min, obs.max, obs.amax, obs.count, obs.zeros, obs.nonfinite
(-3.0, 1.0, 3.0, 3, 1, 1)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch

from ember.backends.cpu.program import CPUProgram
from ember.backends.tensors import numpy_to_torch
from ember.builder.progress import BuildProgress
from ember.errors import BuildError
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import FusedConvAttrs
from ember.plan.config import Device, Precision
from ember.runtime.engine import Engine

#: Histogram bins of an observer (TensorRT's entropy calibration uses 2048 too).
DEFAULT_BINS = 2048


class TensorObserver:
    """Running min/max and a histogram of ``|x|`` of one tensor (see the module's docstring).

    ``count``: finite values seen; ``zeros``: how many of them were exactly 0 (they are in
    ``hist[0]`` too); ``nonfinite``: NaN/inf values seen and ignored; ``range``: the histogram
    covers ``[0, range]`` in ``bins`` bins of ``bin_width``.
    """

    def __init__(self, name: str, bins: int = DEFAULT_BINS, channels: bool = False) -> None:
        if bins < 1:
            raise ValueError(f"an observer needs at least one histogram bin, not {bins}")
        self.name = name
        self.bins = bins
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.zeros = 0
        self.nonfinite = 0
        self.range = 0.0
        self.hist = np.zeros(bins, dtype=np.int64)
        #: with ``channels``: the largest finite ``|x|`` of each index of the last dim (the input
        #: channels of a GEMM), for smoothing (``ember.passes.int8``)
        self.channels = channels
        self.channel_amax: np.ndarray | None = None

    @property
    def amax(self) -> float:
        """The largest ``|x|`` seen (0 before any finite value)."""
        return max(-self.min, self.max, 0.0) if self.count else 0.0

    @property
    def bin_width(self) -> float:
        return self.range / self.bins

    def update(self, tensor: torch.Tensor) -> None:
        """Adds the values of ``tensor`` (any shape, any float dtype; left unchanged)."""
        if self.channels and tensor.dim() >= 1 and tensor.shape[-1] and tensor.numel():
            a = tensor.detach().float().abs().reshape(-1, tensor.shape[-1])
            zero = torch.zeros((), dtype=a.dtype, device=a.device)
            cm = torch.where(torch.isfinite(a), a, zero).amax(0).cpu().numpy()
            have = self.channel_amax
            if have is None or have.shape != cm.shape:
                self.channel_amax = cm.astype(np.float64)
            else:
                self.channel_amax = np.maximum(have, cm)
        x = tensor.detach().reshape(-1)
        if x.dtype != torch.float32:
            x = x.float()
        if not x.numel():
            return
        lo_t, hi_t = torch.aminmax(x)
        lo, hi = float(lo_t), float(hi_t)
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through aminmax
            finite = torch.isfinite(x)
            x = x[finite]
            self.nonfinite += int(finite.numel() - x.numel())
            if not x.numel():
                return
            lo_t, hi_t = torch.aminmax(x)
            lo, hi = float(lo_t), float(hi_t)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += int(x.numel())
        a = x.abs()
        self.zeros += int((a == 0).sum())
        amax = max(-lo, hi)
        if amax > self.range:
            self._grow(amax)
        if self.range == 0.0:  # every value so far is 0
            self.hist[0] += x.numel()
            return
        idx = (a * (self.bins / self.range)).long().clamp_(max=self.bins - 1)
        self.hist += torch.bincount(idx, minlength=self.bins).cpu().numpy()

    def _grow(self, amax: float) -> None:
        """Widens the histogram's range to cover ``amax``, merging bins by a whole factor."""
        if self.range == 0.0:  # only zeros so far: they stay in bin 0 at any range
            self.range = amax
            return
        k = max(2, math.ceil(amax / self.range))
        while k * self.range < amax:  # rounding of the division
            k += 1
        merged = np.bincount(np.arange(self.bins) // k, weights=self.hist, minlength=self.bins)
        self.hist = merged.astype(np.int64)
        self.range *= k

    def nonzero_hist(self) -> np.ndarray:
        """The histogram without the exact zeros (an int64 copy)."""
        h = self.hist.copy()
        h[0] -= self.zeros
        return h


def calibration_tensors(graph: Graph, tensors: Iterable[str] | None = None) -> list[str]:
    """The tensors calibration observes, in execution order: by default every float graph input
    and every float tensor a layer produces (graph outputs included); with ``tensors``, those,
    each checked to be such a tensor (``BuildError`` naming the others)."""
    floating = [n for n in graph.inputs if graph.types[n].dtype.is_float]
    floating += [o for node in graph.nodes for o in node.outputs
                 if o and o in graph.types and graph.types[o].dtype.is_float]
    if tensors is None:
        return floating
    wanted = list(dict.fromkeys(tensors))
    known = set(floating)
    unknown = [t for t in wanted if t not in known]
    if unknown:
        sample = ", ".join(repr(t) for t in floating[:5])
        raise BuildError(f"cannot calibrate tensors {unknown}: they are not float inputs or layer outputs "
                         f"of the engine's graph (names of the optimized graph, e.g. {sample})")
    return wanted


#: Layers whose first input is a vector of features per sample when it reaches them through a
#: GEMM (any shape) or a convolution over a 1x1 map (``unclipped_tensors``).
_GEMM_OPS = (OpType.GEMM, OpType.MATMUL, OpType.FUSED_GEMM)
_CONV_OPS = (OpType.CONV, OpType.FUSED_CONV)


def unclipped_tensors(graph: Graph, tensors: Iterable[str] | None = None) -> list[str]:
    """The tensors (of ``tensors``, default every one) that calibration does not clip, whatever
    the calibrator: the float inputs of GEMMs and MatMuls with a constant weight, and of
    convolutions with a constant weight over a map of one pixel (a squeeze-and-excitation
    block's, after global pooling); and channel-gated feature maps (a Mul's output where one
    operand holds one value per sample and channel of the other).

    Clipping calibrators (entropy, percentile, MSE) treat a tensor's values as draws from one
    distribution and sacrifice its tail. In a convolution's feature map the tail is a few
    pixels of many; in a GEMM's input each index of the last axis is a feature of its own, and
    the largest values belong to the same few features in every sample (the pooled channels
    that drive a CNN's classifier, a LayerNorm's outlier channels in a transformer): clipping
    them biases every sample alike. On the zoo's GoogLeNet, the entropy calibrator clipped the
    classifier's input from 202 to 145 and top-1 agreement with fp32 fell to 80%; min-max on
    that one tensor (and the SmoothQuant its per-channel maxima allow) gave 100%.

    The same holds for a channel-gated feature map, the output of a Mul by one value per sample
    and channel (squeeze-and-excitation, channel attention): its tail is the whole of the few
    channels the gate keeps. On the zoo's MobileNetV3-small, entropy clipped them to a third of
    their range and top-1 agreement fell to 83%; unclipped, 98%.
    """
    wanted = None if tensors is None else set(tensors)
    found: list[str] = []
    for node in graph.nodes:
        x, w = node.input(0), graph.constants.get(node.input(1))
        t = graph.types.get(x) if x else None
        if w is None or t is None or not t.dtype.is_float or (wanted is not None and x not in wanted):
            continue
        if node.op in _GEMM_OPS:
            found.append(x)
        elif node.op in _CONV_OPS and w.ndim >= 3 and _one_pixel(t.shape, w.shape[1] * _group(node)):
            found.append(x)
    for node in graph.nodes:  # channel-gated feature maps
        y = node.outputs[0] if node.op is OpType.MUL and len(node.inputs) == 2 and node.outputs else ""
        if not y or (wanted is not None and y not in wanted) or y not in graph.types:
            continue
        a, b = (graph.types.get(i) for i in node.inputs)
        if a is not None and b is not None and (_gates(b.shape, a.shape) or _gates(a.shape, b.shape)):
            found.append(y)
    return list(dict.fromkeys(found))


def _gates(gate: Sequence[object], x: Sequence[object]) -> bool:
    """Whether a ``gate``-shaped operand scales whole channels of an ``x``-shaped feature map: the
    same rank (3 or more), one value per sample and channel (one axis after the batch above 1, of
    ``x``'s size there) while ``x`` has more than one value per channel."""
    if len(gate) != len(x) or len(x) < 3 or gate[0] not in (1, x[0]):  # the batch may be symbolic
        return False
    g, v = [d for d in gate[1:] if isinstance(d, int)], [d for d in x[1:] if isinstance(d, int)]
    if len(g) != len(x) - 1 or len(v) != len(x) - 1:
        return False
    wide = [i for i in range(len(v)) if g[i] != 1]
    return len(wide) == 1 and g[wide[0]] == v[wide[0]] and math.prod(v) > v[wide[0]]


def _group(node: Node) -> int:
    conv = node.attrs.conv if isinstance(node.attrs, FusedConvAttrs) else node.attrs
    return int(getattr(conv, "group", 1))


def _one_pixel(shape: Sequence[object], channels: int) -> bool:
    """Whether a convolution input of ``shape`` (batch first, either layout) holds exactly
    ``channels`` values per sample: one pixel."""
    dims = list(shape)[1:]
    if not dims or not all(isinstance(d, int) for d in dims):
        return False
    return math.prod(d for d in dims if isinstance(d, int)) == channels


Observe = Callable[[str, torch.Tensor], None]


def observed_runner(engine: Engine) -> tuple[torch.device, Callable[[Mapping[str, torch.Tensor], Observe], None]]:
    """(device, ``run(feeds, observe)``) of an fp32 engine (``BuildError`` for any other): one run
    on device tensors that calls ``observe(name, tensor)`` for each feed and each layer output, as
    it is produced. A CPU engine runs its program with its ``observe`` hook; a CUDA engine runs its
    layers eagerly, on the current stream, without CUDA graphs (tensors computed on the host,
    shape arithmetic, are not seen)."""
    config = engine.plan.config
    if config.precision is not Precision.FP32:
        raise BuildError(f"calibration runs an fp32 engine, not a {config.precision} one; build it with "
                         f"BuildConfig(device={config.device.value!r}, precision='fp32')")
    if config.device is Device.CPU:
        expected: type = CPUProgram
    else:
        from ember.backends.cuda.exec.program import CudaProgram

        expected = CudaProgram
    program = engine.compile()
    if not isinstance(program, expected):
        raise BuildError(f"calibration on {config.device} runs the {config.device.value.upper()} backend's "
                         f"program, and this engine's is a {type(program).__name__}; build it without a "
                         f"custom backend")
    if isinstance(program, CPUProgram):
        cpu = program

        def run_cpu(feeds: Mapping[str, torch.Tensor], observe: Observe) -> None:
            cpu.run(dict(feeds), observe=observe)

        return cpu.device, run_cpu
    cuda: Any = program  # a CudaProgram (checked above)

    def run(feeds: Mapping[str, torch.Tensor], observe: Observe) -> None:
        for name, t in feeds.items():
            observe(name, t)

        def seen(step: Any, args: list[Any], outs: list[Any], env: dict[str, Any]) -> None:
            for name, t in zip(step.node.outputs, outs):
                if name and t is not None:
                    observe(name, t)

        with torch.cuda.device(cuda.device):
            cuda.forward(dict(feeds), [torch.cuda.current_stream(cuda.device)], observe=seen)

    return cuda.device, run


def observe_engine(engine: Engine, batches: Iterable[Mapping[str, Any]], tensors: Sequence[str],
                   progress: BuildProgress | None = None,
                   bins: int = DEFAULT_BINS, channels: Iterable[str] = ()) -> dict[str, TensorObserver]:
    """Runs the fp32 ``engine`` (CPU or CUDA: ``observed_runner``) once per batch (validated feed dicts: see
    ``calibration_batches``) and returns an observer per tensor of ``tensors``.

    ``progress``: a running ``BuildProgress`` to show a bar on (one step per batch).
    ``channels``: tensors (of ``tensors``) whose per-channel (last dim) max ``|x|`` is kept too.

    >>> observers = observe_engine(engine, batches, calibration_tensors(engine.plan.graph))  # doctest: +SKIP
    """
    device, run = observed_runner(engine)
    per_channel = set(channels)
    observers = {name: TensorObserver(name, bins, name in per_channel) for name in tensors}

    def observe(name: str, tensor: torch.Tensor) -> None:
        obs = observers.get(name)
        if obs is not None:
            obs.update(tensor)

    items = progress.track(batches, "calibrate") if progress is not None else batches
    with torch.inference_mode():
        for batch in items:
            feeds = {k: (v.detach().to(device).contiguous() if isinstance(v, torch.Tensor)
                         else numpy_to_torch(np.asarray(v), device)) for k, v in batch.items()}
            run(feeds, observe)
    return observers

"""Timing CUDA tactics for the builder, with an accuracy check.

``CudaTacticTimer`` is the ``TacticTimer`` (``ember.backends.base``) ``CUDABackend.make_timer``
gives the builder's tactic selection: for one layer and tactic it compiles the kernel (with the
plan's records and the build's configuration, as the program will), runs it on random inputs of
the layer's real shapes, checks the result against a reference (the layer's default tactic in
fp32, computed once per layer) with ``ember.backends.tensors.max_relative_error``, and returns
the median time in ms measured with CUDA events inside a CUDA graph (``graph_measure``). A
tactic that raises, or whose error exceeds the tolerance of its precision, returns ``inf`` and is
never chosen.

It lives at the top of the package, beside ``CUDABackend``, and not in ``exec``: it is the
build-time half of the backend (kernels timed one by one), while ``exec`` runs a whole
program in a context; it uses the arena and capture lock of ``exec``, never the reverse. The
measuring functions (``cuda_event_measure``, ``graph_measure``) are shared with the cuDNN
binding (``libs.cudnn_graph``, which times its execution plans) and the benchmarks.

A layer whose output is a planned in-place Concat input (``Records.concat``) is
timed as it will run: each tactic whose kernel can write into the slice (``WriteInto`` that
accepts a view of the slice, laid out as the program allocates the Concat's buffer) is timed
writing into that view; every other tactic is timed computing its own output *plus the copy into
the slice* that the Concat step will then do. So a kernel that saves the copy wins where the copy
costs more than the speed it gives away, which standalone timing could never see. How each
tactic was timed is kept in ``modes`` (``INTO_SLICE`` / ``PLUS_COPY``); the timing cache keys
such layers apart (``layer_signature`` includes the slice).

Every other layer is timed the same way against its place in the context's arena
(``ember.backends.cuda.exec.arena``; where ``BuildConfig.cuda_arena``, the default): into a
fresh tensor laid out as the tactic's own output (``INTO_ARENA``), or computed and copied there
(``PLUS_ARENA_COPY``), as the captured engine will run it. An output that is a view of an input
(Reshape, Slice) takes no place and is timed alone.
"""
from __future__ import annotations

import logging
import math
import statistics
import time
import warnings
from typing import Callable, Mapping, Optional, Sequence

import torch

from ember.backends.base import Backend, CompileContext, Kernel, write_into_of
from ember.backends.concat_exec import planned_slice
from ember.backends.cuda.device import forward_scope
from ember.backends.layout import format_in, to_format
from ember.backends.tensors import compute_dtype, max_relative_error, random_tensor
from ember.ir.graph import Graph, Node
from ember.plan.config import BuildConfig, Device, Precision
from ember.plan.records import Records

#: Each tactic the timer refuses for a layer, and why, at DEBUG level (``logging.getLogger(
#: "ember.backends.cuda.tuning").setLevel(logging.DEBUG)``): why a layer did not get a kernel.
log = logging.getLogger(__name__)

#: ``max|out - ref| / max|ref|`` (``max_relative_error``) allowed per precision (fp32 differs
#: from its reference only by summation order; tf32/half by their mantissas; fp8 by e4m3's 3-bit
#: mantissa on both operands of its GEMMs).
TOLERANCE = {Precision.FP32: 1e-4, Precision.TF32: 5e-3, Precision.FP16: 1e-2, Precision.BF16: 4e-2,
             Precision.FP8: 1e-1}

Measure = Callable[[Callable[[], object]], float]

#: How a tactic of a layer that feeds a planned in-place Concat slice was timed (``modes``).
INTO_SLICE = "into slice"
PLUS_COPY = "+ copy into slice"
#: ... and of any other layer, against its place in the arena.
INTO_ARENA = "into its arena place"
PLUS_ARENA_COPY = "+ copy into its arena place"


def cuda_event_measure(warmup: int = 3, reps: int = 10, rounds: int = 3) -> Measure:
    """Median over ``rounds`` of the mean time of ``reps`` back-to-back calls (CUDA events)."""

    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
        return statistics.median(times)

    return measure


def graph_measure(warmup: int = 2, reps: int = 10, rounds: int = 5) -> Measure:
    """GPU time per call as the engine will see it: ``reps`` calls captured in one CUDA graph,
    replayed ``rounds`` times (median). No launch overhead, which a CUDA-graph engine never pays.
    Falls back to ``cuda_event_measure`` for a kernel that cannot be captured."""
    fallback = cuda_event_measure(warmup, reps, 3)

    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        from ember.backends.cuda.exec.graphs import CAPTURE_LOCK, capture_graph

        graph: Optional[torch.cuda.CUDAGraph]
        with CAPTURE_LOCK:  # never while another thread captures an engine
            try:
                graph, _ = capture_graph(lambda: [fn() for _ in range(reps)])
            except Exception:  # noqa: BLE001 - not capturable: time it launch by launch
                torch.cuda.synchronize()
                graph = None
        if graph is None:
            return fallback(fn)
        times = []
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
        del graph
        return statistics.median(times)

    return measure


def _arena_place(outs: Sequence[Optional[torch.Tensor]], args) -> Optional[torch.Tensor]:
    """A fresh tensor laid out as the single output ``outs[0]``: its place in the arena. ``None``
    for a layer with several outputs, or whose output is a view of an input or overlaps itself
    (it takes no place of its own)."""
    if len(outs) != 1 or outs[0] is None:
        return None
    from ember.backends.cuda.exec.arena import storage_key
    from ember.backends.layout import dense

    out = outs[0]
    key = storage_key(out)
    if any(isinstance(a, torch.Tensor) and storage_key(a) == key for a in args):
        return None
    if not dense(out):
        return None
    return torch.empty_strided(out.shape, out.stride(), dtype=out.dtype, device=out.device)


class CudaTacticTimer:
    """``timer(node, graph, tactic, precision) -> ms`` for the builder's tactic selection.

    ``records`` and ``config`` go into every ``CompileContext`` it compiles with; ``arena``
    (default: ``config.cuda_arena``) times each output against its place in the arena.
    """

    def __init__(self, backend: Backend, constants: Mapping[str, torch.Tensor], device: torch.device,
                 records: Optional[Records] = None, config: Optional[BuildConfig] = None, *,
                 measure: Optional[Measure] = None, tolerance: Optional[Mapping[str, float]] = None,
                 seed: int = 0, arena: Optional[bool] = None) -> None:
        self.backend = backend
        self.records = records if records is not None else Records()
        self.config = config if config is not None else BuildConfig(device=Device.CUDA)
        self.arena = self.config.cuda_arena if arena is None else arena
        self.constants = constants
        self.device = device
        self.measure = measure or graph_measure()
        self.tolerance = dict(TOLERANCE, **(tolerance or {}))
        self.seed = seed
        self.rejected: dict[tuple[str, str], str] = {}
        self.modes: dict[tuple[str, str], str] = {}
        self._inputs: dict[str, list[Optional[torch.Tensor]]] = {}
        self._refs: dict[str, Optional[list[torch.Tensor]]] = {}
        self._views: dict[str, Optional[torch.Tensor]] = {}
        #: (graph, {tensor: the layer that writes it}) for ``_as_stored``
        self._producers: Optional[tuple[Graph, dict[str, Node]]] = None

    def __call__(self, node: Node, graph: Graph, tactic: str, precision: str) -> float:
        args = self._args(node, graph)
        if args is None:
            return math.inf
        # A candidate that cannot run here (e.g. an SDPA backend refusing a mask) makes PyTorch
        # warn before it raises; the refusal is recorded in ``rejected``, the warning is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self._time(node, graph, tactic, precision, args)

    def precompile(self, graph: Graph, jobs: Sequence[tuple[Node, Precision, Sequence[str]]]) -> None:
        """Compiles, in parallel and before any layer is timed, the Triton kernels that timing
        ``jobs`` (layer, precision, the tactics to time) will launch: each Triton tactic is built
        and run once inside ``compiling_ahead``, where its launches only start their compiles.
        The twenty-first session's cold INT8 ResNet-50 b256 build compiled 70 kernels one at a
        time, 46 of its 92 s; compiled ahead, 16 s. A kernel that does not compile here is left to its timing, which
        compiles it again and refuses the tactic with the reason."""
        from ember.backends.cuda.libs import compiling_ahead

        todo = [(node, precision, [t for t in tactics if t.startswith("triton")]) for node, precision, tactics in jobs]
        todo = [job for job in todo if job[2]]
        if not todo:
            return
        t0 = time.perf_counter()
        with compiling_ahead() as ahead:
            if not ahead:
                return
            for node, precision, tactics in todo:
                args = self._args(node, graph)
                if args is None:
                    continue
                for tactic in tactics:
                    with warnings.catch_warnings(), forward_scope(), torch.inference_mode():
                        warnings.simplefilter("ignore", UserWarning)
                        try:
                            self._compile(node, graph, tactic, precision)(args)
                        except Exception as e:  # noqa: BLE001 - its timing says why it cannot run
                            log.debug("layer %r: tactic %s not compiled ahead: %s", node.name, tactic, e)
        self._inputs.clear()  # timing draws its inputs afresh: a tactic's non-Triton part may have written to them
        log.info("compiled ahead the Triton kernels of %d tactics on %d layers in %.1f s",
                 sum(len(job[2]) for job in todo), len(todo), time.perf_counter() - t0)

    def _time(self, node: Node, graph: Graph, tactic: str, precision: str, args) -> float:
        with forward_scope():  # what the program derives once per forward (``per_forward``) is not the layer's time
            return self._time_in_forward(node, graph, tactic, precision, args)

    def _time_in_forward(self, node: Node, graph: Graph, tactic: str, precision: str, args) -> float:
        try:
            kernel = self._compile(node, graph, tactic, precision)
            view = self._slice_view(node, graph, precision)
            with torch.inference_mode():
                run, outs = self._timed_run(node, tactic, kernel, args, view)
            err = self._error(node, graph, args, outs)
            if err > self.tolerance.get(precision, 1e-2):
                return self._refuse(node, tactic, f"relative error {err:.2e} over {precision}'s tolerance")
            with torch.inference_mode():
                return float(self.measure(run))
        except Exception as e:  # noqa: BLE001 - a tactic that cannot run here is simply not chosen
            return self._refuse(node, tactic, f"{type(e).__name__}: {str(e)[:200]}")

    def _refuse(self, node: Node, tactic: str, reason: str) -> float:
        """Records (and logs at DEBUG) why ``tactic`` cannot be ``node``'s; its time: infinite."""
        self.rejected[(node.name, tactic)] = reason
        log.debug("layer %r: tactic %s refused: %s", node.name, tactic, reason)
        return math.inf

    def _timed_run(self, node: Node, tactic: str, kernel: Kernel, args, view: Optional[torch.Tensor]):
        """(what to time, the outputs of one run to check). Into a Concat slice (``view``): the
        kernel's ``write_into`` where it accepts the view (and writes), else kernel + copy, as the
        program (``ember.backends.concat_exec``) will run it."""
        into, plus = INTO_SLICE, PLUS_COPY
        if view is None:
            outs = kernel(args)
            view = _arena_place(outs, args) if self.arena else None
            if view is None:
                return (lambda: kernel(args)), outs
            into, plus = INTO_ARENA, PLUS_ARENA_COPY
        w = write_into_of(kernel)
        if w is not None and w.accepts(view) and w(args, view):
            self.modes[(node.name, tactic)] = into
            return (lambda: w(args, view)), [view]
        self.modes[(node.name, tactic)] = plus
        outs = kernel(args)
        view.copy_(outs[0])
        return (lambda: view.copy_(kernel(args)[0])), [view]

    def _slice_view(self, node: Node, graph: Graph, precision: str) -> Optional[torch.Tensor]:
        """A view of the Concat slice ``node`` writes in place (in a buffer shaped, laid out and
        typed as the program allocates it), or ``None`` when its output is no such slice."""
        if node.name not in self._views:
            from ember.backends.cuda.device import compute_dtype

            found = planned_slice(graph, self.records, node.outputs[0]) if len(node.outputs) == 1 else None
            if found is not None and found.buffer.dtype.is_floating_point:
                concat_precision = self.records.precision.of(found.buffer.concat, Precision(precision))
                found = found.with_dtype(compute_dtype(concat_precision))
            self._views[node.name] = None if found is None else found.view(self.device)
        return self._views[node.name]

    def _compile(self, node: Node, graph: Graph, tactic: str, precision: str) -> Kernel:
        ctx = CompileContext(graph, self.constants, self.device, tactic, Precision(precision),
                             self.records, self.config)
        return self.backend.compile_node(node, ctx)

    def _args(self, node: Node, graph: Graph) -> Optional[list[Optional[torch.Tensor]]]:
        if node.name not in self._inputs:
            # layers are tuned one after another: keep one layer's inputs and reference only
            self._inputs.clear()
            self._refs.clear()
            self._views.clear()
            gen = torch.Generator(device=self.device).manual_seed(self.seed)  # drawn where they are used
            args: list[Optional[torch.Tensor]] = []
            for name in node.inputs:
                if not name:
                    args.append(None)
                elif name in self.constants:
                    args.append(self.constants[name])
                else:
                    t = graph.types.get(name)
                    if t is None or not t.is_static:
                        self._inputs[node.name] = None  # type: ignore[assignment]
                        return None
                    args.append(self._as_stored(graph, name, random_tensor(t, self.device, gen)))
            self._inputs[node.name] = args
        return self._inputs[node.name]

    def _as_stored(self, graph: Graph, name: str, x: torch.Tensor) -> torch.Tensor:
        """Activation ``x`` (random, of ``name``'s planned type) as the program stores it: in its
        producer's compute dtype (a half, INT8 or FP8 layer's float output is half) and in the
        layout plan's memory format. Timed on float32 NCHW inputs, every candidate paid its own
        conversion of them, and the ones that convert less won: the seventeenth session's
        ResNet-50 FP8 build timed layer1's 1x1 convolutions at 2.36 ms on cudnn_graph (the engine:
        0.35) and 1.95 on the FP8 kernel, which reads float32 directly, and chose the FP8 kernel,
        which then ran 0.61 ms in the engine."""
        if not x.is_floating_point():
            return x
        if self._producers is None or self._producers[0] is not graph:
            self._producers = (graph, graph.producers())
        producer = self._producers[1].get(name)
        precision = self.records.precision.layers.get(producer.name) if producer is not None else None
        if precision is not None:
            x = x.to(compute_dtype(precision))
        stored = to_format(x, format_in(graph, self.records.layout, name))
        return x if stored is None else stored

    def _error(self, node: Node, graph: Graph, args, outs: Sequence[Optional[torch.Tensor]]) -> float:
        if node.name not in self._refs:
            try:
                default = self.backend.tactics(node, graph, self.records)[0]
                ref_kernel = self._compile(node, graph, default, Precision.FP32)
                with torch.inference_mode():
                    self._refs[node.name] = [None if t is None else t.detach().clone()
                                             for t in ref_kernel(args)]
            except Exception:  # noqa: BLE001 - no reference: accept any tactic that runs
                self._refs[node.name] = None
        refs = self._refs[node.name]
        if refs is None:
            return 0.0
        errs = [max_relative_error(o, r) for o, r in zip(outs, refs)
                if o is not None and r is not None and r.is_floating_point()]
        return max(errs, default=0.0)

"""The CPU backend's program: one kernel per layer, run in order, freeing tensors after their last use.

A ``Program`` is immutable once made (but for ``tune``, which the build calls before any context
exists) and holds no per-run state, so any number of execution
contexts may run it from any number of threads at once; each run keeps its tensors in its own
dictionary. Intermediate tensors are dropped right after the layer that reads them last (the
memory plan's liveness), so a run's peak memory follows the plan rather than the graph size.

Kernels allocate their outputs through PyTorch's allocator (with the C heap kept warm for the
plan's largest buffers, ``ember.backends.cpu.heap``); the arena offsets of the memory plan are
used by the CUDA backend, which writes into one arena.

Concat elimination (``Records.concat``, ``ember.backends.concat_exec``): a planned
Concat's buffer is allocated before its first writing producer runs; each producer whose kernel
can write into a given tensor (``WriteInto``) gets the view of its slice, the Concat step copies
only the remaining inputs into their slices. Names of written inputs are bound to their views
(which keep the buffer alive), so the usual frees stay right.

Each execution context runs the program through a ``CPUExecutor``, which holds no state but
the conversion of the user's arrays: the program itself is re-entrant.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import torch

from ember.backends.base import Backend, CompileContext, Executor, Kernel, Program
from ember.backends.concat_exec import finish, first_tensor, plan_concat_exec, produce_into
from ember.backends.cpu.chains import head_role
from ember.backends.cpu.half import finite_run, finite_safe, inputs_finite
from ember.backends.cpu.heap import reserve
from ember.backends.cpu.timing import SWITCH_MARGIN
from ember.backends.tensors import compute_dtype, numpy_to_torch, torch_to_numpy
from ember.backends.timing import fastest
from ember.errors import BuildError, EmberError
from ember.ir.types import format_shape
from ember.plan.plan import Plan

log = logging.getLogger("ember.build")

#: ``observe(name, tensor)``: sees a tensor of a run as it is produced (``CPUProgram.run``).
Observer = Callable[[str, torch.Tensor], None]


@dataclass(frozen=True)
class CPUStep:
    name: str
    kind: str
    kernel: Kernel
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    frees: tuple[str, ...]
    out_index: tuple[int, ...] = ()  # positions of the outputs that have a name
    special: bool = False  # takes part in concat elimination (``ember.backends.concat_exec``)
    head: Any = None  # the part it may take in a chain's head (``chains.HeadRole``), or None


class DirectChain(NamedTuple):
    """A program that is one chain (``CPUProgram._direct``): its input and output names, and the
    chain as one native call from a numpy array to one (``chains.array_runner``)."""
    input: str
    output: str
    run: Callable[[np.ndarray], Optional[np.ndarray]]


class CPUProgram(Program):
    """The executable form of a ``Plan`` on the CPU."""

    def __init__(self, plan: Plan, backend: Backend, device: torch.device) -> None:
        self.device = device
        graph = plan.graph
        self.constants: dict[str, torch.Tensor] = {
            k: numpy_to_torch(v, device) for k, v in graph.constants.items()}
        _reserve_memory(plan)
        frees = plan.memory.frees_after()
        keep = set(graph.outputs)
        steps = []
        for i, (node, layer) in enumerate(zip(graph.nodes, plan.layers)):
            if node.name != layer.name:
                raise BuildError(f"plan layer {i} is {layer.name!r} but graph node {i} is {node.name!r}")
            ctx = CompileContext(graph, self.constants, device, layer.tactic, layer.precision,
                                 plan.records, plan.config)
            try:
                kernel = backend.compile_node(node, ctx)
            except EmberError:
                raise
            except Exception as e:  # noqa: BLE001 - name the layer, keep the cause
                raise BuildError(f"layer {node.name!r} ({node.op}) could not be compiled for "
                                 f"{device.type} with tactic {layer.tactic or 'default'!r}: {e}") from e
            if len(node.outputs) > 1:
                kernel = _padded(kernel, len(node.outputs))
            steps.append(CPUStep(node.name, node.op.value, kernel, node.inputs, node.outputs,
                              tuple(n for n in frees.get(i, ()) if n not in keep),
                              tuple(k for k, o in enumerate(node.outputs) if o),
                              head=head_role(node, layer.precision, graph.types, self.constants,
                                             lambda node=node: finite_safe(node, graph))))
        half = {layer.name: compute_dtype(layer.precision) for layer in plan.layers if layer.precision.is_half}
        # half layers and persistent oneDNN convolutions fuse ReLU / Clip in runs with finite inputs
        self.half = bool(half) or any(layer.tactic == "onednn_persistent" for layer in plan.layers)
        self.concat = plan_concat_exec(graph, plan.records, [s.kernel for s in steps], static_layout=False,
                                       float_dtype=half)  # a half Concat's buffer is 16-bit
        special = self.concat.special_steps()
        steps = [replace(s, special=True) if i in special else s for i, s in enumerate(steps)]
        self.steps: tuple[CPUStep, ...] = tuple(steps)
        self.outputs: tuple[str, ...] = tuple(graph.outputs)
        self.inputs: tuple[str, ...] = tuple(graph.inputs)
        self._chained_constants: dict[str, torch.Tensor] = {}  # what the chained steps read (``_assemble``)
        self._ext: Any = None  # the extension, where there are chains (``_chain_steps``)
        #: the steps with chains of persistent convolutions as one step each (``chains``), for
        #: runs with finite inputs and no observer; ``None`` where there is no chain
        self.chained: Optional[tuple[CPUStep, ...]] = self._chain_steps(
            graph.outputs, plan.build_info.get("chain_layouts") or {})
        #: the extension's exact finite-input check, where chains loaded it (``finite_run``)
        self._finite_check: Optional[Callable[[torch.Tensor], bool]] = getattr(self._ext, "all_finite", None)
        #: (input, output, array runner) of a program that is one chain (``_direct``), else None
        self.direct: Optional[DirectChain] = self._direct()
        self._index = {s.name: i for i, s in enumerate(self.steps)}
        self._const_storage = {t.untyped_storage().data_ptr() for t in self.constants.values()
                               if t.numel()}

    def run(self, feeds: Mapping[str, torch.Tensor], stats: Optional[dict] = None,
            observe: Optional[Observer] = None) -> dict[str, torch.Tensor]:
        """Runs every layer on ``feeds`` (checked tensors on this device); returns the outputs.

        ``stats``, when given, receives this run's concat-elimination counts: ``written`` (inputs
        their producer wrote into the Concat's buffer), ``declined`` (producers that could not
        after all: computed, then copied into their slice), ``copied`` (other inputs copied into
        their slice by the Concat step) and ``concats`` (Concat steps that did no ``cat``).

        ``observe``, when given, is called as ``observe(name, tensor)`` for each feed, then for
        each named output of each layer right after the layer ran (before any tensor is freed);
        it must not modify the tensor. Calibration uses it (``ember.builder.calibration``)::

            program.run(feeds, observe=lambda name, t: print(name, tuple(t.shape)))
        """
        if self.half:  # fused epilogues in half layers where the inputs are finite (``.half``)
            with finite_run(feeds, self._finite_check):
                return self._run(feeds, stats, observe)
        return self._run(feeds, stats, observe)

    def _chain_steps(self, graph_outputs: Sequence[str], recorded: Mapping[str, Any]) -> Optional[tuple[CPUStep, ...]]:
        """The steps with each chain as one step, each float chain in the layout ``EMBER_CHAIN_LAYOUT``
        forces, else the one the build recorded for it (``recorded``: ``tune``'s), else channels-last."""
        from ember.backends.cpu import native
        from ember.backends.cpu.chains import (
            attach_head,
            blocked,
            dw_enabled,
            enabled,
            forced_layout,
            links,
            plan_chains,
            with_dw_pairs,
        )

        self._chains: list[Any] = []
        if not enabled():
            return None
        chains = plan_chains(self.steps, graph_outputs)
        ext = native.extension() if chains else None
        if ext is None or not hasattr(ext, "run_chain"):
            return None
        self._ext = ext
        chains = [attach_head(c, self.steps, ext) for c in chains]
        forced = forced_layout()
        for i in range(len(chains)):
            entry = recorded.get(self.steps[chains[i].start].name)
            want = forced or (entry.get("layout") if isinstance(entry, Mapping) else None) or "nhwc"
            if want == "blocked":  # the CPU's own block (``chains.blocked``), whichever CPU timed it
                chains[i] = blocked(chains[i], links(self.steps, chains[i])) or chains[i]
            if isinstance(entry, Mapping) and entry.get("dw") and dw_enabled():
                chains[i] = with_dw_pairs(chains[i], links(self.steps, chains[i])) or chains[i]
        self._chains = chains
        for k in range(len(chains)):
            self._release(k)
        return self._assemble()

    def _release(self, k: int) -> None:
        """Frees what only chain ``k``'s other layout held (its primitives must be gone by now:
        nothing but ``self._chains`` may hold a chain)."""
        from ember.backends.cpu.chains import links

        chain = self._chains[k]
        for j, link in enumerate(links(self.steps, chain)):
            if link.release is not None:
                link.release("dw" if j in chain.paired else chain.layout)
        if chain.head_layer is not None:
            chain.head_layer.release_unused()

    def _direct(self) -> Optional[DirectChain]:
        """(input, output, the chain's array runner) where the chained program is one chain from
        the graph's only input to its only output (MobileNets, EfficientNet), else ``None``: such a
        program runs without the generic step loop (``CPUExecutor.infer_direct``)."""
        from ember.backends.cpu.chains import array_runner

        steps = self.chained
        if steps is None or len(steps) != 1:
            return None
        (step,) = steps
        if step.kind != "Chain" or step.inputs != self.inputs or step.outputs != self.outputs or len(self.inputs) != 1:
            return None
        run = array_runner(self._ext, self._chains[0])
        return None if run is None else DirectChain(step.inputs[0], step.outputs[0], run)

    def _assemble(self) -> tuple[CPUStep, ...]:
        out: list[CPUStep] = []
        i = 0
        for chain in self._chains:
            out.extend(self.steps[i:chain.start])
            members = self.steps[chain.start:chain.end]
            internal = {s.outputs[0] for s in members[:-1]}
            frees = tuple(dict.fromkeys(n for s in members for n in s.frees if n not in internal))
            head = f" and a head of {chain.head_steps}" if chain.head_steps else ""
            pairs = f", {len(chain.paired) // 2} depthwise pairs fused" if chain.paired else ""
            out.append(CPUStep(f"{members[0].name} .. {members[-1].name} ({len(members) - chain.head_steps} layers "
                               f"chained{head}{pairs}{', blocked' if chain.layout == 'blocked' else ''})", "Chain",
                               self._chain_kernel(self._ext, chain, members), (chain.input,), (chain.output,), frees,
                               (0,)))
            i = chain.end
        out.extend(self.steps[i:])
        read = {n for s in out for n in s.inputs} | set(self.outputs)
        self._chained_constants = {k: v for k, v in self.constants.items() if k in read}
        return tuple(out)

    def tune(self, feeds: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """Times each float chain in both activation layouts (``chains.blocked``), each also with
        its 1x1 -> depthwise pairs fused where it has any (``chains.with_dw_pairs``), on the chain's
        input from a run on ``feeds()``, and keeps the fastest: oneDNN's blocked kernels win on
        depthwise networks and at batch 8, its channels-last ones on ResNet-50 at batch 1
        (docs/CPU_NATIVE.md, "Blocked chains"); fused pairs win where the expanded tensor is larger
        than the caches ("Depthwise pairs"). Returns ``{"chain_layouts": {first layer: {"layout",
        "dw", "ms": {variant: median ms}}}}`` for the plan's ``build_info``, which later programs
        follow; nothing where ``EMBER_CHAIN_LAYOUT`` forces a layout or no chain has a choice."""
        from ember.backends.cpu.chains import forced_layout, links, time_layouts

        if forced_layout() is not None:
            return {}
        # the channels-last chains (what a build without a record makes) that have a blocked form
        candidates = [k for k, c in enumerate(self._chains) if c.layout == "nhwc"
                      and all(link.relayout is not None for link in links(self.steps, c))]
        if not candidates:
            return {}
        wanted = {self._chains[k].input for k in candidates}
        seen: dict[str, torch.Tensor] = {}

        def keep(name: str, t: torch.Tensor) -> None:
            if name in wanted and name not in seen:
                seen[name] = t.clone()

        try:
            given = feeds()
        except EmberError:  # no shapes to time on (a dynamic input without a profile): keep the defaults
            return {}
        self.run({k: torch.as_tensor(v) for k, v in given.items()}, observe=keep)
        chosen: dict[str, Any] = {}
        variants: dict[str, Any] = {}
        for k in candidates:
            chain = self._chains[k]
            x = seen.get(chain.input)
            if x is None:
                continue
            variants = _variants(chain, links(self.steps, chain))
            if len(variants) < 2:
                continue
            ms: dict[str, float] = {}
            try:
                ms = time_layouts(variants, self._ext, x)
            except (RuntimeError, ValueError) as e:  # a variant that cannot run here: keep channels-last
                log.warning("CPU chain from %r: a blocked or paired form failed (%s); it stays channels-last",
                            self.steps[chain.start].name, str(e))  # not e: its frames hold the primitives
            if ms:
                # chosen on the times as recorded, so the record says why it holds what it holds; a
                # near tie goes to the first variant, the plainest (the CPU's switch margin)
                ms = {v: round(t, 4) for v, t in ms.items()}
                best = fastest(list(ms), ms, SWITCH_MARGIN)
                chosen[self.steps[chain.start].name] = {"layout": best.split("+")[0], "dw": best.endswith("+dw"),
                                                        "ms": ms}
                self._chains[k] = variants[best]
        # the losers' primitives go before the weight copies only they used: the old steps' chain
        # kernels held the channels-last chains, the loop's variables the last variants (outside
        # the except block: a caught exception's frames would hold them too)
        variants = {}
        chain = None
        self.chained = self._assemble()
        self.direct = self._direct()
        for k in candidates:
            self._release(k)
        return {"chain_layouts": chosen} if chosen else {}

    def _chain_kernel(self, ext: Any, chain: Any, members: Sequence[CPUStep]) -> Kernel:
        from ember.backends.cpu.chains import prepare

        constants = self.constants
        run_chain = prepare(ext, chain)

        def one_by_one(x: torch.Tensor) -> torch.Tensor:
            env: dict[str, Optional[torch.Tensor]] = dict(constants)
            env[chain.input] = x
            for s in members:
                env[s.outputs[0]] = s.kernel([env[n] if n else None for n in s.inputs])[0]
            return env[chain.output]  # type: ignore[return-value]

        warned = []

        def run(inputs: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
            x = inputs[0]
            assert x is not None
            try:
                return [run_chain(x)]
            except (RuntimeError, ValueError) as e:  # e.g. an input the primitives were not made for
                if not warned:  # right but slower: say so once, naming the chain
                    warned.append(True)
                    log.warning("CPU chain %s .. %s failed (%s); its layers run one by one", members[0].name,
                                members[-1].name, str(e).splitlines()[0] if str(e) else type(e).__name__)
                return [one_by_one(x)]  # the layers one by one: the result, or the layer at fault named

        return run

    def _run(self, feeds: Mapping[str, torch.Tensor], stats: Optional[dict],
             observe: Optional[Observer]) -> dict[str, torch.Tensor]:
        chained = self.chained is not None and observe is None and inputs_finite()
        # the chained steps read few constants (the chains hold their layers'): a copy of those only
        env: dict[str, Optional[torch.Tensor]] = dict(self._chained_constants if chained else self.constants)
        env.update(feeds)
        if observe is not None:
            for name, t in feeds.items():
                observe(name, t)
        steps = self.chained if chained else self.steps
        for step in steps:  # the hot loop: no helper calls unless observing, nothing kept past its use
            try:
                if step.special:
                    results = self._special(step, env, stats)
                else:
                    results = step.kernel([env[n] if n else None for n in step.inputs])
            except EmberError:
                raise
            except Exception as e:  # noqa: BLE001 - name the layer and what it was given
                raise _failure(step, env, e) from e
            for i in step.out_index:
                env[step.outputs[i]] = results[i]
            if observe is not None:
                _observe_outputs(observe, step, results)
            for name in step.frees:
                del env[name]
            results = None
        feed_storage = {t.untyped_storage().data_ptr() for t in feeds.values() if t.numel()}
        return {o: self._own(env[o], feed_storage) for o in self.outputs}  # type: ignore[arg-type]

    def timed_run(self, feeds: Mapping[str, torch.Tensor]) -> tuple[list[float], list[float], list[str]]:
        """One run of ``feeds`` as ``run`` runs it, timed per layer (``ember profile``): each
        layer's start and milliseconds, aligned with ``steps``, and a note per layer. A chain
        (finite inputs) runs in one C++ call that times each of its steps inside; a depthwise pair's
        time goes to its 1x1 layer ("dw pair" / "in dw pair", 0 ms), a head's to its pooling and
        its first dense layer ("chain head"; later dense layers "in chain head", 0 ms). The chain
        call's own glue (tens of microseconds) is in no layer. A run with NaN or infinity goes layer
        by layer, as ``run`` does."""
        from ember.backends.cpu.chains import run_chain

        n = len(self.steps)
        starts, durs, notes = [0.0] * n, [0.0] * n, [""] * n
        with torch.inference_mode(), finite_run(feeds, self._finite_check):
            chained = self.chained is not None and inputs_finite()
            env: dict[str, Optional[torch.Tensor]] = dict(self.constants)
            env.update(feeds)
            chains = {c.start: c for c in self._chains} if chained else {}
            base = time.perf_counter()
            i = 0
            while i < n:
                chain = chains.get(i)
                if chain is None:
                    step = self.steps[i]
                    t0 = time.perf_counter()
                    results = (self._special(step, env, None) if step.special
                               else step.kernel([env[k] if k else None for k in step.inputs]))
                    starts[i], durs[i] = (t0 - base) * 1e3, (time.perf_counter() - t0) * 1e3
                    for k in step.out_index:
                        env[step.outputs[k]] = results[k]
                    last = [step]
                    i += 1
                else:
                    times = torch.zeros(len(chain.convs) + 2, dtype=torch.float64)
                    t0 = (time.perf_counter() - base) * 1e3
                    try:
                        env[chain.output] = run_chain(self._ext, chain, env[chain.input], times)  # type: ignore[arg-type]
                    except (RuntimeError, ValueError):  # as the chain's step does: its layers one by one
                        del chains[i]
                        continue
                    self._spread(chain, times.tolist(), t0, starts, durs, notes)
                    last = list(self.steps[chain.start:chain.end])
                    i = chain.end
                for step in last:
                    for name in step.frees:
                        env.pop(name, None)
        return starts, durs, notes

    def _spread(self, chain: Any, ms: list[float], t0: float, starts: list[float], durs: list[float],
                notes: list[str]) -> None:
        """A chain's per-step milliseconds (``run_chain``'s ``times``) onto its layers."""
        paired = set(chain.paired)
        at, j = t0, 0
        for k in range(len(chain.convs)):
            layer = chain.start + j
            starts[layer], durs[layer] = at, ms[k]
            notes[layer] = "dw pair" if j in paired else "chained"
            if j in paired:
                starts[layer + 1], notes[layer + 1] = at, "in dw pair"
                j += 1
            at += ms[k]
            j += 1
        first_gemm = True
        for layer in range(chain.conv_end, chain.end):
            kind = self.steps[layer].head.kind
            # the head times its dense layers together: on the first, the others "in chain head"
            share = ms[-2] if kind == "pool" else ms[-1] if kind == "gemm" and first_gemm else 0.0
            note = "in chain head" if kind == "gemm" and not first_gemm else "chain head"
            first_gemm = first_gemm and kind != "gemm"
            starts[layer], durs[layer], notes[layer] = at, share, note
            at += share

    def _special(self, step: CPUStep, env: dict, stats: Optional[dict]) -> list:
        """A step taking part in concat elimination: allocates Concat buffers that start here,
        writes this producer's output into its slice, or finishes an eliminated Concat."""
        i = self._index[step.name]
        args = [env[n] if n else None for n in step.inputs]
        for buf in self.concat.allocs.get(i, ()):
            env[buf.output] = buf.allocate(self.device, first_tensor(args))
        target = self.concat.targets.get(i)
        if target is not None:
            return [produce_into(target, step.kernel, args, env, stats)]
        fin = self.concat.finishes.get(i)
        if fin is not None:
            return [finish(fin, env, stats)]
        return step.kernel(args)

    def _own(self, t: torch.Tensor, feed_storage: set[int]) -> torch.Tensor:
        """The output itself, or a copy when it shares memory with a constant or an input."""
        if not t.numel():
            return t
        ptr = t.untyped_storage().data_ptr()
        return t.clone() if ptr in self._const_storage or ptr in feed_storage else t

    def create_executor(self) -> CPUExecutor:
        return CPUExecutor(self)


class CPUExecutor(Executor):
    """An execution context's way into a ``CPUProgram``: numpy or torch inputs (validated by the
    context) to tensors, the run, and outputs of the kind given."""

    device_type = "cpu"

    def __init__(self, program: CPUProgram) -> None:
        self.program = program

    def infer_direct(self, inputs: Mapping[str, Any]) -> Optional[dict[str, Any]]:
        """A program that is one chain, run on its one finite float32 array in one native call
        from array to array: no inference mode, no step loop, no finite-run context, no tensor
        made in Python (the chain's native layers need none of them). After a run has swept the
        caches, those cost MobileNetV3-small b1 about 0.1 ms a run (twenty-first session).
        ``None`` for anything else: ``infer`` runs it (NaN or inf layer by layer). A chain that
        fails here loses its direct path for good, so a run does not try it twice: the generic
        path runs its layers one by one and says so, once."""
        direct = self.program.direct
        if direct is None:
            return None
        array = inputs.get(direct.input)  # validated: the program's one input, no other
        if type(array) is not np.ndarray:
            return None
        try:
            out = direct.run(array)  # None: not writeable, contiguous, native float32 or finite
        except (RuntimeError, ValueError):
            self.program.direct = None
            return None
        return None if out is None else {direct.output: out}

    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        as_torch = any(isinstance(v, torch.Tensor) for v in inputs.values())
        device = self.program.device
        feeds = {k: (v.detach().to(device).contiguous() if isinstance(v, torch.Tensor)
                     else numpy_to_torch(v, device)) for k, v in inputs.items()}
        outputs = self.program.run(feeds)
        return outputs if as_torch else {k: torch_to_numpy(v) for k, v in outputs.items()}


def _observe_outputs(observe: Observer, step: CPUStep, results: Sequence[Optional[torch.Tensor]]) -> None:
    for i in step.out_index:
        t = results[i]
        if t is not None:
            observe(step.outputs[i], t)


def _reserve_memory(plan: Plan) -> None:
    """Prepares the allocator for the plan's largest tensor and peak: such buffers are kept in
    the C heap instead of being re-mapped on every run (``ember.backends.cpu.heap``)."""
    largest = max((t.nbytes() for t in plan.graph.types.values() if t.is_static), default=0)
    reserve(largest, plan.memory.arena_bytes)


def _padded(kernel: Kernel, n: int) -> Kernel:
    """A multi-output kernel may leave unused optional outputs off its result list."""

    def run(args: Sequence[Optional[torch.Tensor]]) -> list[Optional[torch.Tensor]]:
        results = list(kernel(args))
        return results + [None] * (n - len(results))

    return run


def _failure(step: CPUStep, env: Mapping[str, Optional[torch.Tensor]], e: Exception) -> EmberError:
    args = [env.get(n) if n else None for n in step.inputs]
    return EmberError(f"layer {step.name!r} ({step.kind}) failed on inputs {_shapes(args)}: {e}")


def _shapes(args: Sequence[Optional[torch.Tensor]]) -> str:
    return ", ".join("-" if a is None else f"{str(a.dtype).removeprefix('torch.')}{format_shape(tuple(a.shape))}"
                     for a in args)


def _variants(chain: Any, members: Sequence[Any]) -> dict[str, Any]:
    """The forms of a channels-last chain the build times: "nhwc" (itself), "blocked"
    (``chains.blocked``) and each with its depthwise pairs fused, "+dw" (``chains.with_dw_pairs``),
    where they exist."""
    from ember.backends.cpu.chains import blocked, dw_enabled, with_dw_pairs

    variants = {"nhwc": chain}
    other = blocked(chain, members)
    if other is not None:
        variants["blocked"] = other
    if dw_enabled():
        for layout in list(variants):
            paired = with_dw_pairs(variants[layout], members)
            if paired is not None:
                variants[f"{layout}+dw"] = paired
    return variants

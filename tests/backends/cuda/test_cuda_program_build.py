"""Building a ``CudaProgram`` (CPU-only: host tensors and a spy backend stand in for the GPU's
kernels): every layer is compiled with the plan's records and configuration and its own tactic
and precision, shape arithmetic on the host with the same records, and ``BuildConfig``'s
``cuda_graphs`` / ``cuda_arena`` become the program's (and its executors') settings."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import ember
from ember.backends.base import CompileContext
from ember.backends.cuda import CUDABackend
from ember.backends.cuda.exec import executor as executor_module
from ember.backends.cuda.exec.program import CudaProgram, program_from_plan
from ember.backends.cuda.exec.schedule import LayerSpec
from ember.builder.build import build
from ember.plan.config import BuildConfig, Precision
from ember.plan.records import Records

from cuda_graphs import inception_graph, reshape_chain_graph

CPU = torch.device("cpu")


class SpyBackend(CUDABackend):
    """Records each ``CompileContext``; its kernels return ``None`` outputs (never run here)."""

    def __init__(self) -> None:
        self.contexts: dict[str, CompileContext] = {}

    def compile_node(self, node, ctx):
        self.contexts[node.name] = ctx
        return lambda inputs: [None] * len(node.outputs)


def _cuda_plan(graphs: bool, arena: bool):
    """A real plan (built for the CPU, with layout and concat records) made a CUDA plan, each
    layer with a tactic and precision of its own."""
    plan = build(inception_graph(), ember.BuildConfig(device="cpu")).plan
    config = dataclasses.replace(plan.config, device="cuda", cuda_graphs=graphs, cuda_arena=arena)
    layers = [dataclasses.replace(layer, tactic=f"tactic_{layer.name}",
                                  precision=Precision.FP16 if i % 2 else Precision.FP32)
              for i, layer in enumerate(plan.layers)]
    return dataclasses.replace(plan, config=config, layers=layers)


@pytest.mark.parametrize("graphs,arena", [(True, True), (True, False), (False, False)])
def test_program_from_plan_compiles_every_layer_with_the_plans_records_and_config(graphs, arena):
    plan = _cuda_plan(graphs, arena)
    assert plan.records.layout is not None and plan.records.concat  # decisions worth passing on
    backend = SpyBackend()
    program = backend.make_program(plan, CPU)  # CUDABackend.make_program -> program_from_plan
    assert isinstance(program, CudaProgram)
    assert set(backend.contexts) == {layer.name for layer in plan.layers}
    for layer in plan.layers:
        ctx = backend.contexts[layer.name]
        assert ctx.records is plan.records and ctx.config is plan.config, layer.name
        assert (ctx.tactic, ctx.precision, ctx.device) == (layer.tactic, layer.precision, CPU)
        assert ctx.graph is plan.graph
    assert (program.use_graphs, program.use_arena) == (graphs, arena)
    assert program.weight_bytes == 0  # nothing measured off the GPU
    # the program's stream plan is its steps' schedule
    assert program.stream_plan.stream == [s.stream for s in program.steps]
    assert program.stream_plan.event_steps == {s.index for s in program.steps if s.records_event}
    assert program.num_streams == max(s.stream for s in program.steps) + 1 > 1


def test_host_steps_are_compiled_with_the_records_and_config_too(monkeypatch):
    """Shape arithmetic runs on the host through the generic kernels; its contexts carry the same
    records and configuration (fp32, on the CPU, no tactic)."""
    import ember.backends.cuda.exec.program as program_module

    seen: list[CompileContext] = []
    real = program_module.host_kernel

    def spy_host_kernel(node, ctx):
        seen.append(ctx)
        return real(node, ctx)

    monkeypatch.setattr(program_module, "host_kernel", spy_host_kernel)
    g = reshape_chain_graph()
    records, config = Records(), BuildConfig(device="cuda", cuda_graphs=False)
    backend = SpyBackend()
    program = CudaProgram.build(g, {"relu": LayerSpec("fast", Precision.FP16)}, g.constants,
                                records=records, config=config, backend=backend, device=CPU)
    host = {s.node.name for s in program.steps if s.on_host}
    assert host and len(seen) == len(host)
    assert all(c.records is records and c.config is config for c in seen)
    assert all((c.device, c.tactic, c.precision) == (CPU, "", Precision.FP32) for c in seen)
    assert set(backend.contexts) == {s.node.name for s in program.steps if not s.on_host}
    assert (backend.contexts["relu"].tactic, backend.contexts["relu"].precision) == ("fast", Precision.FP16)
    assert backend.contexts["reshape"].tactic == ""  # a layer the plan names no tactic for
    assert all(c.records is records and c.config is config for c in backend.contexts.values())
    assert not program.use_graphs and program.use_arena


def test_build_without_records_or_config_gets_empty_records_and_cuda_defaults():
    g = reshape_chain_graph()
    backend = SpyBackend()
    program = CudaProgram.build(g, {}, g.constants, backend=backend, device=CPU)
    ctx = backend.contexts["relu"]
    assert ctx.records == Records() and ctx.config.device.value == "cuda"
    assert program.use_graphs and program.use_arena


def test_executors_get_the_programs_graph_setting(monkeypatch):
    """``create_executor`` hands ``cuda_graphs`` on; the executor reads ``use_arena`` itself."""
    made = []

    class FakeExecutor:
        def __init__(self, program, use_graphs=True):
            made.append((program, use_graphs))

    monkeypatch.setattr(executor_module, "CudaExecutor", FakeExecutor)
    for graphs in (True, False):
        program = program_from_plan(_cuda_plan(graphs, False), SpyBackend(), CPU)
        assert isinstance(program.create_executor(), FakeExecutor)
        assert made[-1] == (program, graphs)

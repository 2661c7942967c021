"""The optimizer's pipeline: an explicit list of passes, in phases.

    cleanup -> fold -> fuse -> layout -> precision

``BuildConfig.optimize=False`` skips the fuse and layout phases (cleanup, folding and precision
assignment always run). ``run_pipeline`` puts instruments around every pass and returns an
``Optimized``: the graph, the typed decision records the passes made (``ember.plan.records``) and
one ``PassRecord`` per pass (name, phase, seconds, node counts, rules fired).

>>> from ember.passes.pipeline import run_pipeline          # doctest: +SKIP
>>> out = run_pipeline(graph, BuildConfig(), dump_dir="passes/", verify=True)  # doctest: +SKIP
>>> out.stats[0].name, out.records.layout.preferred          # doctest: +SKIP
('eliminate_noops', <Layout.NHWC: 'nhwc'>)
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.errors import BuildError
from ember.ir.graph import Graph
from ember.passes import (  # noqa: F401  (each module registers its passes)
    cleanup,
    concat,
    cpu_half,
    fold,
    fold_weights,
    fp8,
    fuse_attention,
    fuse_conv,
    fuse_elementwise,
    fuse_gemm,
    fuse_horizontal,
    fuse_norm,
    int8,
    layout,
    precision,
    quantization,
)
from ember.passes.manager import (
    DumpInstrument,
    Instrument,
    Pass,
    PassContext,
    PassRecord,
    StatsInstrument,
    VerifyInstrument,
    get_pass,
    run_passes,
)
from ember.plan.config import BuildConfig
from ember.plan.records import QuantizationPlan, Records

#: The pipeline, phase by phase. Passes may appear more than once (cleanup after folding).
PIPELINE: tuple[str, ...] = (
    # cleanup
    "eliminate_noops", "cancel_transposes", "merge_reshapes", "canonicalize", "eliminate_noops",
    "cse", "dce",
    # fold ("record_qdq" reads the Q/DQ scales while the weights' DQs are still nodes)
    "record_qdq", "fold_constants", "fold_batchnorm", "fold_scales", "eliminate_noops", "cse", "dce",
    # fuse
    "fuse_gelu", "fuse_layernorm", "fuse_attention", "fuse_gemm", "fuse_conv", "fuse_skip_layernorm",
    "fuse_elementwise",
    "fuse_horizontal_conv", "fuse_horizontal_gemm", "dce",
    # layout
    "plan_concat_slices", "assign_layout",
    # precision
    "assign_precisions", "fold_fp8_qdq", "quantize_layers", "plan_half_dtypes", "prune_quant_records",
)


@dataclass(frozen=True)
class Optimized:
    """What the pipeline made: the optimized ``graph``, the decision ``records`` that go with it
    (they name its tensors and nodes) and one ``PassRecord`` per pass run, in order."""

    graph: Graph
    records: Records
    stats: tuple[PassRecord, ...] = ()

    def stats_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.stats]


def pipeline_passes(config: BuildConfig | None = None) -> list[Pass]:
    """The passes ``run_pipeline`` runs for ``config``, in order."""
    optimize = config.optimize if config is not None else True
    passes = [get_pass(name) for name in PIPELINE]
    return [p for p in passes if optimize or not p.phase.is_optimization]


def run_pipeline(graph: Graph, config: BuildConfig | None = None,
                 instruments: Sequence[Instrument] | None = None,
                 dump_dir: str | Path | None = None, verify: bool = False,
                 keep: Iterable[str] = (), calibrated: QuantizationPlan | None = None) -> Optimized:
    """Optimizes ``graph`` for ``config`` (default ``BuildConfig()``); returns the new graph
    with its records and per-pass statistics.

    ``instruments``: extra ``Instrument`` objects around every pass. ``dump_dir``: write the
    graph after each pass there. ``verify``: run the IR verifier after every pass (tests do).
    ``keep``: tensor names no pass may remove or rename (besides the graph outputs).
    ``calibrated``: calibrated scales of the tensors of this pipeline's optimized graph (an
    INT8 build's second run, ``ember.builder.build``): the Q/DQ records join them and
    ``quantize_layers`` reads them.
    """
    stats = StatsInstrument()
    insts: list[Instrument] = [stats]
    if verify:
        insts.append(VerifyInstrument())
    if dump_dir is not None:
        insts.append(DumpInstrument(dump_dir))
    insts.extend(instruments or ())
    missing = sorted(set(keep) - set(graph.types))
    if missing:
        raise BuildError(f"tensors {missing} asked to be kept are not in graph {graph.name!r}")
    config = config if config is not None else BuildConfig()
    ctx = PassContext(config=config, keep=frozenset(keep),
                      records=Records(quantization=calibrated or QuantizationPlan()))
    out = run_passes(graph, pipeline_passes(config), ctx, insts)
    return Optimized(out, ctx.records, tuple(stats.records))

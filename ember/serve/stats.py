"""Per-model statistics (the ``/stats`` endpoint, gRPC ``ModelStatistics``) and the Prometheus
metrics derived from them, named as Triton names them so existing dashboards keep working.

The statistics are updated on the server's event loop only, so they need no lock. Durations are
per request, as in Triton: each request of a batch is charged the batch's whole compute time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest


@dataclass
class Duration:
    """A count and a cumulative duration in nanoseconds (Triton's ``StatisticDuration``)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += int(ns)

    def to_json(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStats:
    """Executions of one batch size."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Statistics of one model version since it was loaded."""

    name: str
    version: str
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    pending: int = 0
    batches: dict[int, BatchStats] = field(default_factory=dict)

    def record_request(self, ok: bool, duration_ns: int) -> None:
        """A request answered (``ok``) or failed, ``duration_ns`` after the server received it."""
        (self.success if ok else self.fail).add(duration_ns)
        self.last_inference_ms = int(time.time() * 1000)

    def record_compute(self, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One request's share of a successful execution."""
        self.queue.add(queue_ns)
        self.compute_input.add(input_ns)
        self.compute_infer.add(infer_ns)
        self.compute_output.add(output_ns)

    def record_execution(self, batch_size: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One successful execution of the engine on ``batch_size`` inferences."""
        self.execution_count += 1
        self.inference_count += batch_size
        b = self.batches.setdefault(batch_size, BatchStats())
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)

    def to_json(self) -> dict:
        """One entry of ``model_stats`` as Triton's ``/v2/models/{m}/stats`` answers it."""
        zero = Duration().to_json()
        return {
            "name": self.name, "version": self.version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_json(), "fail": self.fail.to_json(),
                "queue": self.queue.to_json(), "compute_input": self.compute_input.to_json(),
                "compute_infer": self.compute_infer.to_json(),
                "compute_output": self.compute_output.to_json(),
                "cache_hit": zero, "cache_miss": zero,
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": b.compute_input.to_json(),
                 "compute_infer": b.compute_infer.to_json(), "compute_output": b.compute_output.to_json()}
                for size, b in sorted(self.batches.items())
            ],
        }


#: (name, help, type, value of a ModelStats) of every per-model metric, in Triton's names.
_FAMILIES = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     "counter", lambda s: s.success.count),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     "counter", lambda s: s.fail.count),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)",
     "counter", lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)",
     "counter", lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     "counter", lambda s: s.success.ns // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     "counter", lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     "counter", lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     "counter", lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     "counter", lambda s: s.compute_output.ns // 1000),
    ("nv_inference_pending_request_count",
     "Instantaneous number of pending requests awaiting execution per-model.",
     "gauge", lambda s: s.pending),
)


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render_metrics(stats: Iterable[ModelStats]) -> bytes:
    """Prometheus text exposition (format 0.0.4) of the models' metrics and the process metrics.

    prometheus-client renders the process, platform and GC collectors; the per-model families
    are written here because prometheus-client appends ``_total`` to every counter family, which
    would rename Triton's ``nv_inference_request_success`` and break dashboards built on Triton.
    """
    stats = list(stats)
    lines = []
    for name, help_text, kind, value in _FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for s in stats:
            lines.append(f'{name}{{model="{_label(s.name)}",version="{_label(s.version)}"}} {value(s)}')
    return ("\n".join(lines) + "\n").encode() + generate_latest(_process_registry())


_REGISTRY: list[CollectorRegistry] = []


def _process_registry() -> CollectorRegistry:
    if not _REGISTRY:
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

        reg = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        _REGISTRY.append(reg)
    return _REGISTRY[0]

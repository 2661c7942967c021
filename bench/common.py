"""Helpers shared by the benchmark scripts: machine facts, statistics, result files, tables,
and per-op time breakdowns of Ember and ONNX Runtime.

Scripts run as ``python bench/<suite>.py`` from the repository root; importing this module puts
the repository on ``sys.path`` so ``import ember`` works without an install.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cores() -> int:
    """The cores this process may run on (``taskset`` narrows them), not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_info(threads: int) -> dict[str, Any]:
    """Where and with what a result was measured: the header of every result file."""
    import numpy
    import onnx
    import onnxruntime
    import torch

    import ember

    return {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_name(), "cores": _usable_cores(), "threads": threads,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "versions": {"ember": ember.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnx": onnx.__version__, "numpy": numpy.__version__},
    }


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, mean, min, p90 and count of a list of latencies (ms)."""
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median": statistics.median(ordered), "mean": statistics.fmean(ordered), "min": ordered[0],
            "p90": p90, "n": len(ordered)}


def write_result(suite: str, data: Mapping[str, Any], out: str | Path | None = None) -> Path:
    """Writes ``data`` as JSON to ``out`` or ``bench/results/<suite>-<date>.json``; returns the path."""
    path = Path(out) if out else RESULTS / f"{suite}-{dt.date.today().isoformat()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    rows = [[str(c) for c in row] for row in rows]
    align = ["---:" if rows and all(_numeric(r[i]) for r in rows) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    return text.replace(".", "", 1).replace("x", "").replace("-", "", 1).replace("e", "", 1).strip().isdigit()


def ort_op_times(model_path: str | Path, feeds: Mapping[str, Any], threads: int, runs: int = 5) -> dict[str, float]:
    """ONNX Runtime's own profiler: milliseconds per run spent in each op type (``Conv``, ...)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first run is a warm-up, dropped below
            session.run(None, dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    node_runs = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = max(1, len(node_runs) // (runs + 1))
    for e in node_runs[per_run:]:  # skip the warm-up run's nodes
        per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return dict(per_op)


def ember_layer_profile(engine: Any, feeds: Mapping[str, Any], runs: int = 5,
                        top: int = 5) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Ember's per-layer profiler, one profiling pass: ms per run summed by layer kind, and the
    ``top`` most expensive layers (name with the source nodes it fused, kind, tactic, ms)."""
    from ember.tools.profile import profile_engine

    layers, _ = profile_engine(engine, dict(feeds), iterations=runs, warmup=1)
    per_kind: dict[str, float] = defaultdict(float)
    for layer in layers:
        per_kind[layer.op] += layer.median
    ranked = sorted(layers, key=lambda lay: lay.median, reverse=True)[:top]
    return dict(per_kind), [{"name": lay.display_name, "kind": lay.op, "tactic": lay.tactic,
                             "ms": round(lay.median, 3)} for lay in ranked]

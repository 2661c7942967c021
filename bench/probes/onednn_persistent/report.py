"""Markdown tables from a ``probe.py`` result file (every run in it, side by side).

    python bench/probes/onednn_persistent/report.py bench/results/cpu-onednn-persistent-probe-2026-12-06.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(row: dict[str, Any]) -> str:
    a, b = row["load_before"], row["load_after"]
    return f"{a['load1']}-{b['load1']} ({a['time']}-{b['time']})"


def whole_model(result: dict[str, Any]) -> str:
    rows = ["| run | threads | load avg (1 min) before-after | precision | batch | Ember ms | persistent ms | "
            "persistent, clip fused ms | ORT ms (same precision) | Ember x ORT | persistent x ORT | fused x ORT |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, run in enumerate(result["runs"], 1):
        for row in run.get("fp32", []):
            lat = row["latency_ms"]
            ort = lat["onnxruntime"]
            cells = [lat["ember"], lat["ember_persistent"], lat["ember_persistent_fused"], ort]
            rows.append(f"| {i} | {run['threads']} | {_load(row)} | fp32 | {row['batch']} | "
                        + " | ".join(f"{c['median']:.2f} (min {c['min']:.2f})" for c in cells) + " | "
                        + " | ".join(f"{ort['median'] / c['median']:.2f}x" for c in cells[:3]) + " |")
        for row in run.get("int8", []):
            lat = row["latency_ms"]
            ort = lat["ort_int8"]
            cells = [lat["ember_int8"], lat["ember_int8_persistent"]]
            rows.append(f"| {i} | {run['threads']} | {_load(row)} | int8 | {row['batch']} | "
                        + " | ".join(f"{c['median']:.2f} (min {c['min']:.2f})" for c in cells) + " | (INT8 fuses) | "
                        + f"{ort['median']:.2f} (min {ort['min']:.2f}) | "
                        + " | ".join(f"{ort['median'] / c['median']:.2f}x" for c in cells) + " | |")
    return "\n".join(rows)


def per_layer(result: dict[str, Any]) -> str:
    rows = ["| run | threads | precision | batch | layers | Ember us (sum of medians / of CPU minima) | "
            "persistent us (same) | clip fused us (same) | saved per conv, CPU min us | oneDNN exec min-sum us: "
            "PyTorch's 3.12 / extension's |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for i, run in enumerate(result["runs"], 1):
        for prec in ("fp32", "int8"):
            for row in run.get(prec, []):
                t = row["per_layer_summary"]["total"]
                n = len(row["per_layer"])
                fused = (f"{t['persistent_fused_wall_median_us']:.0f} / {t['persistent_fused_cpu_min_us']:.0f}"
                         if "persistent_fused_wall_median_us" in t else "(INT8 fuses)")
                ex = row["onednn_exec_total_us"]
                rows.append(
                    f"| {i} | {run['threads']} | {prec} | {row['batch']} | {n} | "
                    f"{t['ember_wall_median_us']:.0f} / {t['ember_cpu_min_us']:.0f} | "
                    f"{t['persistent_wall_median_us']:.0f} / {t['persistent_cpu_min_us']:.0f} | {fused} | "
                    f"{(t['ember_cpu_min_us'] - t['persistent_cpu_min_us']) / n:.1f} | "
                    f"{ex['torch_onednn_3.12']['min_sum']:.0f} / {ex['extension_onednn']['min_sum']:.0f} |")
    return "\n".join(rows)


def by_kind(result: dict[str, Any]) -> str:
    rows = ["| run | threads | precision | batch | layer kind | layers | Ember CPU-min us/layer | "
            "persistent CPU-min us/layer | saved us/layer |", "|---|---:|---|---:|---|---:|---:|---:|---:|"]
    for i, run in enumerate(result["runs"], 1):
        for prec in ("fp32", "int8"):
            for row in run.get(prec, []):
                for kind, k in row["per_layer_summary"]["by_kind"].items():
                    n = k["layers"]
                    rows.append(f"| {i} | {run['threads']} | {prec} | {row['batch']} | {kind} | {n} | "
                                f"{k['ember_cpu_min_us'] / n:.1f} | {k['persistent_cpu_min_us'] / n:.1f} | "
                                f"{k['saved_per_layer_cpu_min_us']:.1f} |")
            if prec == "fp32":
                for row in run.get("fp32", []):
                    r = row["resnet50_3x3_64"]
                    rows.append(f"| {i} | {run['threads']} | fp32 | {row['batch']} | ResNet-50 3x3 64->64 56x56 "
                                f"(+ReLU) | 1 | {r['ember']['cpu']['min']:.1f} | {r['persistent']['cpu']['min']:.1f} "
                                f"(fused {r['persistent_fused']['cpu']['min']:.1f}) | "
                                f"{r['ember']['cpu']['min'] - r['persistent']['cpu']['min']:.1f} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    result = json.loads(Path(argv[0]).read_text())
    print(whole_model(result), "", per_layer(result), "", by_kind(result), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

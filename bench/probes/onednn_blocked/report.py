"""Markdown tables of one or more ``probe.py`` result files.

    .venv/bin/python bench/probes/onednn_blocked/report.py bench/probes/onednn_blocked/results-*.json [--classes]

Table 1: whole-model and chain medians (ms) per row. Table 2 (``--classes``): convolution time
per layer class (stem, 1x1, 3x3, depthwise), summed over the layers, as ONNX Runtime's profiler
sees its own Conv nodes and as the chains' in-chain timings see oneDNN's, matched by weight and
output shape.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

HEAD = ("| row | oneDNN ISA | load | ORT | ORT Conv (profiler) | Ember | chain nhwc: total (conv + pool/reorder) "
        "| chain any | chain blocked | Ember × ORT | projected Ember-with-blocked × ORT | chain nhwc / blocked × ORT |")


def _cell(lat: dict[str, Any], ch: dict[str, Any], lay: str) -> str:
    kinds = ch[lay]["by_kind"]
    rest = sum(kinds.get(k, {}).get("chain_ms", 0.0) for k in ("reorder", "pool"))
    return f"{lat[lay]['median']:.2f} ({kinds['conv']['chain_ms']:.2f} + {rest:.2f})"


def whole(rows: list[dict[str, Any]], isa: str) -> list[str]:
    out = []
    for row in rows:
        for th, r in row["by_threads"].items():
            lat, x, ch = r["latency_ms"], r["x_ort"], r["chains"]
            cells = [f"{row['model']} b{row['batch']} {th}T", isa,
                     f"{r['load_before']['load1']}-{r['load_after']['load1']}",
                     f"{lat['onnxruntime']['median']:.2f}", f"{r['ort_conv_ms']:.2f}", f"{lat['ember']['median']:.2f}",
                     _cell(lat, ch, "nhwc"), _cell(lat, ch, "any"), _cell(lat, ch, "blocked"),
                     f"{x['ember']:.2f}", f"{x['ember_if_blocked']:.2f}",
                     f"{x['chain_nhwc']:.2f} / {x['chain_blocked']:.2f}"]
            out.append("| " + " | ".join(cells) + " |")
    return out


def layer_class(shape: str) -> str:
    w = [int(v) for v in shape.split(" ")[0][1:].split("x")]
    o, i, kh, kw = w
    if i == 1 and o > 1:
        return f"depthwise {kh}x{kw}"
    if i <= 4:
        return f"stem {kh}x{kw}"
    return f"{kh}x{kw}"


def classes(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        for th, r in row["by_threads"].items():
            if "conv_by_shape" not in r:
                continue
            acc: dict[str, dict[str, float]] = {}
            for g in r["conv_by_shape"]:
                c = acc.setdefault(layer_class(g["shape"]), {"n": 0, "ort": 0.0, "nhwc": 0.0, "blocked": 0.0})
                c["n"] += g.get("nhwc_n", 0)
                c["ort"] += g.get("ort_us", 0.0) / 1e3
                c["nhwc"] += g.get("nhwc_us", 0.0) / 1e3
                c["blocked"] += g.get("blocked_us", 0.0) / 1e3
            for name, c in sorted(acc.items()):
                out.append(f"| {row['model']} b{row['batch']} {th}T | {name} | {int(c['n'])} | {c['ort']:.2f} "
                           f"| {c['nhwc']:.2f} | {c['blocked']:.2f} |")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--classes", action="store_true", help="also the per-layer-class table")
    args = p.parse_args(argv)
    data = [json.loads(f.read_text()) for f in args.files]
    print(HEAD)
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in data:
        for line in whole(d["rows"], d["versions"]["ONEDNN_MAX_CPU_ISA"]):
            print(line)
    if args.classes:
        print("\n| row | layer class | convs | ORT Conv (ms) | oneDNN nhwc in chain | oneDNN blocked in chain |")
        print("|---|---|---:|---:|---:|---:|")
        for d in data:
            for line in classes(d["rows"]):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

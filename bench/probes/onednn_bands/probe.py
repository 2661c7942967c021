"""Probe: MobileNetV2's inverted-residual blocks as three whole-tensor primitives (Ember's chain
today) against thread-private row bands (``bands.cpp``), fp32, NHWC, taking turns in one process.

    .venv/bin/python bench/probes/onednn_bands/probe.py [--batches 1 8] [--iters 200]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "bands.cpp"
# (C_in, H, expanded, C_out, stride) of MobileNetV2's blocks with an expand layer, one per shape
BLOCKS = [(16, 112, 96, 24, 2), (24, 56, 144, 24, 1), (24, 56, 144, 32, 2), (32, 28, 192, 32, 1),
          (32, 28, 192, 64, 2), (64, 14, 384, 64, 1), (64, 14, 384, 96, 1), (96, 14, 576, 96, 1),
          (96, 14, 576, 160, 2), (160, 7, 960, 160, 1), (160, 7, 960, 320, 1)]
COUNT = {0: 1, 1: 1, 2: 1, 3: 2, 4: 1, 5: 3, 6: 1, 7: 2, 8: 1, 9: 2, 10: 1}


def load():
    from torch.utils import cpp_extension

    from ember.backends.cpu import native

    prefix = native.find_prefix()
    cfg, lib = native.check_prefix(prefix.resolve())
    key = hashlib.sha256(SOURCE.read_bytes() + str(lib.resolve()).encode()).hexdigest()[:12]
    build_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ember-onednn-bands-probe" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name=f"bands_probe_{key}", sources=[str(SOURCE)], build_directory=str(build_dir),
        extra_include_paths=[str(prefix / "include")], extra_cflags=["-O2", "-std=c++17", "-fopenmp"],
        extra_ldflags=[f"-L{lib.parent}", "-ldnnl", f"-Wl,-rpath,{lib.parent}", "-fopenmp"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--bands", type=int, nargs="+", default=[2, 4, 8])
    args = ap.parse_args()
    torch.set_num_threads(2)
    mod = load()
    g = torch.Generator().manual_seed(0)
    for batch in args.batches:
        tot = {}
        for i, (c, h, e, o, s) in enumerate(BLOCKS):
            x = torch.rand(batch, c, h, h, generator=g).contiguous(memory_format=torch.channels_last)
            we, be = torch.randn(e, c, 1, 1, generator=g) * 0.2, torch.randn(e, generator=g) * 0.1
            wd, bd = torch.randn(e, 1, 3, 3, generator=g) * 0.3, torch.randn(e, generator=g) * 0.1
            wp, bp = torch.randn(o, e, 1, 1, generator=g) * 0.1, torch.randn(o, generator=g) * 0.1
            oh = (h - 1) // s + 1
            line = f"b{batch} {c:>3}->{e:>3}->{o:>3} {h:>3}/{s}"
            for bands in args.bands:
                if bands > oh:
                    continue
                r = mod.bench(x, we, be, wd, bd, wp, bp, s, bands, args.iters)
                err = float((r["layers"] - r["bands"]).abs().max() / r["layers"].abs().max())
                tl, tb = statistics.median(r["t_layers"]), statistics.median(r["t_bands"])
                tot.setdefault(bands, [0.0, 0.0])
                tot[bands][0] += tl * COUNT[i]
                tot[bands][1] += min(tl, tb) * COUNT[i]
                line += (f" | {bands} bands {tl:7.1f} -> {tb:7.1f} us ({tl / tb:4.2f}x, "
                         f"buf {r['ebuf_kb']} KB, err {err:.0e})")
            print(line, flush=True)
        for bands, (a, b) in tot.items():
            print(f"b{batch} total over MobileNetV2's expand blocks: layers {a / 1e3:.3f} ms, "
                  f"best-of(layers, {bands} bands) {b / 1e3:.3f} ms")
    print(r["impl"], "||", r["impl_bands"])


if __name__ == "__main__":
    main()

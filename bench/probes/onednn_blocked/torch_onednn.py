"""Cross-check with PyTorch's own oneDNN (3.12, newer than the extension's 3.2): do its fp32
convolution kernels on blocked activations beat its kernels on NHWC?

    .venv/bin/python bench/probes/onednn_blocked/torch_onednn.py [--models resnet-50] [--batches 1,8]

The zoo's PyTorch model, BatchNorm folded into the convolutions (``torch.fx.experimental.optimization.fuse``),
runs two ways at 2 threads: channels-last tensors (aten convolutions on NHWC: oneDNN brgconv) and
``torch.utils.mkldnn.to_mkldnn`` modules on ``to_mkldnn()`` tensors (oneDNN's blocked layout,
what PyTorch once used for CPU inference). oneDNN's verbose log gives each convolution's own
execution time (``exec`` lines), so PyTorch's per-call overhead does not count; the minimum over
``--runs`` runs per convolution is summed. ReLU and the residual add are separate ops here in
both forms, so only the convolutions are compared. MobileNetV2 cannot run this way: PyTorch has
no ReLU6 (``aten::hardtanh``) for mkldnn tensors.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def captured_stdout() -> Iterator[list[str]]:
    """oneDNN's verbose lines (C stdout) while the block runs."""
    lines: list[str] = []
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            f.seek(0)
            lines.extend(f.read().splitlines())


def conv_execs(lines: list[str]) -> list[tuple[str, str, float]]:
    """(implementation, layouts, ms) of each convolution execution in a verbose log."""
    out = []
    for line in lines:
        parts = line.split(",")
        if "exec" not in parts or "convolution" not in parts:
            continue
        i = parts.index("convolution")
        try:
            out.append((parts[i + 1], parts[i + 3], float(parts[-1])))
        except (ValueError, IndexError):
            continue
    return out


def timed(fn: Any, runs: int) -> dict[str, Any]:
    per: list[list[float]] = []
    impls: list[str] = []
    layouts: list[str] = []
    for _ in range(runs):
        with captured_stdout() as lines, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            fn()
        got = conv_execs(lines)
        if not per:
            per, impls, layouts = [[] for _ in got], [g[0] for g in got], [g[1] for g in got]
        for k, g in enumerate(got[:len(per)]):
            per[k].append(g[2])
    counts: dict[str, int] = {}
    for impl in impls:
        counts[impl] = counts.get(impl, 0) + 1
    return {"convs": len(per), "min_sum_ms": round(sum(min(v) for v in per), 3),
            "median_sum_ms": round(sum(sorted(v)[len(v) // 2] for v in per), 3), "impls": counts,
            "first_layouts": layouts[:3]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet-50", help="models without ReLU6 (see above)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from torch.fx.experimental.optimization import fuse
    from torch.utils import mkldnn

    from ember import zoo

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        model = fuse(zoo.build_model(name).eval())
        blocked_model = mkldnn.to_mkldnn(copy.deepcopy(model))
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.from_numpy(next(iter(zoo.sample_inputs(name, batch).values())))
            x_cl = x.contiguous(memory_format=torch.channels_last)
            x_blk = x.to_mkldnn()
            with torch.inference_mode():
                want = model(x)
                got = blocked_model(x_blk)
                got = got.to_dense() if got.is_mkldnn else got
                err = float((got - want).abs().max() / want.abs().max())
                row = {"model": name, "batch": batch, "threads": args.threads,
                       "blocked_vs_plain_max_rel_error": err,
                       "nhwc": timed(functools.partial(cl_model, x_cl), args.runs),
                       "blocked": timed(functools.partial(blocked_model, x_blk), args.runs)}
            rows.append(row)
            print(f"{name} b{batch}: conv exec min-sum nhwc {row['nhwc']['min_sum_ms']:.2f} ms "
                  f"({row['nhwc']['impls']}), blocked {row['blocked']['min_sum_ms']:.2f} ms "
                  f"({row['blocked']['impls']}); error {err:.1e}", flush=True)
    result = {"torch": torch.__version__, "onednn": torch.backends.mkldnn.version() if hasattr(
        torch.backends.mkldnn, "version") else "bundled", "load": os.getloadavg(), "rows": rows}
    out = args.out or HERE / "results-torch-onednn.json"
    out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

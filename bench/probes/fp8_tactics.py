"""Why an FP8 build's GEMMs run (or do not run) the FP8 tactic: builds a zoo model with
``precision="fp8"`` on CUDA and prints, for each layer the precision plan made FP8, the tactic
chosen, every candidate's timing and the tactic timer's reason for each rejected one.

    python bench/probes/fp8_tactics.py --model bert-base --batch 128 [--out fp8.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_int8 import CALIBRATOR, _samples  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.backends.cuda import CUDABackend  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="bert-base")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    timers = []
    make_timer = CUDABackend.make_timer

    def keep_timer(self, *a, **k):  # type: ignore[no-untyped-def]
        timer = make_timer(self, *a, **k)
        timers.append(timer)
        return timer

    CUDABackend.make_timer = keep_timer  # type: ignore[method-assign]
    path = zoo.export_onnx(args.model, batch=args.batch)
    calib = _samples(args.model, args.batch, max(1, args.calib_samples // args.batch), 1000)
    engine = ember.build(path, ember.BuildConfig(device="cuda", precision="fp8",
                                                 calibrator=CALIBRATOR.get(args.model, "entropy")),
                         calibration_data=calib, progress=False)
    rejected = {k: v for t in timers for k, v in t.rejected.items()}
    rows = []
    for lay in engine.plan.layers:
        if str(lay.precision) != "fp8":
            continue
        rows.append({"layer": lay.name, "op": lay.kind, "tactic": lay.tactic,
                     "timings_ms": {k: (round(v, 4) if math.isfinite(v) else None) for k, v in lay.timings.items()},
                     "rejected": {t: why for (n, t), why in rejected.items() if n == lay.name}})
    for r in rows:
        print(f"{r['layer'][:40]:40s} {r['op']:10s} -> {r['tactic']:24s} {r['timings_ms']}")
        for t, why in r["rejected"].items():
            print(f"    rejected {t}: {why}")
    print(f"{sum(r['tactic'] == 'cublaslt_fp8' for r in rows)} of {len(rows)} FP8 layers run cublaslt_fp8")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

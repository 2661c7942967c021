"""BERT-base INT8 on the CPU: Ember with and without the ``onednn_persistent`` QGemm tactic, and ONNX
Runtime INT8 (``quantize_dynamic``), taking turns in one process (``bench/int8.py``'s pieces: its
data, calibration, ORT quantization and interleaved timing).

    .venv/bin/python bench/probes/onednn_persistent/qgemm_int8.py              # batches 1 and 8
    BATCHES=1 ITERS=40 .venv/bin/python bench/probes/onednn_persistent/qgemm_int8.py

Prints one JSON line per batch (medians, load averages at start / end of the timing, QGemm
tactics, mean cosine against ORT fp32) and writes everything to ``OUT`` (default
``/tmp/qgemm-int8.json``). Numbers: docs/CPU_NATIVE.md, "INT8 GEMMs".
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/

import int8 as B  # noqa: E402
import torch  # noqa: E402

from ember.backends.cpu import native  # noqa: E402


def qgemm_tactics(engine: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in engine.plan.layers:
        if layer.kind == "QGemm":
            counts[layer.tactic] = counts.get(layer.tactic, 0) + 1
    return counts


def main() -> None:
    args = B.parse(["--models", "bert-base", "--iterations", os.environ.get("ITERS", "20"), "--warmup", "3"])
    torch.set_num_threads(args.threads)
    name = "bert-base"
    rows = []
    for batch in [int(b) for b in os.environ.get("BATCHES", "1,8").split(",")]:
        path = B.zoo.export_onnx(name, batch=batch)
        feeds = B.zoo.sample_inputs(name, batch)
        calib = B.batches_of(name, args.calib_samples, batch, B.CALIB_SEED)
        evals = B.batches_of(name, args.eval_samples, batch, B.EVAL_SEED)
        engines = {}
        for on in (True, False):
            os.environ[native.SWITCH_ENV] = "1" if on else "0"
            engines[on], _ = B.ember_int8(path, calib, "minmax")
        os.environ[native.SWITCH_ENV] = "1"
        quantized, _ = B.ort_quantize(name, path, calib, args)
        runners = {"ember_int8_persistent": B.EmberRunner(engines[True]),
                   "ember_int8_default": B.EmberRunner(engines[False]),
                   "ort_int8": B.OrtRunner(quantized, threads=args.threads)}
        fp32 = B.OrtRunner(path, threads=args.threads)
        ref = B.outputs_over(fp32, evals)
        fp32.close()
        outs = {k: B.outputs_over(r, evals) for k, r in runners.items()}
        acc = {k: B.accuracy(o, ref, evals, True) for k, o in outs.items()}
        first = next(iter(ref))
        on_off = B.max_rel_error(outs["ember_int8_persistent"][first], outs["ember_int8_default"][first])
        load0 = os.getloadavg()[0]
        timed = B._timed_rounds(runners, feeds, args)
        load1 = os.getloadavg()[0]
        for r in runners.values():
            r.close()
        lat = {k: B.common.summarize(t) for k, t in timed.items()}
        row = {"batch": batch, "qgemm_tactics": {"with": qgemm_tactics(engines[True]),
                                                 "without": qgemm_tactics(engines[False])},
               "latency_ms": lat, "accuracy_vs_ort_fp32": acc, "with_vs_without_max_rel": on_off,
               "load": [load0, load1]}
        rows.append(row)
        print(json.dumps({"batch": batch, "median_ms": {k: round(v["median"], 2) for k, v in lat.items()},
                          "min_ms": {k: round(v["min"], 2) for k, v in lat.items()},
                          "load": [round(load0, 2), round(load1, 2)], "tactics": row["qgemm_tactics"],
                          "mean_cosine": {k: round(v["mean_cosine"], 5) for k, v in acc.items()},
                          "with_vs_without_max_rel": on_off}), flush=True)
    out = Path(os.environ.get("OUT", "/tmp/qgemm-int8.json"))
    out.write_text(json.dumps({"machine": B.common.machine_info(args.threads), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()

"""INT8 accuracy only (``python bench/int8.py --accuracy-only``): Ember's calibrators vs ONNX Runtime.

Issue 14 asks for INT8 "with accuracy at least ONNX Runtime's on the same calibration data". The
timed rows of ``bench/int8.py`` measure it on 32 samples, where one mismatch is 3%; this mode
measures nothing but accuracy, on many samples, for every calibrator of Ember in one run:

- per model, one fixed-shape export (``--batches``, default 8 here) and, per calibration size of
  ``--calib-samples`` (a list here), one set of calibration arrays (seed 1001) that Ember (each
  calibrator of ``--calibrators``) and ONNX Runtime (``quantize_static``: QDQ, per-channel int8
  weights, MinMax, QUInt8 activations, after ``quant_pre_process``) both calibrate on;
- ``--eval-samples`` other inputs (seed 2002, default 512), run batched through Ember fp32, ORT
  fp32, ORT INT8 and each Ember INT8 engine; each INT8 runtime is compared with its own fp32:

  * ``top1_agreement`` (and ``mismatches``, and a 95% Wilson interval: 512 samples resolve
    0.2% steps; 32 resolved 3%);
  * the relative logit error per sample, ``max|int8 - fp32| / max|fp32|``: its mean and max;
  * the mean KL divergence ``KL(softmax(fp32) || softmax(int8))`` and the mean (and min) cosine
    of the logits: smooth measures that do not hinge on near ties, which random-weight zoo
    models have many of;
  * against ORT, paired on the same samples: how many only Ember gets wrong, how many only ORT
    does, and the two-sided exact McNemar p-value of that split (is the difference real?); and
    the verdicts ``top1_ge_ort``, ``top1_significantly_below_ort`` (fewer agreements at p < 0.05)
    and ``kl_le_ort``.

The zoo models have random weights: this compares two quantizations of the same random network,
which is what "on the same calibration data" needs, not a task accuracy.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

import ember
from ember import zoo
from ember.tools.runners import EmberRunner, OrtRunner, Runner, max_rel_error

#: Defaults of the accuracy-only mode.
EVAL_SAMPLES = 512
CALIB_SAMPLES = (32,)
BATCH = 8
#: Logits are compared through float64 softmaxes; this keeps log(0) out of the KL divergence.
_TINY = 1e-300


# ---- metrics ---------------------------------------------------------------------------------

def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound at 0 and n successes, unlike p ± 2σ)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test: the probability, were A and B equally good, of a split of
    the ``only_a + only_b`` discordant samples at least as uneven as this one (binomial, p=1/2)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2 * tail)


def logits_of(out: dict[str, np.ndarray]) -> np.ndarray:
    """The first output as ``[samples, classes]`` float64."""
    first = next(iter(out.values()))
    return first.reshape(len(first), -1).astype(np.float64)


def compare(int8: np.ndarray, fp32: np.ndarray) -> dict[str, Any]:
    """INT8 logits ``[samples, classes]`` against the same runtime's fp32 logits."""
    agree = int8.argmax(-1) == fp32.argmax(-1)
    n, hits = len(fp32), int(agree.sum())
    lo, hi = wilson(hits, n)
    rel = np.abs(int8 - fp32).max(-1) / np.maximum(np.abs(fp32).max(-1), _TINY)
    p, q = softmax(fp32), softmax(int8)
    kl = np.sum(p * (np.log(np.maximum(p, _TINY)) - np.log(np.maximum(q, _TINY))), axis=-1)
    cos = (int8 * fp32).sum(-1) / np.maximum(np.linalg.norm(int8, axis=-1) * np.linalg.norm(fp32, axis=-1), _TINY)
    return {"samples": n, "top1_agreement": hits / n, "mismatches": n - hits, "agreement_95ci": [lo, hi],
            "mean_rel_error": float(rel.mean()), "max_rel_error": float(rel.max()),
            "max_rel_error_global": max_rel_error(int8, fp32),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}


def paired(ours_agree: np.ndarray, theirs_agree: np.ndarray) -> dict[str, Any]:
    """Ember vs ORT on the same samples: discordant counts and McNemar's p-value."""
    only_ours = int((~ours_agree & theirs_agree).sum())    # Ember wrong, ORT right
    only_theirs = int((ours_agree & ~theirs_agree).sum())  # ORT wrong, Ember right
    return {"only_ember_mismatches": only_ours, "only_ort_mismatches": only_theirs,
            "mcnemar_p": mcnemar_p(only_ours, only_theirs)}


# ---- one model -------------------------------------------------------------------------------

def _outputs(runner: Runner, feeds: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([logits_of(runner(feed)) for feed in feeds])


def _close(runner: Runner) -> None:
    try:
        runner.close()
    except Exception:  # noqa: BLE001 - closing is best effort
        pass


def accuracy_row(suite: ModuleType, name: str, batch: int, calib_samples: int, args: argparse.Namespace,
                 evals: Sequence[dict[str, np.ndarray]], refs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Every INT8 runtime of one model and calibration size against its fp32 (``refs``: the fp32
    logits of Ember and ORT on ``evals``, computed once per model). ``suite``: ``bench/int8.py``,
    whose data, ORT quantization and Ember build helpers the timed rows use too."""
    path = zoo.export_onnx(name, batch=batch)
    calib = suite.batches_of(name, calib_samples, batch, suite.CALIB_SEED)
    row: dict[str, Any] = {"model": name, "batch": batch, "calibration_samples": len(calib) * batch,
                           "calibration_hash": suite.data_hash(calib), "eval_samples": len(refs["ort_fp32"]),
                           "ember": {}, "ort": {}}
    t0 = time.perf_counter()
    try:
        qpath, meta = suite.ort_quantize(name, path, calib, args)
        runner: Runner = OrtRunner(qpath, threads=args.threads)
        try:
            ort_logits = _outputs(runner, evals)
        finally:
            _close(runner)
        row["ort"] = {**meta, **compare(ort_logits, refs["ort_fp32"]), "seconds": round(time.perf_counter() - t0, 1)}
        ort_agree = ort_logits.argmax(-1) == refs["ort_fp32"].argmax(-1)
    except Exception as exc:  # noqa: BLE001 - a runtime that fails is the row's finding
        row["ort"] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        ort_agree = None
    for calibrator in args.calibrators:
        t0 = time.perf_counter()
        try:
            engine, build_s = suite.ember_int8(path, calib, calibrator)
            runner = EmberRunner(engine)
            try:
                logits = _outputs(runner, evals)
            finally:
                _close(runner)
            entry = {"build_s": round(build_s, 1), "int8_layers": suite.int8_layers(engine),
                     **compare(logits, refs["ember_fp32"])}
            if ort_agree is not None:
                vs = paired(logits.argmax(-1) == refs["ember_fp32"].argmax(-1), ort_agree)
                worse = vs["only_ember_mismatches"] > vs["only_ort_mismatches"]
                entry["vs_ort"] = {**vs, "top1_ge_ort": entry["top1_agreement"] >= row["ort"]["top1_agreement"],
                                   "top1_significantly_below_ort": worse and vs["mcnemar_p"] < 0.05,
                                   "kl_le_ort": entry["mean_kl"] <= row["ort"]["mean_kl"]}
            entry["seconds"] = round(time.perf_counter() - t0, 1)
        except Exception as exc:  # noqa: BLE001
            entry = {"error": f"{type(exc).__name__}: {exc}"[:600]}
        row["ember"][calibrator] = entry
        _print_entry(name, row["calibration_samples"], f"Ember {calibrator}", entry)
    _print_entry(name, row["calibration_samples"], "ORT MinMax", row["ort"])
    return row


def fp32_refs(name: str, batch: int, evals: Sequence[dict[str, np.ndarray]], threads: int) -> dict[str, Any]:
    """The fp32 logits of Ember and ORT on the evaluation batches, and how far apart they are."""
    path = zoo.export_onnx(name, batch=batch)
    engine = ember.build(str(path), ember.BuildConfig(device=ember.Device.CPU), progress=False)
    runners: dict[str, Runner] = {"ember_fp32": EmberRunner(engine), "ort_fp32": OrtRunner(path, threads=threads)}
    try:
        refs = {label: _outputs(r, evals) for label, r in runners.items()}
    finally:
        for r in runners.values():
            _close(r)
    agree = float(np.mean(refs["ember_fp32"].argmax(-1) == refs["ort_fp32"].argmax(-1)))
    return {**refs, "fp32_top1_agreement": agree,
            "fp32_max_rel_error": max_rel_error(refs["ember_fp32"], refs["ort_fp32"])}


def run(suite: ModuleType, args: argparse.Namespace) -> dict[str, Any]:
    """Every model of ``args.models``: fp32 references once, then one row per calibration size."""
    rows: list[dict[str, Any]] = []
    fp32: dict[str, Any] = {}
    batch = args.batches[0]
    for name in args.models:
        if suite.is_transformer(name):
            print(f"{name}: skipped (the accuracy-only mode is for the CNNs; BERT is in the timed rows)")
            continue
        evals = suite.batches_of(name, args.eval_samples, batch, suite.EVAL_SEED)
        refs = fp32_refs(name, batch, evals, args.threads)
        fp32[name] = {"top1_agreement_ember_vs_ort": refs.pop("fp32_top1_agreement"),
                      "max_rel_error_ember_vs_ort": refs.pop("fp32_max_rel_error")}
        for samples in args.calib_samples:
            rows.append(accuracy_row(suite, name, batch, samples, args, evals, refs))
        del evals
    return {"fp32": fp32, "rows": rows, "summary": [summary(r, suite.DEFAULT_CALIBRATOR["cnn"]) for r in rows]}


def summary(row: dict[str, Any], default: str) -> dict[str, Any]:
    """One row's verdicts: Ember's calibrator with the lowest mean KL divergence, and whether each
    calibrator's accuracy is at least ORT's (mean KL no larger, top-1 not significantly lower)."""
    ok = {c: e for c, e in row["ember"].items() if "error" not in e}
    out: dict[str, Any] = {"model": row["model"], "calibration_samples": row["calibration_samples"],
                           "best_by_kl": min(ok, key=lambda c: ok[c]["mean_kl"]) if ok else None,
                           "default_cnn_calibrator": default}
    if "error" not in row["ort"]:
        out["at_least_ort"] = {c: bool(e["vs_ort"]["kl_le_ort"] and not e["vs_ort"]["top1_significantly_below_ort"])
                               for c, e in ok.items()}
    return out


# ---- output ----------------------------------------------------------------------------------

def _fmt(entry: dict[str, Any]) -> list[str]:
    if "error" in entry:
        return ["error"] * 6
    lo, hi = entry["agreement_95ci"]
    return [f"{100 * entry['top1_agreement']:.1f}% ({entry['mismatches']})", f"{100 * lo:.1f}-{100 * hi:.1f}%",
            f"{entry['mean_rel_error']:.3f}", f"{entry['max_rel_error']:.3f}", f"{entry['mean_kl']:.2e}",
            f"{entry['mean_cosine']:.5f}"]


def _print_entry(model: str, calib: int, label: str, entry: dict[str, Any]) -> None:
    if "error" in entry:
        print(f"{model:>13} calib {calib:<4} {label:<18} error: {entry['error']}", flush=True)
        return
    cells = _fmt(entry)
    vs = entry.get("vs_ort")
    paired_txt = (f"  only-Ember/only-ORT mismatches {vs['only_ember_mismatches']}/{vs['only_ort_mismatches']} "
                  f"p={vs['mcnemar_p']:.2f}") if vs else ""
    print(f"{model:>13} calib {calib:<4} {label:<18} top-1 {cells[0]:>12} [{cells[1]}]  rel err mean {cells[2]} "
          f"max {cells[3]}  KL {cells[4]}  cos {cells[5]}{paired_txt}", flush=True)


def markdown(result: dict[str, Any]) -> str:
    """One table per model: each Ember calibrator and ORT, per calibration size."""
    import common

    m, v = result["machine"], result["machine"]["versions"]
    parts = [f"{m['date']} · {m['cpu']} · Ember {v['ember']}, ONNX Runtime {v['onnxruntime']}, torch {v['torch']} · "
             f"batch {result['batch']} · accuracy on {result['eval_samples']} samples "
             f"(seed {result['seeds']['evaluation']}), "
             f"calibration on {', '.join(map(str, result['calib_samples']))} others (seed "
             f"{result['seeds']['calibration']}), the same arrays for Ember and ORT · each INT8 runtime against its "
             f"own fp32 · ORT: quantize_static QDQ, per-channel QInt8 weights, MinMax, {result['ort_activation']} "
             f"activations · top-1: agreement (mismatches), 95% Wilson interval · rel err: per sample "
             f"max|Δ|/max|fp32|, mean and max · KL: mean KL(softmax fp32 ‖ softmax INT8) · cos: mean cosine of "
             f"the logits · Ember-only / ORT-only: mismatches one has and the other not, McNemar p\n"]
    cols = ["runtime", "calib", "top-1 (mismatches)", "95% CI", "rel err mean", "rel err max", "KL mean", "cos mean",
            "Ember-only / ORT-only", "McNemar p"]
    for name in dict.fromkeys(r["model"] for r in result["rows"]):
        table = []
        for r in (r for r in result["rows"] if r["model"] == name):
            for calibrator, entry in r["ember"].items():
                vs = entry.get("vs_ort")
                table.append([f"Ember {calibrator}", r["calibration_samples"], *_fmt(entry),
                              f"{vs['only_ember_mismatches']} / {vs['only_ort_mismatches']}" if vs else "—",
                              f"{vs['mcnemar_p']:.2f}" if vs else "—"])
            table.append(["ORT MinMax", r["calibration_samples"], *_fmt(r["ort"]), "—", "—"])
        f = result["fp32"].get(name, {})
        parts.append(f"\n**{name}** (fp32 Ember vs ORT: top-1 agreement "
                     f"{100 * f.get('top1_agreement_ember_vs_ort', math.nan):.1f}%, max rel error "
                     f"{f.get('max_rel_error_ember_vs_ort', math.nan):.1e})\n\n")
        parts.append(common.markdown_table(cols, table) + "\n")
    return "".join(parts)


def main(suite: ModuleType, args: argparse.Namespace) -> Path:
    """Runs the accuracy-only mode of ``bench/int8.py`` (``suite``) and writes its result."""
    import common

    measured = run(suite, args)
    result = {"suite": "int8-accuracy", "machine": common.machine_info(args.threads), "batch": args.batches[0],
              "eval_samples": args.eval_samples, "calib_samples": args.calib_samples,
              "calibrators": args.calibrators, "ort_activation": args.ort_activation,
              "seeds": {"calibration": suite.CALIB_SEED, "evaluation": suite.EVAL_SEED}, **measured}
    path = common.write_result("cpu-int8-accuracy", result, args.out)
    print(f"\nwrote {path}\n")
    print(markdown(result))
    return path

"""Probe (issue 19, "persistent primitives"): does creating each convolution's oneDNN primitive
once, and only executing it per call, close Ember's CPU gap to ONNX Runtime?

    EMBER_ONEDNN_PREFIX=/tmp/onednn-gomp python bench/probes/onednn_persistent/probe.py \\
        [--batches 1,8] [--threads 2] [--blocks 40] [--iterations 40] [--no-int8] [--sycl-prefix /tmp/onednn-venv] \\
        [--out bench/results/cpu-onednn-persistent-probe-<date>.json] [--append]

Run it with an interpreter whose environment has torch, onnxruntime and ember, and a oneDNN
prefix (README.md here: how it was set up). What it measures, with 2 threads (``torch.set_num_threads``:
the extension's libdnnl shares PyTorch's libgomp, so the same call sets oneDNN's threads;
ONNX Runtime ``intra_op_num_threads``):

1. Threading: which runtime each libdnnl uses, whether it loads next to PyTorch, which OpenMP
   runtimes end up mapped (``--sycl-prefix``: the ``onednn`` 2026.x wheel, tried in a subprocess).
2. Per layer, every convolution of the zoo's MobileNetV2 (52) and a ResNet-50 3x3 64-channel
   convolution at 56x56, on the activations a real run gives them: (a) Ember's kernel as the
   built engine compiled it (``mkldnn._convolution_pointwise`` with a prepacked weight, ReLU /
   Clip applied after the call: ``conv_mkldnn.py``), (b) the persistent primitive behind the same
   kernel contract (output allocated per call, Clip after the call as Ember does), (c) the same
   with the clip / ReLU fused as a oneDNN post-op (valid for finite inputs: see ``layers.py``).
   The three take turns in blocks (``--blocks`` blocks of about 0.5 ms each); per-call medians,
   minima and p10-p90 of the block means, as wall time and as the calling thread's CPU time (at
   1 thread the load-independent cost of a call). Plus oneDNN's own execution time of each
   primitive (``ONEDNN_VERBOSE`` exec_time) for both libraries: the kernel, without the call.
3. The whole model: Ember's engine, the same engine with its convolutions swapped for persistent
   primitives (clip after the call; and clip fused), and ONNX Runtime on the same ONNX file,
   taking turns in four rounds (``--iterations`` runs each), outputs checked against ONNX Runtime.
4. INT8 (unless ``--no-int8``): Ember's INT8 engine (entropy calibration on 8 samples, as
   ``bench/int8.py``) against the same engine with its QConv layers swapped for persistent INT8
   primitives (u8 x s8, per-channel weight scales, output requantized by oneDNN), against
   ONNX Runtime INT8 (``bench/int8.py``'s ``quantize_static``) and fp32; top-1 agreement and
   logits difference of the swapped engine against Ember's INT8 engine.

``uptime``'s load average is recorded before and after every section: the machine is shared.
"""
# ruff: noqa: I001  (``build`` is this folder's module; ruff takes it for first- or third-party
# depending on whether the checkout has a build/ directory, and sorts the block differently)
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(BENCH))

import build  # noqa: E402
import layers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.backends.cpu.features import cpu_features  # noqa: E402
from ember.ir.optype import OpType  # noqa: E402
from ember.ops.attrs import Activation  # noqa: E402
from ember.tools.runners import EmberRunner, OrtRunner, max_rel_error, time_ms  # noqa: E402

import common  # type: ignore[import-not-found]  # noqa: E402  (puts the repository on sys.path)

CONVS = (OpType.CONV, OpType.FUSED_CONV, OpType.QCONV)


def load() -> dict[str, Any]:
    """The load average (what ``uptime`` shows) and the time: the machine is shared."""
    one, five, fifteen = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2),
            "time": time.strftime("%H:%M:%S")}


def spread(values: Sequence[float]) -> dict[str, float]:
    v = sorted(values)

    def q(p: float) -> float:
        return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]

    return {"median": round(statistics.median(v), 2), "min": round(v[0], 2), "p10": round(q(0.1), 2),
            "p90": round(q(0.9), 2), "n": len(v)}


# ---- 1. threading ------------------------------------------------------------------------------

SYCL_CHECK = r"""
import ctypes, json, os, sys
import torch  # PyTorch (and its libgomp) first, as in Ember's process
lib = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_LOCAL)
class V(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]
lib.dnnl_version.restype = ctypes.POINTER(V)
v = lib.dnnl_version().contents
eng = ctypes.c_void_p()
status = lib.dnnl_engine_create(ctypes.byref(eng), 1, 0)  # dnnl_cpu, index 0
x = torch.ones(1, 8, 8, 8)
ok = bool(torch.allclose(torch.nn.functional.conv2d(x, torch.ones(8, 8, 1, 1)), torch.full((1, 8, 8, 8), 8.0)))
maps = open("/proc/self/maps").read()
libs = sorted({l.split()[-1].rsplit("/", 1)[-1] for l in maps.splitlines() if "/" in l and any(
    k in l for k in ("gomp", "iomp", "libomp.", "tbb", "sycl", "dnnl"))})
print(json.dumps({"version": f"{v.major}.{v.minor}.{v.patch}", "cpu_runtime_code": v.cpu_runtime,
                  "engine_create_status": status, "engine_created": status == 0,
                  "torch_conv_after_load_ok": ok, "threading_libs_mapped": libs}))
"""


def sycl_wheel(prefix: Path) -> dict[str, Any]:
    """What the ``onednn`` 2026.x wheel is and whether its CPU engine can be made next to PyTorch."""
    info: dict[str, Any] = {"prefix": str(prefix)}
    try:
        info["headers"] = build.config_of(prefix)
    except build.OneDNNUnavailable as e:
        return {**info, "error": str(e)}
    lib = prefix / "lib" / "libdnnl.so"
    ldd = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    info["ldd_without_prefix_on_path"] = sorted(line.split()[0] for line in ldd.splitlines() if "=>" in line)
    env = {**os.environ, "LD_LIBRARY_PATH": str(prefix / "lib")}
    r = subprocess.run([sys.executable, "-c", SYCL_CHECK, str(lib)], capture_output=True, text=True, env=env,
                       timeout=300)
    if r.returncode == 0 and r.stdout.strip():
        info["in_process"] = json.loads(r.stdout.strip().splitlines()[-1])
    else:
        info["in_process"] = {"error": (r.stderr or r.stdout)[-800:]}
    return info


def threading_info(ext: Any, prefix: Path) -> dict[str, Any]:
    return {"libdnnl": ext.version(), "headers": build.config_of(prefix),
            "openmp_runtimes_mapped": build.loaded_openmp(), "torch_threads": torch.get_num_threads(),
            "torch_parallel_info": torch.__config__.parallel_info().splitlines()[:8]}


# ---- verbose capture ---------------------------------------------------------------------------

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
            try:
                import ctypes

                ctypes.CDLL(None).fflush(None)
            except OSError:
                pass
            os.dup2(saved, 1)
            os.close(saved)
            f.seek(0)
            lines.extend(f.read().splitlines())


def conv_exec_times(lines: list[str]) -> list[tuple[str, float]]:
    """(implementation, ms) of each convolution execution in oneDNN verbose output (v3.2 and v3.12 formats)."""
    out = []
    for line in lines:
        parts = line.split(",")
        if "exec" not in parts or "convolution" not in parts:
            continue
        i = parts.index("convolution")
        try:
            out.append((parts[i + 1], float(parts[-1])))
        except (ValueError, IndexError):
            continue
    return out


def verbose_times(program: Any, feeds: dict[str, torch.Tensor], torch_side: bool, ext: Any, runs: int = 7
                  ) -> list[dict[str, Any]]:
    """Per convolution (in execution order): the implementation and oneDNN's median exec time (us)."""
    per: list[list[float]] = []
    impls: list[str] = []
    for _ in range(runs):
        if torch_side:
            with captured_stdout() as lines, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                program.run(feeds)
        else:
            with captured_stdout() as lines:
                ext.set_verbose(1)
                try:
                    program.run(feeds)
                finally:
                    ext.set_verbose(0)
        got = conv_exec_times(lines)
        if not per:
            per = [[] for _ in got]
            impls = [g[0] for g in got]
        for k, (_, ms) in enumerate(got[:len(per)]):
            per[k].append(ms * 1e3)
    return [{"impl": impl, "exec_us": round(statistics.median(v), 2), "exec_min_us": round(min(v), 2)}
            for impl, v in zip(impls, per) if v]


def exec_totals(per_side: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Sums over the primitives of one run (us): of each primitive's median and of its minimum."""
    return {k: {"median_sum": round(sum(x["exec_us"] for x in v), 1),
                "min_sum": round(sum(x["exec_min_us"] for x in v), 1), "primitives": len(v)}
            for k, v in per_side.items()}


# ---- 2. per layer ------------------------------------------------------------------------------

def interleaved(fns: dict[str, Callable[[], Any]], blocks: int, block_ms: float = 0.5
                ) -> dict[str, dict[str, list[float]]]:
    """Per-call microseconds of each fn, one mean per block, as wall time and as the calling
    thread's CPU time (``time.thread_time_ns``: at 1 thread the whole call runs on it, so this
    does not count the time other processes hold the core); the fns take turns block by block."""
    for fn in fns.values():  # warm-up (and the first-call work)
        for _ in range(3):
            fn()
    first = next(iter(fns.values()))
    t0 = time.perf_counter_ns()
    for _ in range(3):
        first()
    per_call = max((time.perf_counter_ns() - t0) / 3e3, 1.0)
    reps = int(min(100, max(2, block_ms * 1e3 / per_call)))
    out: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(blocks):
        for label, fn in fns.items():
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            for _ in range(reps):
                fn()
            t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
            out[label]["wall"].append((t1 - t0) / 1e3 / reps)
            out[label]["cpu"].append((c1 - c0) / 1e3 / reps)
    return out


def kind_of(node: Any, graph: Any) -> str:
    a = node.attrs
    conv = getattr(a, "conv", a)
    w = graph.constants[node.input(1)]
    k = tuple(w.shape[2:])
    res = bool(getattr(a, "has_residual", False))
    if conv.group > 1 and conv.group == w.shape[0]:
        s = max(conv.strides or (1,))
        return f"depthwise {k[0]}x{k[1]} s{s}"
    if k == (1, 1):
        if res:
            return "1x1 project+residual"
        return "1x1 project" if getattr(a, "activation", Activation.NONE) is Activation.NONE else "1x1 expand"
    return f"{k[0]}x{k[1]} dense s{max(conv.strides or (1,))}"


def capture(program: Any, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    env: dict[str, torch.Tensor] = {}
    program.run(feeds, observe=lambda name, t: env.__setitem__(name, t.clone()))
    return env


def per_layer(engine: Any, swap: layers.Swap, ext: Any, feeds: dict[str, torch.Tensor], blocks: int,
              fused_swap: Optional[layers.Swap] = None) -> list[dict[str, Any]]:
    """Each convolution of ``engine`` timed three ways on the activations a real run gives it."""
    program: Any = engine.compile()
    new: Any = swap.engine.compile()
    fused: Any = fused_swap.engine.compile() if fused_swap is not None else None
    env = capture(program, feeds)
    graph = engine.plan.graph
    rows = []
    for i, node in enumerate(graph.nodes):
        if node.op not in CONVS or node.name not in swap.replaced:
            continue
        args = [env.get(n, program.constants.get(n)) if n else None for n in program.steps[i].inputs]
        ours, theirs = program.steps[i].kernel, new.steps[i].kernel
        fns: dict[str, Callable[[], Any]] = {"ember": functools.partial(ours, args),
                                             "persistent": functools.partial(theirs, args)}
        if fused is not None:
            fns["persistent_fused"] = functools.partial(fused.steps[i].kernel, args)
        t = interleaved(fns, blocks)
        w = graph.constants[node.input(1)]
        x = env[node.inputs[0]]
        rows.append({"layer": node.name, "kind": kind_of(node, graph), "input": list(x.shape),
                     "weight": list(w.shape), "impl": swap.replaced[node.name],
                     **{k: {m: spread(vv) for m, vv in v.items()} for k, v in t.items()}})
    return rows


def resnet_layer(ext: Any, batch: int, blocks: int) -> dict[str, Any]:
    """ResNet-50's 3x3 64-channel convolution at 56x56 (+ ReLU) as a one-layer Ember engine."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(batch, 64, 56, 56)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conv.onnx"
        torch.onnx.export(conv, (x,), str(path), input_names=["input"], output_names=["output"], dynamo=False)
        engine = ember.build(str(path), ember.BuildConfig(device=ember.Device.CPU), progress=False)
    swap = layers.swap_convolutions(engine, ext, nan_exact=True)
    fused = layers.swap_convolutions(engine, ext, nan_exact=False)
    rows = per_layer(engine, swap, ext, {"input": x}, blocks, fused)
    rows[0]["kind"] = "resnet-50 3x3 64->64 s1 (+relu)"
    rows[0]["onednn_exec"] = {"torch_onednn_3.12": verbose_times(engine.compile(), {"input": x}, True, ext),
                              "extension_onednn": verbose_times(fused.engine.compile(), {"input": x}, False, ext)}
    return rows[0]


def summarize_layers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per layer kind and in total: the sums of the per-layer medians (and minima) of each path."""
    paths = [p for p in ("ember", "persistent", "persistent_fused") if p in rows[0]]
    stats = [(p, m, q) for p in paths for m in ("wall", "cpu") for q in ("median", "min")]
    kinds: dict[str, dict[str, Any]] = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], {"layers": 0, **{f"{p}_{m}_{q}_us": 0.0 for p, m, q in stats}})
        k["layers"] += 1
        for p, m, q in stats:
            k[f"{p}_{m}_{q}_us"] += r[p][m][q]
    for k in kinds.values():
        for key in list(k):
            if key.endswith("_us"):
                k[key] = round(k[key], 1)
        k["saved_per_layer_wall_median_us"] = round(
            (k["ember_wall_median_us"] - k["persistent_wall_median_us"]) / k["layers"], 1)
        k["saved_per_layer_cpu_min_us"] = round((k["ember_cpu_min_us"] - k["persistent_cpu_min_us"]) / k["layers"], 1)
    fields = [f"{p}_{m}_{q}_us" for p, m, q in stats]
    total = {f: round(sum(k[f] for k in kinds.values()), 1) for f in fields}
    return {"by_kind": kinds, "total": total}


# ---- 3./4. whole model -------------------------------------------------------------------------

def rounds(runners: dict[str, Any], feeds: dict[str, np.ndarray], iterations: int, warmup: int = 3
           ) -> dict[str, dict[str, float]]:
    """As ``bench/cpu.py``: each runtime's iterations in four rounds that take turns."""
    n = 4
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(n):
        for label, runner in runners.items():
            times[label] += time_ms(runner, feeds, warmup if r == 0 else 1, iterations // n, 60.0)
    return {k: {kk: round(vv, 3) for kk, vv in common.summarize(v).items()} for k, v in times.items()}


def outputs(runner: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    out = runner.run(runner.prepare(feeds))
    v = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return np.asarray(v.detach().numpy() if isinstance(v, torch.Tensor) else v)


def fp32_model(ext: Any, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    path = zoo.export_onnx("mobilenet-v2", batch=batch, progress=False)
    feeds = zoo.sample_inputs("mobilenet-v2", batch)
    tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
    engine = ember.build(str(path), ember.BuildConfig(device=ember.Device.CPU), progress=False)
    exact = layers.swap_convolutions(engine, ext, nan_exact=True)
    fused = layers.swap_convolutions(engine, ext, nan_exact=False)
    row: dict[str, Any] = {"batch": batch, "layers": len(engine.plan.layers),
                           "convs_replaced": len(exact.replaced), "convs_kept": exact.kept, "load_before": load()}
    row["per_layer"] = per_layer(engine, exact, ext, tfeeds, args.blocks, fused)
    row["per_layer_summary"] = summarize_layers(row["per_layer"])
    row["onednn_exec"] = {"torch_onednn_3.12": verbose_times(engine.compile(), tfeeds, True, ext),
                          "extension_onednn": verbose_times(fused.engine.compile(), tfeeds, False, ext)}
    row["onednn_exec_total_us"] = exec_totals(row["onednn_exec"])
    row["resnet50_3x3_64"] = resnet_layer(ext, batch, args.blocks)
    row["load_after_layers"] = load()
    runners = {"ember": EmberRunner(engine), "ember_persistent": EmberRunner(exact.engine),
               "ember_persistent_fused": EmberRunner(fused.engine),
               "onnxruntime": OrtRunner(path, threads=args.threads)}
    try:
        ref = outputs(runners["onnxruntime"], feeds)
        row["max_rel_error_vs_ort"] = {k: float(max_rel_error(outputs(r, feeds), ref)) for k, r in runners.items()
                                       if k != "onnxruntime"}
        row["latency_ms"] = rounds(runners, feeds, args.iterations)
    finally:
        for r in runners.values():
            r.close()
    lat = row["latency_ms"]
    row["x_ort"] = {k: round(lat["onnxruntime"]["median"] / v["median"], 3) for k, v in lat.items()}
    row["load_after"] = load()
    return row


def int8_model(ext: Any, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    import int8 as int8_bench  # type: ignore[import-not-found]  # bench/int8.py

    name = "mobilenet-v2"
    path = zoo.export_onnx(name, batch=batch, progress=False)
    feeds = zoo.sample_inputs(name, batch)
    calib = int8_bench.batches_of(name, 8, batch, int8_bench.CALIB_SEED)
    evals = int8_bench.batches_of(name, 32, batch, int8_bench.EVAL_SEED)
    row: dict[str, Any] = {"batch": batch, "load_before": load(), "calibrator": "entropy"}
    engine, build_s = int8_bench.ember_int8(path, calib, "entropy")
    row["ember_int8_build_s"] = round(build_s, 1)
    swap = layers.swap_convolutions(engine, ext)
    row["qconvs_replaced"], row["qconvs_kept"] = len(swap.replaced), swap.kept
    row["impls"] = sorted(set(swap.replaced.values()))
    tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
    row["per_layer"] = per_layer(engine, swap, ext, tfeeds, args.blocks)
    row["per_layer_summary"] = summarize_layers(row["per_layer"])
    row["onednn_exec"] = {"torch_onednn_3.12": verbose_times(engine.compile(), tfeeds, True, ext),
                          "extension_onednn": verbose_times(swap.engine.compile(), tfeeds, False, ext)}
    row["onednn_exec_total_us"] = exec_totals(row["onednn_exec"])
    ort_args = argparse.Namespace(cache_dir=str(common.ROOT / ".cache" / "bench-int8"), no_cache=False,
                                  ort_activation="QUInt8")
    qpath, qmeta = int8_bench.ort_quantize(name, path, calib, ort_args)
    row["ort_int8"] = qmeta
    runners = {"ember_int8": EmberRunner(engine), "ember_int8_persistent": EmberRunner(swap.engine),
               "ort_int8": OrtRunner(qpath, threads=args.threads), "ort_fp32": OrtRunner(path, threads=args.threads)}
    try:
        a = np.concatenate([outputs(runners["ember_int8"], f) for f in evals])
        b = np.concatenate([outputs(runners["ember_int8_persistent"], f) for f in evals])
        row["persistent_vs_ember_int8"] = {"top1_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
                                           "max_abs_logit_diff": float(np.abs(a - b).max()),
                                           "max_abs_logit": float(np.abs(a).max()), "samples": int(a.shape[0])}
        row["latency_ms"] = rounds(runners, feeds, args.iterations)
    finally:
        for r in runners.values():
            r.close()
    lat = row["latency_ms"]
    row["x_ort_int8"] = {k: round(lat["ort_int8"]["median"] / v["median"], 3) for k, v in lat.items()}
    row["load_after"] = load()
    return row


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", type=Path, default=None, help="oneDNN prefix (default $EMBER_ONEDNN_PREFIX)")
    p.add_argument("--sycl-prefix", type=Path, default=None, help="prefix of the onednn 2026.x wheel, to report on")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=40, help="timed blocks (~0.5 ms each) per layer and path")
    p.add_argument("--iterations", type=int, default=40, help="whole-model runs per runtime (4 rounds)")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--append", action="store_true", help="add this run to the runs of an existing --out file")
    a = p.parse_args(argv)
    a.batches = [int(b) for b in a.batches.split(",")]
    return a


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    prefix = args.prefix or build.default_prefix()
    if prefix is None:
        print("no oneDNN prefix: pass --prefix or set EMBER_ONEDNN_PREFIX", file=sys.stderr)
        return 2
    ext = build.load(prefix)
    feats = cpu_features()
    out = Path(args.out) if args.out else common.RESULTS / f"cpu-onednn-persistent-probe-{dt.date.today()}.json"
    result: dict[str, Any] = {"suite": "cpu-onednn-persistent-probe", **common.machine_info(args.threads),
                              "cpu_flags": sorted(f for f in feats.flags
                                                  if f.startswith(("avx512", "amx", "avx_vnni"))), "runs": []}
    if args.append and out.exists():
        result = json.loads(out.read_text())
    run: dict[str, Any] = {"started": dt.datetime.now().isoformat(timespec="seconds"), "threads": args.threads,
                           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
                           "blocks": args.blocks, "iterations": args.iterations,
                           "threading": threading_info(ext, Path(prefix)), "load_start": load()}
    if args.sycl_prefix is not None:
        result["onednn_2026_wheel"] = sycl_wheel(args.sycl_prefix)
    run["fp32"] = []
    for b in args.batches:
        run["fp32"].append(fp32_model(ext, b, args))
        _print_fp32(run["fp32"][-1])
    if not args.no_int8:
        run["int8"] = []
        for b in args.batches:
            run["int8"].append(int8_model(ext, b, args))
            _print_int8(run["int8"][-1])
    run["load_end"] = load()
    result["runs"].append(run)
    path = common.write_result("cpu-onednn-persistent-probe", result, out)
    print(f"wrote {path} ({len(result['runs'])} runs)")
    return 0


def _layer_line(s: dict[str, Any]) -> str:
    t = s["total"]
    return (f"per-layer sums, us (wall median / wall min / cpu min): ember {t['ember_wall_median_us']} / "
            f"{t['ember_wall_min_us']} / {t['ember_cpu_min_us']}; persistent {t['persistent_wall_median_us']} / "
            f"{t['persistent_wall_min_us']} / {t['persistent_cpu_min_us']}")


def _print_fp32(row: dict[str, Any]) -> None:
    s = row["per_layer_summary"]
    print(f"\nfp32 batch {row['batch']}: {row['convs_replaced']} convs; {_layer_line(s)}")
    for k, v in s["by_kind"].items():
        print(f"  {k:24s} layers {v['layers']}, saved per layer: wall median {v['saved_per_layer_wall_median_us']} us, "
              f"cpu min {v['saved_per_layer_cpu_min_us']} us")
    r = row["resnet50_3x3_64"]
    print("  resnet-50 3x3 (wall median / cpu min us): " + ", ".join(
        f"{p} {r[p]['wall']['median']} / {r[p]['cpu']['min']}" for p in ("ember", "persistent", "persistent_fused")))
    print(f"  oneDNN exec totals (us): {row['onednn_exec_total_us']}")
    print(f"  whole model ms (median): { {k: v['median'] for k, v in row['latency_ms'].items()} }")
    print(f"  whole model ms (min): { {k: v['min'] for k, v in row['latency_ms'].items()} }")
    print(f"  x ORT: {row['x_ort']}")
    print(f"  max rel err vs ORT: {row['max_rel_error_vs_ort']}")
    print(f"  load {row['load_before']} -> {row['load_after']}")


def _print_int8(row: dict[str, Any]) -> None:
    s = row["per_layer_summary"]
    print(f"\nINT8 batch {row['batch']}: {row['qconvs_replaced']} qconvs ({row['impls']})")
    print(f"  {_layer_line(s)}")
    for k, v in s["by_kind"].items():
        print(f"  {k:24s} layers {v['layers']}, saved per layer: wall median {v['saved_per_layer_wall_median_us']} us, "
              f"cpu min {v['saved_per_layer_cpu_min_us']} us")
    print(f"  oneDNN exec totals (us): {row['onednn_exec_total_us']}")
    print(f"  whole model ms (median): { {k: v['median'] for k, v in row['latency_ms'].items()} }")
    print(f"  whole model ms (min): { {k: v['min'] for k, v in row['latency_ms'].items()} }")
    print(f"  x ORT INT8: {row['x_ort_int8']}")
    print(f"  persistent vs Ember INT8: {row['persistent_vs_ember_int8']}")
    print(f"  load {row['load_before']} -> {row['load_after']}")


if __name__ == "__main__":
    raise SystemExit(main())

"""Serving benchmark: N concurrent clients against ``ember serve`` on loopback, like perf_analyzer.

For each model (MiniLM, ResNet-50) the server gets two entries: ``<model>-b1`` (no batching:
every request runs alone on a batch-1 engine) and ``<model>-dyn`` (dynamic batching up to
``--max-batch``). For each entry and each concurrency, closed-loop clients (each keeps one
request in flight) run for ``--warmup`` + ``--duration`` seconds; the report gives inferences/s,
client latency percentiles, and the server's own queue / compute times and mean batch size
from its statistics over the measured window.

    .venv/bin/python bench/serve.py --device cpu --concurrency 1,4,16 --duration 10
    .venv/bin/python bench/serve.py --device cuda --precision fp16 --concurrency 1,16,64

Results go to ``bench/results/serve-<date>-<device>.json``.

Needs, beside Ember: fastapi, uvicorn, grpcio, protobuf, prometheus-client (the server) and
tritonclient[grpc,http] (the clients). The lent GPU image has grpcio, protobuf, prometheus-client,
httpx, h11, anyio and click but not fastapi (with starlette, pydantic, pydantic-core,
annotated-types, annotated-doc, typing-inspection, opentelemetry-api), uvicorn or tritonclient
(with python-rapidjson); carry those as wheels. tritonclient's generated protobuf modules need a
protobuf runtime at least as new as the one they were generated with (6.33.5 for 2.73); the
server itself works with any protobuf >= 4.21. The server's own front end costs roughly
0.1-0.5 ms of event-loop time per gRPC request (grpc.aio internals most of it), so batched
throughput of one server process tops out at a few thousand requests/s.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ember.errors import EmberError  # noqa: E402  (after the path set-up above)
from ember.serve.launch import ServeProcess, launch_server  # noqa: E402


# ---- models -------------------------------------------------------------------------------------
def export_model(name: str, seq_len: int) -> tuple[Path, dict[str, np.ndarray], str]:
    """ONNX file (dynamic batch), one batch-1 request, and the input section of the config."""
    if name == "minilm":
        from ember.zoo import minilm

        path = minilm.export_onnx()
        feeds = minilm.tokenize(minilm.load_tokenizer(), ["Ember serves MiniLM through a KServe v2 endpoint."],
                                max_length=seq_len, pad_to_max=True)
        inputs = "".join(f"  - {{name: {n}, datatype: INT64, shape: [{seq_len}]}}\n" for n in minilm.INPUTS)
        return path, feeds, "inputs:\n" + inputs
    from ember import zoo

    return zoo.export_onnx(name, dynamic_batch=True), zoo.sample_inputs(name, batch=1), ""


def write_repository(root: Path, models: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Two entries per model; returns ``{entry: {"model", "variant", "feeds"}}``."""
    entries = {}
    for name in models:
        path, feeds, inputs = export_model(name, args.seq_len)
        common = (f"device: {args.device}\nprecision: {args.precision}\ninstance_count: {args.instances}\n"
                  f"instance_kind: {args.instance_kind}\n{inputs}")
        variants = {
            "b1": "max_batch_size: 1\n",
            "dyn": (f"max_batch_size: {args.max_batch}\ndynamic_batching:\n"
                    f"  max_queue_delay_microseconds: {args.delay_us}\n"),
        }
        for variant, head in variants.items():
            entry = f"{name}-{variant}"
            (root / entry / "1").mkdir(parents=True)
            os.symlink(path, root / entry / "1" / "model.onnx")
            (root / entry / "config.yaml").write_text(head + common)
            entries[entry] = {"model": name, "variant": variant, "feeds": feeds}
    return entries


# ---- server -------------------------------------------------------------------------------------
def start_server(repo: Path, args: argparse.Namespace) -> ServeProcess:
    """``python -m ember.serve`` on free ports, its log echoed; waits (without limit) until ready."""
    extra = ["--grpc-front-ends", args.grpc_front_ends, "--grpc-staging-mb", str(args.grpc_staging_mb)]
    return launch_server(repo, cache_dir=args.cache_dir, ready_timeout=None, cwd=ROOT, extra_args=extra,
                         echo=lambda line: sys.stderr.write("  [server] " + line))


def check_loaded(http_port: int, entries: dict) -> None:
    index = httpx.post(f"http://127.0.0.1:{http_port}/v2/repository/index", timeout=30).json()
    failed = {r["name"]: r.get("reason", r["state"]) for r in index if r["state"] != "READY"}
    if failed:
        raise SystemExit(f"models failed to load: {failed}")


def server_stats(http_port: int, model: str) -> dict:
    r = httpx.get(f"http://127.0.0.1:{http_port}/v2/models/{model}/stats", timeout=30)
    r.raise_for_status()
    return r.json()["model_stats"][0]


def stats_delta(before: dict, after: dict) -> dict:
    """Per-request server times (us) and mean batch size over the window, as perf_analyzer reports them."""
    b, a = before["inference_stats"], after["inference_stats"]
    n = a["success"]["count"] - b["success"]["count"]

    def avg_us(key: str) -> float:
        return (a[key]["ns"] - b[key]["ns"]) / max(n, 1) / 1000

    execs = after["execution_count"] - before["execution_count"]
    return {"requests": n, "executions": execs,
            "avg_batch": (after["inference_count"] - before["inference_count"]) / max(execs, 1),
            "request_us": avg_us("success"), "queue_us": avg_us("queue"),
            "compute_input_us": avg_us("compute_input"), "compute_infer_us": avg_us("compute_infer"),
            "compute_output_us": avg_us("compute_output")}


# ---- clients ------------------------------------------------------------------------------------
def client_process(protocol: str, port: int, model: str, feeds: dict, concurrency: int,
                   start: float, stop: float, channels: int, out: Any) -> None:
    """Closed-loop clients until ``stop``; sends back (completion time, latency s) and errors."""
    out.send(asyncio.run(_clients(protocol, port, model, feeds, concurrency, start, stop, channels)))


async def _clients(protocol: str, port: int, model: str, feeds: dict, concurrency: int,
                   start: float, stop: float, channels: int) -> tuple[list, list]:
    if protocol == "grpc":
        import tritonclient.grpc.aio as tc
    else:
        import tritonclient.http.aio as tc
    from tritonclient.utils import np_to_triton_dtype

    # one connection per few clients, as separate client machines would open (and so that the
    # server's front-end processes, which share the port, each get some)
    clients = [tc.InferenceServerClient(f"127.0.0.1:{port}") for _ in range(max(1, min(channels, concurrency)))]
    inputs = []
    for name, arr in feeds.items():
        inp = tc.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    done: list[tuple[float, float]] = []
    errors: list[str] = []
    while time.time() < start:
        await asyncio.sleep(0.001)
    cpu0, wall0 = time.process_time(), time.time()

    async def loop(client: Any) -> None:
        while time.time() < stop:
            t0 = time.time()
            try:
                await client.infer(model, inputs)
            except Exception as exc:  # counted and reported, the run goes on
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            t1 = time.time()
            done.append((t1, t1 - t0))

    await asyncio.gather(*(loop(clients[i % len(clients)]) for i in range(concurrency)))
    cpu = (time.process_time() - cpu0) / max(1e-9, time.time() - wall0)
    for client in clients:
        await client.close()
    return done, errors, cpu


def measure(entry: str, feeds: dict, concurrency: int, ports: dict, args: argparse.Namespace,
            server_pid: int) -> dict:
    procs = max(1, min(args.client_procs or max(1, (os.cpu_count() or 2) // 4), concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    start = time.time() + 2.0                       # time for the client processes to start
    window = (start + args.warmup, start + args.warmup + args.duration)
    port = ports["grpc"] if args.protocol == "grpc" else ports["http"]
    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    for share in shares:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=client_process, args=(args.protocol, port, entry, feeds, share,
                                                       start, window[1], args.channels, send))
        p.start()
        pipes.append(recv)
        workers.append(p)
    time.sleep(max(0.0, window[0] - time.time()))
    before = server_stats(ports["http"], entry)
    cpu_before = process_cpu(server_pid)
    time.sleep(max(0.0, window[1] - time.time()))
    after = server_stats(ports["http"], entry)
    cpu_after = process_cpu(server_pid)
    done, errors, client_cpu = [], [], []
    for recv, p in zip(pipes, workers):
        d, e, c = recv.recv()
        done += d
        errors += e
        client_cpu.append(c)
        p.join()
    lat = np.array([dt for t, dt in done if window[0] <= t <= window[1]]) * 1000
    pct = {f"p{q}": float(np.percentile(lat, q)) if lat.size else None for q in (50, 90, 95, 99)}
    return {"concurrency": concurrency, "client_processes": procs, "requests": int(lat.size),
            "inferences_per_s": lat.size / args.duration,
            "latency_ms": {"avg": float(lat.mean()) if lat.size else None, **pct},
            "server": stats_delta(before, after), "errors": len(errors), "first_errors": errors[:3],
            # busy cores (CPU seconds per second) over the window: is the server or the client the limit?
            "cpu_cores": {"server_process": round((cpu_after[0] - cpu_before[0]) / args.duration, 2),
                          "server_children": round((cpu_after[1] - cpu_before[1]) / args.duration, 2),
                          "client_processes": [round(c, 2) for c in client_cpu]}}


def process_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of a process and of its child processes (front ends, instances), from /proc."""
    def stat(p: int) -> tuple[float, int]:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1])

    try:
        own = stat(pid)[0]
    except OSError:
        return 0.0, 0.0
    children = 0.0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cpu, parent = stat(int(d))
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                children += cpu
    return own, children


# ---- report -------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or "cpu"


def versions() -> dict:
    import grpc
    import torch

    import ember

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {"ember": ember.__version__, "torch": torch.__version__, "grpcio": grpc.__version__,
            "python": platform.python_version(), "commit": commit.stdout.strip()}


def print_row(entry: str, r: dict) -> None:
    s, lat = r["server"], r["latency_ms"]
    fmt = lambda v: "-" if v is None else f"{v:8.2f}"  # noqa: E731
    print(f"{entry:18s} conc {r['concurrency']:3d}  {r['inferences_per_s']:9.1f} infer/s  "
          f"p50 {fmt(lat['p50'])} p90 {fmt(lat['p90'])} p95 {fmt(lat['p95'])} p99 {fmt(lat['p99'])} ms  "
          f"server: queue {s['queue_us']:9.0f} us, compute {s['compute_infer_us']:9.0f} us, "
          f"batch {s['avg_batch']:5.1f}  errors {r['errors']}  cores: server {r['cpu_cores']['server_process']:.2f}"
          f" + {r['cpu_cores']['server_children']:.2f}, clients "
          f"{'/'.join(f'{c:.2f}' for c in r['cpu_cores']['client_processes'])}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="minilm,resnet-50", help="comma list: minilm and/or zoo names")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "fp16", "bf16"])
    p.add_argument("--concurrency", default="1,8,64", help="comma list of concurrent clients")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each run")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--max-batch", type=int, default=64, help="max_batch_size of the dynamic-batching entry")
    p.add_argument("--delay-us", type=int, default=2000, help="max_queue_delay_microseconds")
    p.add_argument("--instances", type=int, default=1, help="instance_count of every entry")
    p.add_argument("--seq-len", type=int, default=128, help="MiniLM sequence length")
    p.add_argument("--client-procs", type=int, default=0, help="client processes (0: cores/4, at most concurrency)")
    p.add_argument("--instance-kind", default="auto", choices=["auto", "thread", "process"],
                   help="instance_kind of every entry")
    p.add_argument("--channels", type=int, default=4, help="connections per client process")
    p.add_argument("--grpc-front-ends", default="auto", help="the server's --grpc-front-ends")
    p.add_argument("--grpc-staging-mb", type=int, default=32,
                   help="the server's --grpc-staging-mb (0: tensors travel in the relayed messages)")
    p.add_argument("--variants", default="b1,dyn", help="b1 (no batching) and/or dyn (dynamic batching)")
    p.add_argument("--cache-dir", default=None, help="engine cache of the server")
    p.add_argument("--out", default=None, help="result file (default bench/results/serve-<date>-<device>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    variants = set(args.variants.split(","))
    with tempfile.TemporaryDirectory(prefix="ember-serve-bench-") as tmp:
        entries = write_repository(Path(tmp), models, args)
        try:
            server = start_server(Path(tmp), args)
        except EmberError as exc:
            raise SystemExit(str(exc)) from None
        ports = server.ports
        runs = []
        try:
            check_loaded(ports["http"], entries)
            for entry, info in entries.items():
                if info["variant"] not in variants:
                    continue
                for c in levels:
                    r = measure(entry, info["feeds"], c, ports, args, server.proc.pid)
                    runs.append({"entry": entry, "model": info["model"], "variant": info["variant"], **r})
                    print_row(entry, r)
        finally:
            server.stop(signal.SIGTERM, timeout=120)
    today = dt.date.today().isoformat()
    result = {"suite": "serve", "date": today, "device": args.device, "device_name": device_name(args.device),
              "precision": args.precision, "protocol": args.protocol, "duration_s": args.duration,
              "warmup_s": args.warmup, "max_batch": args.max_batch, "delay_us": args.delay_us,
              "instances": args.instances, "instance_kind": args.instance_kind, "grpc_front_ends": args.grpc_front_ends,
              "grpc_staging_mb": args.grpc_staging_mb,
              "channels_per_client_process": args.channels, "seq_len": args.seq_len, "versions": versions(),
              "command": " ".join(sys.argv), "runs": runs}
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"serve-{today}-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Ray Serve benchmark: one and two Ember replicas against ``ember serve``, same model, same load.

One run, three servers up side by side, measured in turn over ``--rounds`` interleaved rounds
(so that other load on the machine falls on all three alike; the medians are reported), each
with the same closed-loop HTTP clients (``tritonclient.http.aio``, ``--concurrency`` requests in
flight, from a process of their own):

* ``ember-serve``: ``python -m ember.serve`` (one process, one instance, torch on every core);
* ``ray-1``: Ray Serve, one replica reserving every core (``num_cpus`` = the machine's);
* ``ray-2``: Ray Serve, two replicas of half the cores each (torch threads follow ``num_cpus``).

The model is the real all-MiniLM-L6-v2 (fp32, CPU), one sentence of ``--seq-len`` tokens per
request, dynamic batching up to ``--max-batch`` with ``--delay-us``. For each server the report
gives inferences/s and latency over ``--duration`` s after ``--warmup`` s, the mean batch the
engines ran, and the busy cores of each role (process CPU time over the window, from /proc):
ember serve, the replicas, Serve's proxy, Ray's own daemons, the client. Idle servers cost
little (Ray's daemons about 0.1 core).

    /tmp/ray-venv/bin/python bench/ray.py --duration 8 --rounds 3 --concurrency 16

Results go to ``bench/results/ray-<date>.json``. Needs ``ember[ray]`` and tritonclient[http].
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# This file is bench/ray.py: keep its folder behind site-packages, or `import ray` finds it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ember.serve.launch import launch_server  # noqa: E402

from common import machine_info, markdown_table, write_result  # noqa: E402

# ---- the model ----------------------------------------------------------------------------------
MODELS = {"ray-1": "minilm_r1", "ray-2": "minilm_r2", "ember-serve": "minilm_r1"}


def write_repository(root: Path, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The same engine (built once: batch 1..max, tokens 1..seq) as two models, one per Ray
    deployment, and one request."""
    import ember
    from ember.zoo import minilm

    profile = ((1, 1), (args.max_batch, args.seq_len), (args.max_batch, args.seq_len))
    engine = ember.build(str(minilm.export_onnx()), ember.BuildConfig(profiles={n: profile for n in minilm.INPUTS}))
    for name in sorted(set(MODELS.values())):
        folder = root / name
        (folder / "1").mkdir(parents=True)
        engine.save(folder / "1" / "model.ember")
        (folder / "config.yaml").write_text(f"max_batch_size: {args.max_batch}\n"
                                            f"dynamic_batching:\n  max_queue_delay_microseconds: {args.delay_us}\n")
    return minilm.tokenize(minilm.load_tokenizer(), ["Ember serves MiniLM behind Ray Serve replicas."],
                           max_length=args.seq_len, pad_to_max=True)


# ---- the clients --------------------------------------------------------------------------------
def client_process(port: int, model: str, feeds: dict[str, np.ndarray], concurrency: int, start: float,
                   stop: float, out: Any) -> None:
    """Closed-loop clients until ``stop``; sends back (completion time, latency s) pairs and errors."""
    out.send(asyncio.run(_clients(port, model, feeds, concurrency, start, stop)))


async def _clients(port: int, model: str, feeds: dict[str, np.ndarray], concurrency: int, start: float,
                   stop: float) -> tuple[list[tuple[float, float]], list[str]]:
    import tritonclient.http.aio as tc

    client = tc.InferenceServerClient(f"127.0.0.1:{port}", conn_limit=concurrency)
    done: list[tuple[float, float]] = []
    errors: list[str] = []

    async def loop() -> None:
        while time.time() < stop:
            inputs = []
            for name, arr in feeds.items():
                inp = tc.InferInput(name, list(arr.shape), "INT64")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            t0 = time.time()
            try:
                await client.infer(model, inputs)
            except Exception as exc:  # noqa: BLE001 - counted, not fatal
                errors.append(str(exc)[:200])
                continue
            t1 = time.time()
            if t1 >= start:
                done.append((t1, t1 - t0))

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await client.close()
    return done, errors


# ---- busy cores per role ------------------------------------------------------------------------
def _cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command line, user + system CPU seconds) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (cmd, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _role(cmd: str, server_pid: int | None, pid: int, client_pid: int) -> str | None:
    if pid == client_pid:
        return "client"
    if pid == server_pid:
        return "ember serve"
    if "ServeReplica:minilm" in cmd:
        return "replicas"
    if "ServeReplica:ember" in cmd:
        return "front door"
    if "ProxyActor" in cmd:
        return "serve proxy"
    if "ServeController" in cmd:
        return "serve controller"
    if any(k in cmd for k in ("raylet", "gcs_server", "dashboard", "log_monitor", "ray::")):
        return "ray daemons"
    return None


def measure(port: int, model: str, feeds: dict[str, np.ndarray], args: argparse.Namespace,
            server_pid: int | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    start = time.time() + args.warmup + 1.0
    stop = start + args.duration
    proc = ctx.Process(target=client_process, args=(port, model, feeds, args.concurrency, start, stop, send))
    proc.start()
    time.sleep(max(0.0, start - time.time()))
    before = _cpu_seconds()
    time.sleep(max(0.0, stop - time.time()))
    after = _cpu_seconds()
    done, errors = recv.recv()
    proc.join()
    busy: dict[str, float] = {}
    for pid, (cmd, cpu) in after.items():
        role = _role(cmd, server_pid, pid, proc.pid)
        if role is not None and pid in before:
            busy[role] = busy.get(role, 0.0) + (cpu - before[pid][1]) / args.duration
    lat = sorted(1000 * d for _, d in done)
    return {"inferences_per_s": len(done) / args.duration, "requests": len(done), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99))} if lat else None,
            "busy_cores": {k: round(v, 2) for k, v in sorted(busy.items())},
            "load_average": os.getloadavg()[0]}


# ---- the servers --------------------------------------------------------------------------------
def ember_serve_batches(port: int, before: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Mean rows per engine run since ``before`` (the model's statistics), and the statistics now."""
    import httpx

    after = httpx.get(f"http://127.0.0.1:{port}/v2/models/{MODELS['ember-serve']}/stats",
                      timeout=30).json()["model_stats"][0]
    if not before:
        return 0.0, after
    runs = after["execution_count"] - before["execution_count"]
    return round((after["inference_count"] - before["inference_count"]) / max(runs, 1), 2), after


def replica_batches(app: str, before: dict[str, Any], samples: int = 16) -> tuple[float, dict[str, Any]]:
    """Mean rows per engine run of ``app``'s replicas since ``before`` (each replica asked through
    the handle, which picks one), and their statistics now."""
    from ray import serve

    handle = serve.get_deployment_handle("EmberDeployment", app_name=app)
    now: dict[str, Any] = {}
    for _ in range(samples):
        stats = handle.statistics.remote().result()
        now[stats["replica"]] = stats
    runs = sum(s["runs"] - before.get(r, {}).get("runs", 0) for r, s in now.items())
    rows = sum(s["rows"] - before.get(r, {}).get("rows", 0) for r, s in now.items())
    return round(rows / max(runs, 1), 2), now


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_all(repo: Path, feeds: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    """The three servers up side by side, measured in ``args.rounds`` interleaved rounds."""
    import ray
    from ray import serve

    from ember.integrations.ray import RayServeOptions, deploy_repository

    cores = os.cpu_count() or 2
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in MODELS}
    with launch_server(repo, ready_timeout=300, cwd=ROOT, extra_args=["--grpc-front-ends", "0"]) as server:
        # The two deployments reserve every core each; only the one measured is busy.
        ray.init(num_cpus=2 * cores, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
        try:
            port = _free_port()
            options = {MODELS["ray-1"]: RayServeOptions(replicas=1, num_cpus=cores),
                       MODELS["ray-2"]: RayServeOptions(replicas=2, num_cpus=max(cores // 2, 1))}
            states = deploy_repository(repo, options, port=port)
            if set(states.values()) != {"READY"}:
                raise SystemExit(f"Ray Serve did not deploy the models: {states}")
            stats: dict[str, Any] = {name: {} for name in MODELS}
            _, stats["ember-serve"] = ember_serve_batches(server.ports["http"], {})
            for name in ("ray-1", "ray-2"):
                _, stats[name] = replica_batches(MODELS[name], {})
            for r in range(args.rounds):
                for name in MODELS:
                    print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
                    if name == "ember-serve":
                        result = measure(server.ports["http"], MODELS[name], feeds, args, server_pid=server.proc.pid)
                        result["mean_batch"], stats[name] = ember_serve_batches(server.ports["http"], stats[name])
                    else:
                        result = measure(port, MODELS[name], feeds, args, server_pid=server.proc.pid)
                        result["mean_batch"], stats[name] = replica_batches(MODELS[name], stats[name])
                    rounds[name].append(result)
        finally:
            serve.shutdown()
            ray.shutdown()
    out: dict[str, Any] = {}
    for name, runs in rounds.items():
        ordered = sorted(runs, key=lambda x: x["inferences_per_s"])
        out[name] = {"replicas": {"ember-serve": 1, "ray-1": 1, "ray-2": 2}[name], "median": ordered[len(ordered) // 2],
                     "rounds": runs}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="Ember on Ray Serve against ember serve, one run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--delay-us", type=int, default=2000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ember-ray-bench-") as tmp:
        repo = Path(tmp)
        feeds = write_repository(repo, args)
        results = run_all(repo, feeds, args)
    import ray

    data = {"suite": "ray", "machine": machine_info(threads=os.cpu_count() or 2), "ray": ray.__version__,
            "load_average": {"start": load_at_start, "end": os.getloadavg()},
            "model": "all-MiniLM-L6-v2 fp32 cpu", "request": f"1 x {args.seq_len} tokens",
            "config": vars(args), "results": results}
    path = write_result("ray", data, args.out)
    rows = []
    base = results["ember-serve"]["median"]["inferences_per_s"]
    for name, entry in results.items():
        r = entry["median"]
        lat = r["latency_ms"] or {}
        each = "/".join(f"{x['inferences_per_s']:.0f}" for x in entry["rounds"])
        rows.append([name, entry["replicas"], f"{r['inferences_per_s']:.1f}", each,
                     f"{r['inferences_per_s'] / base:.2f}", f"{lat.get('p50', float('nan')):.0f}",
                     f"{lat.get('p99', float('nan')):.0f}", r["errors"], r["mean_batch"],
                     ", ".join(f"{k} {v}" for k, v in r["busy_cores"].items() if v >= 0.02)])
    print(markdown_table(["server", "replicas", "inf/s (median)", "each round", "vs ember serve", "p50 ms",
                          "p99 ms", "errors", "mean batch", "busy cores (median round)"], rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fault load test of ``ember serve`` (issue 17): clients keep requests in flight while the
server's child processes are killed (``kill -9``) and while the server gets SIGTERM.

The server runs as users run it (``ember serve``, its own process) on a CPU repository with one
model served by two **instance processes** (``instance_kind: process``) and gRPC served by two
**front-end processes** (``--grpc-front-ends 2``; the relay hub is part of the server process);
HTTP goes to the server process itself. Closed-loop clients (half HTTP with kept-alive
connections, half gRPC through ``tritonclient``) send requests whose answers are known (each
request's input is unique; the answer is checked against NumPy). Each phase runs ``--duration``
seconds, the fault comes a third of the way in:

- ``none``: no fault (the baseline);
- ``kill -9 instance``, ``kill -9 all instances``: one or both instance processes;
- ``kill -9 front end``, ``kill -9 all front ends``: one or both gRPC front-end processes;
- ``kill -9 resource tracker``: multiprocessing's helper process, where there is one;
- ``SIGTERM``: the server drains and exits; clients go on until they are refused.

Every request ends in exactly one of: **ok** (the right answer), **refused** (not accepted: 503,
connection refused, gRPC UNAVAILABLE before the call reached a server), **lost** (the connection
carrying the call died under it: only calls in flight on a killed front end), **wrong** (an answer
with wrong values), **error** (5xx / INTERNAL / other), **hung** (no answer within
``--timeout``). The server's own count of successful requests in the phase is compared with
the clients' ok count: equal means every request the server answered reached its client once.
Results go to ``bench/results/serve-faults-<date>.json``; ``--markdown`` prints the table.

    .venv/bin/python bench/serve_faults.py --duration 6 --clients 8 --markdown
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import numpy as np

from ember.serve.launch import ServeProcess, launch_server  # noqa: E402

from common import machine_info, markdown_table, write_result  # noqa: I001 - puts the repository on sys.path

W = np.arange(16, dtype=np.float32).reshape(4, 4) / 10 - 0.5
OUTCOMES = ("ok", "refused", "lost", "wrong", "error", "hung")


# ---- the repository ---------------------------------------------------------------------------
def write_repository(root: Path, instances: int) -> None:
    """``simple``: y = relu(x @ W), x float32[batch, 4], served by ``instances`` processes."""
    import onnx
    import onnx.helper as oh
    import onnx.numpy_helper as onh

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["m"]), oh.make_node("Relu", ["m"], ["y"])],
                          "simple", [x], [y], [onh.from_array(W, "w")])
    (root / "simple" / "1").mkdir(parents=True)
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), root / "simple" / "1" / "model.onnx")
    (root / "simple" / "config.yaml").write_text(
        f"max_batch_size: 8\ninstance_count: {instances}\ninstance_kind: process\n"
        f"dynamic_batching: {{max_queue_delay_microseconds: 1000}}\n")


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W, 0)


# ---- the server's children ----------------------------------------------------------------------
def children(pid: int) -> dict[str, list[int]]:
    """The server's child processes by kind: ``instance``, ``front end``, ``resource tracker``."""
    kinds: dict[str, list[int]] = {"instance": [], "front end": [], "resource tracker": [], "other": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid != pid:
            continue
        if "ember.serve.relay.frontend" in cmd:
            kinds["front end"].append(int(entry.name))
        elif "resource_tracker" in cmd:
            kinds["resource tracker"].append(int(entry.name))
        elif "multiprocessing" in cmd:
            kinds["instance"].append(int(entry.name))
        else:
            kinds["other"].append(int(entry.name))
    return kinds


def wait_for_children(pid: int, want: dict[str, int], timeout: float) -> float:
    """Seconds until the server has ``want`` children of each kind again (inf: not in time)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        got = children(pid)
        if all(len(got[k]) >= n for k, n in want.items()):
            return time.monotonic() - start
        time.sleep(0.05)
    return float("inf")


# ---- the clients --------------------------------------------------------------------------------
class Log:
    """Every request's outcome with its time, from every client thread."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, str, str, str]] = []  # (time, protocol, outcome, detail)
        self._lock = threading.Lock()
        self._next = 0
        self.t0 = time.monotonic()

    def value(self) -> float:
        with self._lock:
            self._next += 1
            return float(self._next % 100_000)

    def note(self, protocol: str, outcome: str, detail: str = "") -> None:
        with self._lock:
            self.rows.append((time.monotonic(), protocol, outcome, detail))


def _x(log: Log) -> np.ndarray:
    k = log.value() % 1000
    return np.array([[k, -k / 2, k / 3, 1.0]], np.float32)


def right(y: np.ndarray, x: np.ndarray) -> bool:
    want = reference(x)
    return bool(np.allclose(y, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max() + 1)))


def http_client(port: int, log: Log, stop: threading.Event, timeout: float) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as c:
        while not stop.is_set():
            x = _x(log)
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]}
            try:
                r = c.post("/v2/models/simple/infer", json=body)
            except httpx.ConnectError:
                log.note("http", "refused", "connect")
                if stop.wait(0.05):
                    return
                continue
            except httpx.TimeoutException as exc:
                log.note("http", "hung", type(exc).__name__)
                continue
            except httpx.TransportError as exc:
                log.note("http", "lost", type(exc).__name__)
                continue
            if r.status_code == 200:
                y = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
                log.note("http", "ok" if right(y, x) else "wrong", "" if right(y, x) else f"{x} -> {y}")
            elif r.status_code == 503:
                log.note("http", "refused", "503")
                if stop.wait(0.02):  # as a client would, before it tries again
                    return
            else:
                log.note("http", "error", f"{r.status_code} {r.text[:80]}")


def grpc_client(port: int, log: Log, stop: threading.Event, timeout: float) -> None:
    import tritonclient.grpc as tg
    from tritonclient.utils import InferenceServerException

    c = tg.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        while not stop.is_set():
            x = _x(log)
            inp = tg.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x)
            sent = time.monotonic()
            try:
                y = c.infer("simple", [inp], client_timeout=timeout).as_numpy("y")
            except InferenceServerException as exc:
                status, message = str(exc.status()), exc.message() or ""
                if "DEADLINE_EXCEEDED" in status:
                    log.note("grpc", "hung", f"{message[:40]} (sent {sent - log.t0:.2f} s into the phase)")
                elif "UNAVAILABLE" in status and ("failed to connect" in message or "shutting down" in message
                                                  or "Connection refused" in message):
                    log.note("grpc", "refused", message[:80])
                elif "UNAVAILABLE" in status or "CANCELLED" in status:
                    log.note("grpc", "lost", message[:80])
                else:
                    log.note("grpc", "error", f"{status} {message[:80]}")
                if "UNAVAILABLE" in status and stop.wait(0.02):
                    return
                continue
            log.note("grpc", "ok" if right(y, x) else "wrong", "" if right(y, x) else f"{x} -> {y}")
    finally:
        c.close()


# ---- one phase ----------------------------------------------------------------------------------
def success_count(port: int) -> Optional[int]:
    try:
        stats = httpx.get(f"http://127.0.0.1:{port}/v2/models/simple/stats", timeout=10).json()
        return sum(int(m["inference_stats"]["success"]["count"]) for m in stats["model_stats"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def run_phase(name: str, server: ServeProcess, fault: Optional[Callable[[], Any]], args: argparse.Namespace,
              baseline: dict[str, int]) -> dict[str, Any]:
    log, stop = Log(), threading.Event()
    threads = [threading.Thread(target=http_client if i % 2 == 0 else grpc_client,
                                args=(server.http_port if i % 2 == 0 else server.grpc_port, log, stop, args.timeout))
               for i in range(args.clients)]
    before = success_count(server.http_port)
    start = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.duration / 3)
    fault_at = time.monotonic()
    detail = fault() if fault is not None else None
    row_fault_s = round(fault_at - log.t0, 2)
    if name == "SIGTERM":
        exit_status = server.wait(args.duration + 60)
        exited_after = time.monotonic() - fault_at
        time.sleep(0.5)
    else:
        time.sleep(max(0.0, start + args.duration - time.monotonic()))
    stop.set()
    for t in threads:
        t.join(args.timeout + 10)
    hung_threads = sum(t.is_alive() for t in threads)
    row: dict[str, Any] = {"phase": name, "fault": detail, "fault_s": row_fault_s, "requests": len(log.rows),
                           **{k: 0 for k in OUTCOMES}, "hung_clients": hung_threads}
    for _, _, outcome, _ in log.rows:
        row[outcome] += 1
    row["details"] = dict(Counter(f"{p} {o}: {d}" for _, p, o, d in log.rows if o not in ("ok",) and d).most_common(8))
    after_fault = [t for t, _, o, _ in log.rows if t > fault_at]
    oks = sorted(t for t, _, o, _ in log.rows if o == "ok")
    row["longest_gap_s"] = round(max((b - a for a, b in zip(oks, oks[1:]) if b > fault_at - 0.1), default=0.0), 3)
    row["after_fault"] = len(after_fault)
    if name == "SIGTERM":
        row["exit_status"], row["exited_after_s"] = exit_status, round(exited_after, 2)
        late = [o for t, _, o, _ in log.rows if t > fault_at]
        row["after_sigterm"] = dict(Counter(late))
        row["shutdown_log"] = [line.strip() for line in server.lines
                               if any(k in line for k in ("ember serve: shutting down", "ember serve: stopped",
                                                          "ERROR"))][-8:]
    else:
        after = success_count(server.http_port)
        row["server_successes"] = None if before is None or after is None else after - before
        # the killed processes are back (started again) before the next phase: their start-up
        # (a Python process importing torch and loading the engine) takes seconds here
        wait_for_children(server.proc.pid, baseline, 60)
        time.sleep(args.settle)
    return row


def kill_fn(server: ServeProcess, kind: str, everyone: bool) -> Callable[[], Any]:
    def fault() -> Any:
        pids = children(server.proc.pid)[kind]
        chosen = pids if everyone else pids[:1]
        for pid in chosen:
            os.kill(pid, signal.SIGKILL)
        return {"killed": kind, "pids": chosen}
    return fault


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per phase (default 6)")
    parser.add_argument("--clients", type=int, default=8, help="client threads, half HTTP, half gRPC (default 8)")
    parser.add_argument("--instances", type=int, default=2, help="instance processes (default 2)")
    parser.add_argument("--front-ends", type=int, default=2, help="gRPC front-end processes (default 2)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as hung")
    parser.add_argument("--settle", type=float, default=8.0,
                        help="seconds between phases, for restarted processes to finish starting (default 8)")
    parser.add_argument("--phases", default="", help="comma-separated phases to run (default: all)")
    parser.add_argument("--out", default=None, help="result file (default bench/results/serve-faults-<date>.json)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="ember-faults-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        write_repository(repo, args.instances)
        server = launch_server(repo, cache_dir=Path(tmp) / "cache", extra_args=[
            "--grpc-front-ends", str(args.front_ends), "--metrics-port", "-1"], ready_timeout=300)
        with server:
            kids = children(server.proc.pid)
            baseline = {"instance": args.instances, "front end": args.front_ends}
            print(f"server {server.proc.pid}: " + ", ".join(f"{k} {v}" for k, v in kids.items() if v), flush=True)
            phases: list[tuple[str, Optional[Callable[[], Any]]]] = [
                ("none", None),
                ("kill -9 instance", kill_fn(server, "instance", False)),
                ("kill -9 all instances", kill_fn(server, "instance", True)),
                ("kill -9 front end", kill_fn(server, "front end", False)),
                ("kill -9 all front ends", kill_fn(server, "front end", True)),
            ]
            if kids["resource tracker"]:
                phases.append(("kill -9 resource tracker", kill_fn(server, "resource tracker", False)))
            phases.append(("SIGTERM", lambda: server.proc.send_signal(signal.SIGTERM) or {"signal": "SIGTERM"}))
            if args.phases:
                phases = [p for p in phases if p[0] in args.phases.split(",")]
            for name, fault in phases:
                row = run_phase(name, server, fault, args, baseline)
                rows.append(row)
                print(f"{name}: " + ", ".join(f"{k} {row[k]}" for k in ("requests", *OUTCOMES)) +
                      f"; server successes {row.get('server_successes')}; longest gap {row['longest_gap_s']} s",
                      flush=True)
    result = {**machine_info(threads=os.cpu_count() or 1), "suite": "serve-faults", "args": vars(args), "rows": rows}
    path = write_result("serve-faults", result, args.out)
    print(f"wrote {path}")
    if args.markdown:
        print(markdown_table(
            ["phase", "requests", *OUTCOMES, "server successes", "longest gap without an answer, s"],
            [[r["phase"], r["requests"], *(r[k] for k in OUTCOMES),
              r.get("server_successes", f"exit {r.get('exit_status')} after {r.get('exited_after_s')} s"),
              r["longest_gap_s"]] for r in rows]))


if __name__ == "__main__":
    sys.exit(main())

"""Fault probe (the gRPC "cover" race of ``ember/serve/relay/hub.py``): a reuseport gRPC server is
started and stopped over and over on a port where a second server (the "front end") listens too,
while four threads make calls on fresh connections (3 s deadline). A call that ends at its
deadline instead of succeeding or failing fast is the race: ``FrontEnds._stop_cover`` stops the
server process's covering server the same way when a front end is back.

    python bench/probes/grpc_cover_stop.py grace60 300   # stop(60), as _stop_cover does
    python bench/probes/grpc_cover_stop.py grace0 300    # stop(None): in-flight calls aborted

Fifteenth session, the 2-core Xeon with one busy-loop process beside it (a loaded CI machine),
300 stops a run: ``grace60`` 2 and 1 calls at the deadline; ``grace0`` 4 and 6; with Linux's
``net.ipv4.tcp_migrate_req=1`` (accept-queue connections move to another listener of the group
on close) ``grace60`` 4 and 1. So neither the grace period nor the kernel's accept queue is the
cause: a connection the stopping server has taken but not yet handshaken is left hanging
(gRPC core), about one stop in a hundred under load. Without load, 40 stops: none. Control
(``control``: the front end alone for as long, no cover started or stopped): 0 of 173,479 calls
over 1 s, so the hang comes with the stop, not the clients or the front end.

    python bench/probes/grpc_cover_stop.py control 300
"""
import asyncio
import collections
import socket
import sys
import threading
import time

import grpc

MODE = sys.argv[1]          # how the cover stops: grace60 | grace0 | grace1; control: no cover
CYCLES = int(sys.argv[2])
DEADLINE = 3.0

def handler():
    async def live(req, ctx):
        return b"ok"
    h = grpc.unary_unary_rpc_method_handler(live, request_deserializer=lambda b: b, response_serializer=lambda b: b)
    return grpc.method_handlers_generic_handler("svc", {"Live": h})

def make(port):
    s = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    s.add_generic_rpc_handlers((handler(),))
    assert s.add_insecure_port(f"127.0.0.1:{port}") == port
    return s

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def clients(port, stop, log):
    while not stop.is_set():
        ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub = ch.unary_unary("/svc/Live", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        t = time.monotonic()
        try:
            stub(b"", timeout=DEADLINE); code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        log.append((code, time.monotonic() - t))
        ch.close()

async def main():
    port = free_port()
    fe = make(port); await fe.start()
    stop, log = threading.Event(), []
    ts = [threading.Thread(target=clients, args=(port, stop, log)) for _ in range(4)]
    for t in ts: t.start()
    for _ in range(CYCLES):
        if MODE == "control":  # no cover at all: the front end alone, as long
            await asyncio.sleep(0.35)
            continue
        cover = make(port); await cover.start()
        await asyncio.sleep(0.3)
        if MODE == "grace60":
            await cover.stop(60)
        elif MODE == "grace1":
            await cover.stop(1.0)
        elif MODE == "grace0":
            await cover.stop(None)
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in ts])
    await fe.stop(None)
    c = collections.Counter(code for code, _ in log)
    slow = [round(d, 2) for code, d in log if d > 1.0]
    print(MODE, dict(c), "calls over 1 s:", slow[:20], "n", len(log))

asyncio.run(main())

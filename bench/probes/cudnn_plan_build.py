"""Probe: what a cuDNN graph's plans cost to build, per op order, and whether threads help.

For ResNet-50's residual and plain 1x1/3x3 convolutions (fp16, NHWC, batch 128 and 1) it builds
each execution plan of several equivalent graphs (conv -> bias -> add z -> relu, conv -> add z
-> bias -> relu, ...), and records per plan: name, behaviour notes (runtime compilation or
not), build seconds, run microseconds. Then it builds one graph's plans from 8 threads to see
whether the frontend releases the GIL while compiling. Output: $OUT/probe_plan_build.json.
"""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import cudnn
import torch

dev = torch.device("cuda")
H, FL = cudnn.data_type.HALF, cudnn.data_type.FLOAT
handle = cudnn.create_handle()
cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
print("frontend", cudnn.__version__, "backend", cudnn.backend_version(), flush=True)


def timeit(fn, it=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(it):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) / it * 1000


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def make(order, N, C, Hh, W, K, R, s, p):
    x = cl(torch.randn(N, C, Hh, W, device=dev, dtype=torch.half))
    w = cl(torch.randn(K, C, R, R, device=dev, dtype=torch.half) * (1.0 / (C * R * R) ** 0.5))
    b = torch.randn(1, K, 1, 1, device=dev, dtype=torch.half)
    Ho, Wo = (Hh + 2 * p - R) // s + 1, (W + 2 * p - R) // s + 1
    z = cl(torch.randn(N, K, Ho, Wo, device=dev, dtype=torch.half))
    y = cl(torch.empty(N, K, Ho, Wo, device=dev, dtype=torch.half))
    g = cudnn.pygraph(io_data_type=H, intermediate_data_type=FL, compute_data_type=FL, handle=handle)
    X, Wt = g.tensor_like(x), g.tensor_like(w)
    B = g.tensor(name="B", dim=[1, K, 1, 1], stride=[K, 1, K, K], data_type=H)
    vp = {X: x, Wt: w, B: b}
    Y = g.conv_fprop(image=X, weight=Wt, padding=[p, p], stride=[s, s], dilation=[1, 1], compute_data_type=FL)
    Z = None
    for op in order:
        if op == "bias":
            Y = g.bias(input=Y, bias=B)
        elif op == "addb":
            Y = g.add(a=Y, b=B)
        elif op == "z":
            Z = g.tensor_like(z)
            vp[Z] = z
            Y = g.add(a=Y, b=Z)
        elif op == "relu":
            Y = g.relu(input=Y)
    Y.set_output(True).set_data_type(H).set_dim([N, K, Ho, Wo]).set_stride([K * Ho * Wo, 1, Wo * K, K])
    vp[Y] = y
    ref = torch.nn.functional.conv2d(x.float(), w.float(), b.view(-1).float(), s, p)
    if "z" in order:
        ref = ref + z.float()
    if "relu" in order:
        ref = ref.relu()
    t0 = time.perf_counter()
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    return g, vp, y, ref, time.perf_counter() - t0


rows = []


def case(label, order, dims, max_plans=12):
    g, vp, y, ref, t_prep = make(order, *dims)
    n = int(g.get_execution_plan_count())
    plans = []
    for i in range(min(n, max_plans)):
        rec = {"i": i, "name": str(g.get_plan_name_at_index(i))}
        try:
            rec["notes"] = [str(v) for v in g.get_behavior_notes_for_plan_at_index(i)]
        except Exception as e:  # noqa: BLE001
            rec["notes"] = ["?" + repr(e)[:60]]
        t0 = time.perf_counter()
        try:
            g.build_plan_at_index(i)
            rec["build_s"] = round(time.perf_counter() - t0, 3)
            ws = torch.empty(max(1, int(g.get_workspace_size_plan_at_index(i))), dtype=torch.uint8, device=dev)
            f = lambda ws=ws, i=i: g.execute_plan_at_index(vp, ws, i, handle=handle)
            f()
            torch.cuda.synchronize()
            rec["err"] = round(((y.float() - ref).norm() / ref.norm()).item(), 5)
            rec["us"] = round(timeit(f), 1)
        except Exception as e:  # noqa: BLE001
            rec["build_s"] = round(time.perf_counter() - t0, 3)
            rec["fail"] = repr(e)[:100]
        plans.append(rec)
    r = {"case": label, "order": order, "plans_offered": n, "prep_s": round(t_prep, 3), "plans": plans,
         "total_build_s": round(sum(p["build_s"] for p in plans), 2)}
    ok = [p for p in plans if "us" in p and p["err"] < 1e-2]
    if ok:
        best = min(ok, key=lambda p: p["us"])
        r["best"] = {"i": best["i"], "name": best["name"], "us": best["us"], "notes": best["notes"]}
        pre = [p for p in ok if not any("RUNTIME" in n for n in p["notes"])]
        if pre:
            bp = min(pre, key=lambda p: p["us"])
            r["best_precompiled"] = {"i": bp["i"], "name": bp["name"], "us": bp["us"]}
    print(json.dumps({k: v for k, v in r.items() if k != "plans"}), flush=True)
    for p in plans:
        print("   ", json.dumps(p), flush=True)
    rows.append(r)


res_dims = {"1x1 64-256 56 +res b128": (128, 64, 56, 56, 256, 1, 1, 0),
            "1x1 512-2048 7 +res b128": (128, 512, 7, 7, 2048, 1, 1, 0),
            "1x1 64-256 56 +res b1": (1, 64, 56, 56, 256, 1, 1, 0)}
for label, dims in res_dims.items():
    for order in (["bias", "z", "relu"], ["z", "bias", "relu"], ["z", "addb", "relu"]):
        try:
            case(label, order, dims)
        except Exception as e:  # noqa: BLE001
            print("case", label, order, "FAILED", repr(e)[:200], flush=True)
for label, dims in {"1x1 256-64 56 b128": (128, 256, 56, 56, 64, 1, 1, 0),
                    "3x3 64-64 56 b128": (128, 64, 56, 56, 64, 3, 1, 1)}.items():
    try:
        case(label, ["bias", "relu"], dims)
    except Exception as e:  # noqa: BLE001
        print("case", label, "FAILED", repr(e)[:200], flush=True)

# Threads: build the first 8 plans of a fresh residual graph from 8 threads.
thread = {}
try:
    g, vp, y, ref, _ = make(["bias", "z", "relu"], 128, 128, 28, 28, 512, 1, 1, 0)
    n = min(8, int(g.get_execution_plan_count()))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as ex:
        durs = list(ex.map(lambda i: (lambda t: (g.build_plan_at_index(i), time.perf_counter() - t)[1])(
            time.perf_counter()), range(n)))
    thread = {"plans": n, "wall_s": round(time.perf_counter() - t0, 2), "sum_s": round(sum(durs), 2)}
except Exception as e:  # noqa: BLE001
    thread = {"fail": repr(e)[:200]}
print("threads", json.dumps(thread), flush=True)
json.dump({"rows": rows, "threads": thread},
          open(os.path.join(os.environ.get("OUT", "/tmp"), "probe_plan_build.json"), "w"), indent=1)
print(f"\n{'case':<28} {'order':<22} {'plans':>6} {'build s':>8} {'best us':>8} {'best pre us':>10}")
for r in rows:
    best_us, best_pre_us = r.get("best", {}).get("us"), r.get("best_precompiled", {}).get("us")
    print(f"{r['case'][:28]:<28} {'-'.join(r['order']):<22} {r['plans_offered']:6d} {r['total_build_s']:8.1f} "
          f"{best_us!s:>8} {best_pre_us!s:>10}")

"""Probe: cuDNN frontend graphs writing into arena views vs PyTorch's fused cuDNN convs; SDPA."""
import json
import os
import time

import cudnn
import torch
import torch.nn.functional as F

print("cudnn frontend", cudnn.__version__, "backend", cudnn.backend_version(),
      "torch cudnn", torch.backends.cudnn.version(), flush=True)
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")
H = cudnn.data_type.HALF; FL = cudnn.data_type.FLOAT
handle = cudnn.create_handle()
cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)

def timeit(fn, it=50):
    for _ in range(5): fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(it): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / it * 1000  # us

def cl(t): return t.contiguous(memory_format=torch.channels_last)
arena = torch.empty(600 * 2**20, dtype=torch.uint8, device=dev)
def view(off, shape):  # NHWC view of arena at byte offset, logical NCHW
    n, c, h, w = shape
    flat = arena[off: off + n*c*h*w*2].view(torch.float16)
    return flat.view(n, h, w, c).permute(0, 3, 1, 2)

rows = []
def conv_case(name, N, C, Hh, W, K, R, s, p, res):
    x = cl(torch.randn(N, C, Hh, W, device=dev, dtype=torch.half))
    w = cl(torch.randn(K, C, R, R, device=dev, dtype=torch.half) * (1.0 / (C*R*R) ** 0.5))
    b = torch.randn(K, device=dev, dtype=torch.half)
    Ho = (Hh + 2*p - R)//s + 1; Wo = (W + 2*p - R)//s + 1
    z = cl(torch.randn(N, K, Ho, Wo, device=dev, dtype=torch.half)) if res else None
    if res:
        ref = lambda: torch.cudnn_convolution_add_relu(x, w, z, 1.0, b, (s, s), (p, p), (1, 1), 1)
    else:
        ref = lambda: torch.cudnn_convolution_relu(x, w, b, (s, s), (p, p), (1, 1), 1)
    want = ref()
    t_ref = timeit(ref)
    out_full = torch.empty(N * K * Ho * Wo * 2 + 2**20, dtype=torch.uint8, device=dev)
    t_copy = timeit(lambda: out_full[: N*K*Ho*Wo*2].view(torch.float16).copy_(ref().permute(0, 2, 3, 1).reshape(-1)))
    g = cudnn.pygraph(io_data_type=H, intermediate_data_type=FL, compute_data_type=FL, handle=handle)
    X = g.tensor_like(x); Wt = g.tensor_like(w)
    B = g.tensor(name="B", dim=[1, K, 1, 1], stride=[K, 1, K, K], data_type=H)
    Y = g.conv_fprop(image=X, weight=Wt, padding=[p, p], stride=[s, s], dilation=[1, 1], compute_data_type=FL)
    Y = g.bias(input=Y, bias=B)
    if res:
        Z = g.tensor_like(z); Y = g.add(a=Y, b=Z)
    else:
        Z = None
    Y = g.relu(input=Y)
    Y.set_output(True).set_data_type(H).set_dim([N, K, Ho, Wo]).set_stride([K*Ho*Wo, 1, Wo*K, K])
    t0 = time.perf_counter()
    g.validate(); g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support(); g.build_plans(cudnn.build_plan_policy.ALL)
    t_build = time.perf_counter() - t0
    n = g.get_execution_plan_count()
    off = 4096 * 3 + 64  # unaligned-to-segment offset in the arena
    y = view(off, (N, K, Ho, Wo))
    vp = {X: x, Wt: w, B: b.view(1, K, 1, 1), Y: y}
    if res: vp[Z] = z
    best = None
    for i in range(n):
        try:
            ws = torch.empty(max(1, g.get_workspace_size_plan_at_index(i)), dtype=torch.uint8, device=dev)
            f = lambda ws=ws, i=i: g.execute_plan_at_index(vp, ws, i, handle=handle)
            f(); torch.cuda.synchronize()
            err = (y.float() - want.float()).abs().max().item()
            t = timeit(f, 20)
            if err < 0.05 * max(1.0, want.abs().max().item()) and (best is None or t < best[0]):
                best = (t, i, g.get_plan_name_at_index(i), err)
        except Exception as ex:
            print("plan", i, "failed", repr(ex)[:120])
    # capture best into a CUDA graph and replay
    t_b, i_b, name_b, err_b = best
    ws = torch.empty(max(1, g.get_workspace_size_plan_at_index(i_b)), dtype=torch.uint8, device=dev)
    st = torch.cuda.Stream()
    cg = torch.cuda.CUDAGraph()
    y.zero_(); torch.cuda.synchronize()
    with torch.cuda.stream(st):
        cudnn.set_stream(handle=handle, stream=st.cuda_stream)
        with torch.cuda.graph(cg, stream=st):
            g.execute_plan_at_index(vp, ws, i_b, handle=handle)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream().cuda_stream)
    y.zero_(); cg.replay(); torch.cuda.synchronize()
    gerr = (y.float() - want.float()).abs().max().item()
    t_graph = timeit(cg.replay)
    r = dict(case=name, torch_fused_us=round(t_ref, 1), torch_fused_plus_copy_us=round(t_copy, 1),
             cudnn_fe_best_us=round(t_b, 1), cudnn_fe_graph_replay_us=round(t_graph, 1), plans=n, best=i_b,
             plan=name_b, err=err_b, graph_err=gerr, build_s=round(t_build, 2))
    print(json.dumps(r), flush=True); rows.append(r)

cases = [("r50 1x1 256-64 56 b128", 128, 256, 56, 56, 64, 1, 1, 0, False),
         ("r50 3x3 64-64 56 b128", 128, 64, 56, 56, 64, 3, 1, 1, False),
         ("r50 1x1 64-256 56 +res b128", 128, 64, 56, 56, 256, 1, 1, 0, True),
         ("r50 3x3 256-256 14 b128", 128, 256, 14, 14, 256, 3, 1, 1, False),
         ("r50 1x1 512-2048 7 +res b128", 128, 512, 7, 7, 2048, 1, 1, 0, True),
         ("r50 3x3 64-64 56 b1", 1, 64, 56, 56, 64, 3, 1, 1, False),
         ("r50 1x1 64-256 56 +res b1", 1, 64, 56, 56, 256, 1, 1, 0, True),
         ("r50 3x3 s2 128 28 b128", 128, 128, 56, 56, 128, 3, 2, 1, False),
         ("stem 7x7 s2 c8 b128", 128, 8, 224, 224, 64, 7, 2, 3, False)]
for c in cases:
    try:
        conv_case(*c)
    except Exception as ex:
        print("case", c[0], "FAILED", repr(ex)[:300], flush=True)

# SDPA: BERT-base b128 s128 h12 d64, output written as [b, s, h, d] (no transpose after)
def sdpa_case(b, h, s, d, mask):
    q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=torch.half).permute(0, 2, 1, 3) for _ in range(3))
    bias = (torch.randn(b, 1, 1, s, device=dev, dtype=torch.half) if mask else None)
    scale = d ** -0.5
    ref = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    want = ref()
    t_ref = timeit(ref)
    t_ref_t = timeit(lambda: ref().transpose(1, 2).reshape(b, s, h * d))
    g = cudnn.pygraph(io_data_type=H, intermediate_data_type=FL, compute_data_type=FL, handle=handle)
    Q, K_, V = g.tensor_like(q), g.tensor_like(k), g.tensor_like(v)
    Bt = g.tensor_like(bias) if mask else None
    O, _ = g.sdpa(name="sdpa", q=Q, k=K_, v=V, generate_stats=False, attn_scale=scale, bias=Bt, use_causal_mask=False)
    O.set_output(True).set_dim([b, h, s, d]).set_stride([s * h * d, d, h * d, 1]).set_data_type(H)
    g.validate(); g.build_operation_graph(); g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support(); g.build_plans(cudnn.build_plan_policy.ALL)
    o = view(8192, (b, s * h * d, 1, 1)).reshape(b, s, h, d)
    vp = {Q: q, K_: k, V: v, O: o.permute(0, 2, 1, 3)}
    if mask: vp[Bt] = bias
    n = g.get_execution_plan_count(); best = None
    for i in range(n):
        ws = torch.empty(max(1, g.get_workspace_size_plan_at_index(i)), dtype=torch.uint8, device=dev)
        f = lambda ws=ws, i=i: g.execute_plan_at_index(vp, ws, i, handle=handle)
        f(); torch.cuda.synchronize()
        err = (o.permute(0, 2, 1, 3).float() - want.float()).abs().max().item()
        t = timeit(f, 20)
        if best is None or t < best[0]: best = (t, i, g.get_plan_name_at_index(i), err)
    r = dict(case=f"sdpa b{b} h{h} s{s} d{d} mask={mask}", torch_sdpa_us=round(t_ref, 1),
             torch_sdpa_plus_transpose_us=round(t_ref_t, 1), cudnn_fe_best_us=round(best[0], 1), plans=n,
             plan=best[2], err=best[3])
    print(json.dumps(r), flush=True); rows.append(r)
for c in [(128, 12, 128, 64, True), (128, 12, 128, 64, False), (1, 12, 128, 64, True)]:
    try:
        sdpa_case(*c)
    except Exception as ex:
        print("sdpa", c, "FAILED", repr(ex)[:300], flush=True)

json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "probe_cudnn.json"), "w"), indent=1)
print(f"\n{'case':<32} {'torch':>10} {'torch+cp':>10} {'fe':>10} {'fe-graph':>10}")
for r in rows:
    torch_us = r.get("torch_fused_us", r.get("torch_sdpa_us"))
    torch_cp_us = r.get("torch_fused_plus_copy_us", r.get("torch_sdpa_plus_transpose_us"))
    print(f"{r['case'][:32]:<32} {torch_us!s:>10} {torch_cp_us!s:>10} {r['cudnn_fe_best_us']!s:>10} "
          f"{r.get('cudnn_fe_graph_replay_us', '')!s:>10}")

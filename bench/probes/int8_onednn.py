"""Probe: oneDNN INT8 on the CPU through PyTorch's maintained entry points (issue 14, "INT8 CPU kernels").

    python bench/probes/int8_onednn.py [--threads 2] [--reps 30] [--out bench/results/cpu-int8-onednn-probe-<date>.json]

What it does: for each entry point below, a correctness check against a float64 reference computed from the
same dequantized operands (so the error measured is the kernel's own rounding, in output quantization steps),
then median timings (``--reps`` runs after warm-up, ``torch.set_num_threads(--threads)``) against the fp32 path
Ember uses today: ``mkldnn._convolution_pointwise`` on a weight prepacked by ``mkldnn._reorder_convolution_weight``
for convolutions (as ``ember/backends/cpu/kernels/conv_mkldnn.py``), ``F.linear`` / ``addmm`` for GEMMs. A first
INT8 layer also pays for quantizing its fp32 input and a last one for dequantizing its output, so both are timed
too. The oneDNN implementation each call ran (``brg_conv_fwd:avx512_core_amx`` and the like) is read from oneDNN's
verbose output. Not used: ``torch.ao.quantization`` and ``torch.ops.quantized.*`` (deprecated upstream).

Signatures in torch 2.13.0+cpu (oneDNN v3.12), ``torch.ops.onednn.<op>.<overload>._schema``; the JSON repeats them:

    qconv_prepack(Tensor weight, Tensor w_scales, float x_scale, int x_zp, int[] stride, int[] padding,
                  int[] dilation, int groups, int[]? x_shape=None) -> Tensor            # an MKLDNN (opaque) int8 tensor
    qconv_pointwise(Tensor qx, float x_scale, int x_zero_point, Tensor qw, Tensor w_scale, Tensor w_zero_point,
                    Tensor? bias, int[] stride, int[] padding, int[] dilation, int groups, float output_scale,
                    int output_zero_point, ScalarType? output_dtype, str attr, Scalar?[] scalars, str? algorithm)
    qconv_pointwise.tensor(...)            # same, x_scale / x_zero_point as 0-d tensors
    qconv2d_pointwise(...)                 # same arguments as qconv_pointwise (also qconv1d_/qconv3d_pointwise)
    qconv2d_pointwise.binary(Tensor qx, float x_scale, int x_zero_point, Tensor qw, Tensor w_scale,
                    Tensor w_zero_point, Tensor(a!) qaccum, Tensor? bias, int[] stride, int[] padding,
                    int[] dilation, int groups, float output_scale, int output_zero_point, ScalarType? output_dtype,
                    float accum_scale, int accum_zero_point, str binary_attr, Scalar? alpha, str? unary_attr,
                    Scalar?[] unary_scalars, str? unary_algorithm)
    qlinear_prepack(Tensor weight, int[]? x_shape) -> Tensor                            # weight [N, K] int8
    qlinear_pointwise(Tensor qx, float x_scale, int x_zero_point, Tensor qw, Tensor w_scale, Tensor w_zero_point,
                    Tensor? bias, float output_scale, int output_zero_point, ScalarType? output_dtype,
                    str post_op_name, Scalar?[] post_op_args, str post_op_algorithm)
    qlinear_pointwise.tensor(...)          # x_scale / x_zero_point as tensors
    qlinear_pointwise.binary(Tensor qx, float x_scale, int x_zero_point, Tensor qw, Tensor w_scale,
                    Tensor w_zero_point, Tensor? other, Tensor? bias, float output_scale, int output_zero_point,
                    ScalarType? output_dtype, float other_scale, int other_zp, str binary_post_op,
                    float binary_alpha, str unary_post_op, Scalar?[] unary_post_op_args, str unary_post_op_algorithm)
    qlinear_pointwise.binary_tensor(...)   # x_scale / x_zero_point as tensors
    aten::_int_mm(Tensor self, Tensor mat2) -> Tensor                                   # int8 x int8 -> int32

Conventions (as Inductor's ``torch/_inductor/fx_passes/quantization.py`` calls them, and checked here):
scales are the real quantization scales (x = (q - zp) * scale), not their inverses; ``output_scale`` is the scale
of the requantized output, and must be 1.0 with zero point 0 when ``output_dtype`` is float32/bfloat16; ``None``
output dtype means uint8. ``w_scale`` is a float32 [OC] tensor (per output channel), ``w_zero_point`` an int64
[OC] tensor of zeros. The conv weight is prepacked for a given input shape and the conv computes channels-last
whatever the input layout. The linear weight is prepacked from [N, K].

Findings on the machine measured (Intel Xeon under KVM with AVX-512 VNNI + AMX-INT8, 2 cores, oneDNN 3.12;
bench/results/cpu-int8-onednn-probe-2026-12-05.json):
- conv: activations must be uint8 (s8 is refused: "Input tensor should have uint8 (unsigned char) or fp8 data
  type"); a non-zero input zero point works but oneDNN re-reorders the weight with zero-point compensation on
  every call (~+0.03-0.08 ms a layer). Output uint8 / int8 (requantized, with zero point), float32 or bfloat16;
  ReLU and hardtanh(0, 6) fuse. Depthwise (groups = channels) works, on a VNNI kernel (no AMX) and barely beats
  fp32. Residual: only ``binary_attr="sum"`` (``"add"`` is refused), accum channels-last, same dtype as the output;
  the result is written into the accum buffer (which is clobbered) and returned as a separate tensor.
  Prepack without x_shape works but the weight is reordered on each call.
- linear: u8 (with zero point) and s8 activations both run on AMX at the same speed; bias, relu, gelu (erf/tanh)
  and a binary add/sum of an fp32 tensor fuse, output fp32/bf16/u8/s8; 3-D input works; ``sum`` writes into
  ``other`` and returns it.
- ``torch._int_mm`` (s8 x s8 -> s32) runs oneDNN's gemm_api, not the AMX brgemm: slower than qlinear and needs a
  separate dequant/bias pass. Not worth a tactic here.
- All outputs are within 1 output quantization step of a float64 reference (almost all exact).
- Full min/max over a channels-last 4-D tensor is 10-50x slower than over a flat view (calibration, dynamic quant).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=30)
ap.add_argument("--warmup", type=int, default=8)
ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the reported time is the min of medians")
ap.add_argument("--out", default=None, help="JSON path (default bench/results/cpu-int8-onednn-probe-<date>.json)")
args = ap.parse_args()

torch.manual_seed(0)
torch.set_num_threads(args.threads)
on = torch.ops.onednn
CL = torch.channels_last
RESULT: dict = {"cases": {}, "timings": {}, "errors": {}}
TIMERS: dict = {}  # layer: ({timing name: fn}, derived(T) adding sums and ratios)


# ---------------------------------------------------------------- machine -------------------------------------
def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        first = text.split("\n\n")[0]
        kv = dict((k.strip(), v.strip()) for k, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln))
        flags = set(kv.get("flags", "").split())
        info.update(cpu=kv.get("model name"), cpu_family=kv.get("cpu family"), cpu_model=kv.get("model"),
                    logical_cpus=text.count("processor\t:"),
                    isa_flags=sorted(f for f in flags if re.match(r"(avx512|amx|avx_vnni|avx2$)", f)),
                    hypervisor="hypervisor" in flags)
    except OSError:
        pass
    m = re.search(r"(?:Intel\(R\) MKL-DNN|oneDNN) v([\d.]+)", torch.__config__.show())
    info["onednn"] = m.group(1) if m else None
    return info


def schemas() -> dict:
    out = {}
    for op in ("qconv_prepack", "qconv_pointwise", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise"):
        packet = getattr(on, op, None)
        if packet is None:
            out[op] = "missing"; continue
        for ov in packet.overloads():
            out[f"onednn::{op}.{ov}"] = str(getattr(packet, ov)._schema)
    out["aten::_int_mm"] = str(torch.ops.aten._int_mm.default._schema)
    return out


def onednn_impls(fn) -> list[str]:
    """The oneDNN primitives one call of ``fn`` executes ("kind impl src-dtype..."), from oneDNN's verbose log."""
    sys.stdout.flush()
    with tempfile.TemporaryFile() as f:
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            sys.stdout.flush(); os.dup2(saved, 1); os.close(saved)
        f.seek(0)
        lines = f.read().decode(errors="replace").splitlines()
    out = []
    for ln in lines:
        p = ln.split(",")
        if "exec" in p and len(p) > 8:
            i = p.index("exec")
            out.append(" ".join(p[i + 2:i + 4] + [p[i + 5][:80]]))
    return out


def cpu_ticks() -> tuple[int, float]:
    """(busy jiffies of all CPUs from /proc/stat, wall time): another process's load shows in the difference."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return f[0] + f[1] + f[2] + f[5] + f[6] + f[7], time.perf_counter()
    except (OSError, ValueError, IndexError):
        return 0, time.perf_counter()


def bench(fn, reps=None) -> float:
    reps = reps or args.reps
    for _ in range(args.warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return round(statistics.median(ts) * 1e3, 4)


def err_msg(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


def attempt(tag: str, fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recording what this torch build refuses is the point
        RESULT["errors"][tag] = err_msg(e)
        print(f"  {tag}: ERROR {err_msg(e)}")
        return None


# ---------------------------------------------------------------- quantization helpers ----------------------------
def q_u8(x, scale, zp):
    return torch.round(x * (1.0 / scale)).add_(zp).clamp_(0, 255).to(torch.uint8)


def q_s8(x, scale):
    return torch.round(x * (1.0 / scale)).clamp_(-127, 127).to(torch.int8)


def q_u8_fast(x, scale, zp):
    """3 passes instead of 4: round half up by truncation (x / scale + zp >= 0 after the clamp)."""
    return (x * (1.0 / scale)).add_(zp + 0.5).clamp_(0, 255).to(torch.uint8)


def dq(q, scale, zp):
    return (q.to(torch.float32) - zp) * scale if zp else q.to(torch.float32) * scale


def flat(t):
    """A 1-D view in storage order. A full min/max over a channels-last 4-D tensor takes aten's slow strided
    reduction (3.2 ms against 0.08 ms for 1x256x56x56 here, see ``minmax_channels_last_4d_SLOW``)."""
    if t.dim() == 4 and t.is_contiguous(memory_format=CL):
        return t.permute(0, 2, 3, 1).reshape(-1)
    return t.reshape(-1)


def u8_params(t):
    """(scale, zero point) for uint8 covering t's range (min-max, zero exactly representable)."""
    lo, hi = torch.aminmax(flat(t))
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255 or 1.0
    return scale, int(round(-lo / scale))


def s8_scale(t):
    return float(flat(t).abs().max()) / 127 or 1.0


def per_channel_weight(w):
    ws = (w.abs().flatten(1).amax(1) / 127).clamp_min(1e-12).float()
    qw = torch.round(w / ws.view(-1, *[1] * (w.dim() - 1))).clamp_(-127, 127).to(torch.int8)
    return qw, ws, torch.zeros(w.shape[0], dtype=torch.int64)


def steps_vs(y, ref, out_scale, out_zp=0, lo=0, hi=255, quantized=True) -> dict:
    """Max abs error (and share of elements off) in output quantization steps."""
    if quantized:
        ref_q = torch.round(ref / out_scale).add_(out_zp).clamp_(lo, hi)
        d = (y.double() - ref_q).abs()
    else:
        d = (y.double() - ref).abs() / out_scale
    return {"max_steps": round(float(d.max()), 4), "frac_ge_1_step": round(float((d >= 0.999).double().mean()), 6)}


def record(tag, res):
    RESULT["cases"][tag] = res
    print(f"  {tag}: {res}")


# ---------------------------------------------------------------- convolution ------------------------------------
CONVS = {  # name: (N, C, H, W, OC, k, pad, stride, groups)
    "r50_3x3_64x64_56": (1, 64, 56, 56, 64, 3, 1, 1, 1),
    "r50_1x1_256x64_56": (1, 256, 56, 56, 64, 1, 0, 1, 1),
    "mnv2_dw3x3_144_56": (1, 144, 56, 56, 144, 3, 1, 1, 144),
}


def conv_probe(name, shape):
    N, C, H, W, OC, k, p, s, g = shape
    print(f"\n[conv {name}] N{N} C{C} {H}x{W} -> {OC} k{k} pad{p} stride{s} groups{g}")
    st, pd, dl = [s, s], [p, p], [1, 1]
    # Activations after a ReLU (u8 with zero point 0, the common CNN case) and signed ones (u8 with zero point).
    x = torch.randn(N, C, H, W).relu_().contiguous(memory_format=CL)
    xsgn = torch.randn(N, C, H, W).contiguous(memory_format=CL)
    w = torch.randn(OC, C // g, k, k) * (2.0 / (C // g * k * k)) ** 0.5
    b = torch.randn(OC) * 0.1
    qw, ws, wzp = per_channel_weight(w)
    wd = qw.double() * ws.double().view(-1, 1, 1, 1)

    def ref_of(qx, xs, xzp):
        return F.conv2d((qx.double() - xzp) * xs, wd, b.double(), s, p, 1, g)

    xs, xzp = u8_params(x)
    qx = q_u8(x, xs, xzp)
    xs2, xzp2 = u8_params(xsgn)
    qx2 = q_u8(xsgn, xs2, xzp2)
    pw = attempt(f"{name}/qconv_prepack", lambda: on.qconv_prepack(qw, ws, xs, xzp, st, pd, dl, g, [N, C, H, W]))
    if pw is None:
        return
    ref = ref_of(qx, xs, xzp)
    ref_relu = ref.relu()
    os_relu, _ = u8_params(ref_relu)
    os_lin, ozp_lin = u8_params(ref)
    os_s8 = s8_scale(ref)

    def qconv(qx_, xs_, xzp_, oscale, ozp, odt, attr="none", scalars=(), alg="", op=on.qconv_pointwise):
        return op(qx_, xs_, xzp_, pw, ws, wzp, b, st, pd, dl, g, oscale, ozp, odt, attr, list(scalars), alg)

    cases = {
        "u8in_zp0_bias_relu_u8out": (lambda: qconv(qx, xs, xzp, os_relu, 0, None, "relu"),
                                     dict(ref=ref_relu, out_scale=os_relu)),
        "u8in_zp0_bias_relu_f32out": (lambda: qconv(qx, xs, xzp, 1.0, 0, torch.float32, "relu"),
                                      dict(ref=ref_relu, out_scale=os_relu, quantized=False)),
        "u8in_zp0_bias_u8out_zp": (lambda: qconv(qx, xs, xzp, os_lin, ozp_lin, None),
                                   dict(ref=ref, out_scale=os_lin, out_zp=ozp_lin)),
        "u8in_zp0_bias_s8out": (lambda: qconv(qx, xs, xzp, os_s8, 0, torch.int8),
                                dict(ref=ref, out_scale=os_s8, lo=-128, hi=127)),
        "u8in_zp0_bias_relu6_u8out": (lambda: qconv(qx, xs, xzp, os_relu, 0, None, "hardtanh", (0.0, 6.0)),
                                      dict(ref=ref.clamp(0, 6), out_scale=os_relu)),
        "u8in_zp0_bias_bf16out": (lambda: qconv(qx, xs, xzp, 1.0, 0, torch.bfloat16),
                                  dict(ref=ref, out_scale=os_lin, quantized=False)),
        "tensor_overload_u8out": (lambda: qconv(qx, torch.tensor(xs), torch.tensor(xzp), os_relu, 0, None, "relu",
                                                op=on.qconv_pointwise.tensor), dict(ref=ref_relu, out_scale=os_relu)),
        "qconv2d_pointwise_u8out": (lambda: qconv(qx, xs, xzp, os_relu, 0, None, "relu", op=on.qconv2d_pointwise),
                                    dict(ref=ref_relu, out_scale=os_relu)),
        "output_scale_inverse_check": (lambda: qconv(qx, xs, xzp, 1.0 / os_relu, 0, None, "relu"),
                                       dict(ref=ref_relu, out_scale=os_relu)),
    }
    # Signed input: u8 with zero point (the weight was prepacked for the zp-0 input; prepack again).
    ref2 = ref_of(qx2, xs2, xzp2).relu()
    os2, _ = u8_params(ref2)
    pw2 = on.qconv_prepack(qw, ws, xs2, xzp2, st, pd, dl, g, [N, C, H, W])
    cases[f"u8in_zp{xzp2}_bias_relu_u8out"] = (
        lambda: on.qconv_pointwise(qx2, xs2, xzp2, pw2, ws, wzp, b, st, pd, dl, g, os2, 0, None, "relu", [], ""),
        dict(ref=ref2, out_scale=os2))
    xs8 = s8_scale(xsgn); qx8 = q_s8(xsgn, xs8)
    cases["s8in_f32out"] = (lambda: qconv(qx8, xs8, 0, 1.0, 0, torch.float32), dict(ref=ref, out_scale=os_lin))
    results = {}
    for tag, (fn, chk) in cases.items():
        y = attempt(f"{name}/{tag}", fn)
        if y is None:
            continue
        r = steps_vs(y, chk.pop("ref"), **chk)
        r["out_dtype"] = str(y.dtype).replace("torch.", "")
        r["channels_last"] = bool(y.is_contiguous(memory_format=CL))
        results[tag] = r
        record(f"conv/{name}/{tag}", r)

    # Residual add fused: out = requant(relu(conv(x) + bias + dequant(accum))). ResNet's block end.
    accum_f = torch.randn(ref.shape, dtype=torch.float64).relu_()
    acs, aczp = u8_params(accum_f)
    q_acc = q_u8(accum_f.float(), acs, aczp).contiguous(memory_format=CL)
    ref_sum = (ref + (q_acc.double() - aczp) * acs).relu()
    os_sum, _ = u8_params(ref_sum)

    def binary(kind, acc, oscale, odt, ascale, azp):
        return on.qconv2d_pointwise.binary(qx, xs, xzp, pw, ws, wzp, acc, b, st, pd, dl, g, oscale, 0, odt,
                                           ascale, azp, kind, 1.0, "relu", [], "")

    acc_in = q_acc.clone()
    y = attempt(f"{name}/binary_sum_u8accum_relu_u8out", lambda: binary("sum", acc_in, os_sum, None, acs, aczp))
    if y is not None:
        r = steps_vs(y, ref_sum, os_sum)
        r["accum_overwritten_with_result"] = bool(torch.equal(acc_in, y))
        same = y.untyped_storage().data_ptr() == acc_in.untyped_storage().data_ptr()
        r["returned_tensor_shares_accum_storage"] = same
        record(f"conv/{name}/binary_sum_u8accum_relu_u8out", r)
    attempt(f"{name}/binary_sum_nchw_accum", lambda: binary("sum", q_acc.contiguous(), os_sum, None, acs, aczp))
    acc_f32 = ((q_acc.double() - aczp) * acs).float().contiguous(memory_format=CL)
    y = attempt(f"{name}/binary_add_f32accum_relu_f32out",
                lambda: binary("add", acc_f32, 1.0, torch.float32, 1.0, 0))
    if y is not None:
        record(f"conv/{name}/binary_add_f32accum_relu_f32out", steps_vs(y, ref_sum, os_sum, quantized=False))
    y = attempt(f"{name}/binary_add_u8accum_relu_u8out",
                lambda: binary("add", q_acc, os_sum, None, acs, aczp))
    if y is not None:
        record(f"conv/{name}/binary_add_u8accum_relu_u8out", steps_vs(y, ref_sum, os_sum))
    y = attempt(f"{name}/binary_sum_f32accum_relu_f32out",
                lambda: binary("sum", acc_f32.clone(), 1.0, torch.float32, 1.0, 0))
    if y is not None:
        record(f"conv/{name}/binary_sum_f32accum_relu_f32out", steps_vs(y, ref_sum, os_sum, quantized=False))

    # Prepack without an input shape, and for another batch size than the run's.
    pw_noshape = attempt(f"{name}/prepack_no_xshape", lambda: on.qconv_prepack(qw, ws, xs, xzp, st, pd, dl, g, None))
    qx_b2 = torch.cat([qx, qx]).contiguous(memory_format=CL)
    for label, pwx, qin in (("prepack_no_xshape", pw_noshape, qx), ("prepack_b1_run_b2", pw, qx_b2)):
        if pwx is None:
            continue
        y = attempt(f"{name}/{label}", lambda pwx=pwx, qin=qin: on.qconv_pointwise(
            qin, xs, xzp, pwx, ws, wzp, b, st, pd, dl, g, os_relu, 0, None, "relu", [], ""))
        if y is not None:
            record(f"conv/{name}/{label}", steps_vs(y[:1], ref_relu, os_relu))

    # ---- timing (registered here, run in interleaved rounds by main)
    T = {}
    impl = {}
    xf = dq(qx, xs, xzp).contiguous(memory_format=CL)  # the same values in fp32, channels-last
    pwf = torch.ops.mkldnn._reorder_convolution_weight(w, pd, st, dl, g, [N, C, H, W])
    fp32 = lambda: torch.ops.mkldnn._convolution_pointwise(xf, pwf, b, pd, st, dl, g, "relu", [], "")
    y32 = fp32()
    RESULT["cases"][f"conv/{name}/fp32_unquantized_weight_vs_int8_ref"] = steps_vs(y32, ref_relu, os_relu,
                                                                                  quantized=False)
    T["fp32_mkldnn_prepacked_relu"] = (fp32)
    impl["fp32"] = onednn_impls(fp32)
    i8 = lambda: on.qconv_pointwise(qx, xs, xzp, pw, ws, wzp, b, st, pd, dl, g, os_relu, 0, None, "relu", [], "")
    T["int8_u8in_relu_u8out"] = (i8)
    impl["int8_u8out"] = onednn_impls(i8)
    i8f = lambda: on.qconv_pointwise(qx, xs, xzp, pw, ws, wzp, b, st, pd, dl, g, 1.0, 0, torch.float32, "relu",
                                     [], "")
    T["int8_u8in_relu_f32out"] = (i8f)
    i8s = lambda: on.qconv_pointwise(qx, xs, xzp, pw, ws, wzp, b, st, pd, dl, g, os_s8, 0, torch.int8, "none",
                                     [], "")
    if "u8in_zp0_bias_s8out" in results:
        T["int8_u8in_s8out"] = (i8s)
    i8z = lambda: on.qconv_pointwise(qx2, xs2, xzp2, pw2, ws, wzp, b, st, pd, dl, g, os2, 0, None, "relu", [], "")
    T["int8_u8in_zp_nonzero_relu_u8out"] = (i8z)
    impl["int8_u8in_zp_nonzero"] = onednn_impls(i8z)
    if pw_noshape is not None:
        i8n = lambda: on.qconv_pointwise(qx, xs, xzp, pw_noshape, ws, wzp, b, st, pd, dl, g, os_relu, 0, None, "relu",
                                         [], "")
        T["int8_prepack_no_xshape_u8out"] = i8n
        impl["int8_prepack_no_xshape"] = onednn_impls(i8n)
    if f"{name}/binary_sum_u8accum_relu_u8out" not in RESULT["errors"]:
        acc = q_acc.clone()
        bs = lambda: binary("sum", acc, os_sum, None, acs, aczp)
        if attempt(f"{name}/time_binary_sum", bs) is not None:
            T["int8_binary_sum_u8accum_relu_u8out"] = (bs)
            impl["int8_binary_sum"] = onednn_impls(bs)
    xb = dq(q_acc, acs, aczp).contiguous(memory_format=CL)
    fp32b = lambda: torch.ops.mkldnn._convolution_pointwise.binary(xf, xb, pwf, b, pd, st, dl, g, "add", None,
                                                                   "relu", [], "")
    T["fp32_mkldnn_binary_add_relu"] = (fp32b)
    # Conversions a first / last INT8 layer pays.
    T["quantize_f32_to_u8_torch_ops"] = (lambda: q_u8(xf, xs, xzp))
    T["quantize_f32_to_u8_torch_ops_3pass"] = (lambda: q_u8_fast(xf, xs, xzp))
    T["quantize_f32_to_u8_aten_quantize_per_tensor_DEPRECATED"] = (
        lambda: torch.quantize_per_tensor(xf, xs, xzp, torch.quint8).int_repr())
    T["quantize_dynamic_minmax_plus_u8"] = (lambda: q_u8(xf, *u8_params(xf)))
    T["minmax_channels_last_4d_SLOW"] = (lambda: (float(xf.min()), float(xf.max())))
    T["minmax_flat_view"] = (lambda: torch.aminmax(flat(xf)))
    yq = i8()
    T["dequantize_u8_to_f32_out"] = (lambda: dq(yq, os_relu, 0))

    def derived(T):
        T["first_layer_int8_quant+conv_u8out+dequant"] = round(
            T["quantize_f32_to_u8_torch_ops_3pass"] + T["int8_u8in_relu_u8out"] + T["dequantize_u8_to_f32_out"], 4)
        T["first_layer_int8_quant+conv_f32out"] = round(
            T["quantize_f32_to_u8_torch_ops_3pass"] + T["int8_u8in_relu_f32out"], 4)
        T["speedup_int8_u8out_vs_fp32"] = round(T["fp32_mkldnn_prepacked_relu"] / T["int8_u8in_relu_u8out"], 3)
        T["speedup_first_layer_f32out_vs_fp32"] = round(
            T["fp32_mkldnn_prepacked_relu"] / T["first_layer_int8_quant+conv_f32out"], 3)
        T["macs"] = N * OC * H * W * (C // g) * k * k // (s * s)

    TIMERS[f"conv/{name}"] = (T, derived)
    RESULT.setdefault("onednn_impl", {})[f"conv/{name}"] = impl
    print(f"  impl: {impl}")


# ---------------------------------------------------------------- GEMM ------------------------------------------
GEMMS = {"bert_ffn1_128x768x3072": (128, 768, 3072), "bert_proj_1x768x768": (1, 768, 768),
         "bert_proj_128x768x768": (128, 768, 768)}


def gemm_probe(name, shape):
    M, K, N = shape
    print(f"\n[gemm {name}] M{M} K{K} N{N}")
    x = torch.randn(M, K)
    w = torch.randn(N, K) * K ** -0.5
    b = torch.randn(N) * 0.1
    qw, ws, wzp = per_channel_weight(w)
    wd = qw.double() * ws.double()[:, None]
    xs, xzp = u8_params(x)
    qx = q_u8(x, xs, xzp)
    xs8 = s8_scale(x)
    qx8 = q_s8(x, xs8)
    pw = attempt(f"{name}/qlinear_prepack", lambda: on.qlinear_prepack(qw, [M, K]))
    if pw is None:
        return
    ref = F.linear((qx.double() - xzp) * xs, wd, b.double())
    ref8 = F.linear(qx8.double() * xs8, wd, b.double())
    os_lin, ozp_lin = u8_params(ref)
    os_relu, _ = u8_params(ref.relu())
    os_s8 = s8_scale(ref)
    other = torch.randn(M, N)
    ref_add = ref + other.double()

    def ql(qx_, xs_, xzp_, oscale, ozp, odt, post="none", pargs=(), alg="", op=on.qlinear_pointwise):
        return op(qx_, xs_, xzp_, pw, ws, wzp, b, oscale, ozp, odt, post, list(pargs), alg)

    def qlb(kind, oth, unary="none", odt=torch.float32, oscale=1.0):
        return on.qlinear_pointwise.binary(qx, xs, xzp, pw, ws, wzp, oth, b, oscale, 0, odt, 1.0, 0, kind, 1.0,
                                           unary, [], "")

    gelu_ref = F.gelu(ref)
    cases = {
        "u8in_zp_bias_f32out": (lambda: ql(qx, xs, xzp, 1.0, 0, torch.float32), dict(ref=ref, out_scale=os_lin,
                                                                                       quantized=False)),
        "s8in_bias_f32out": (lambda: ql(qx8, xs8, 0, 1.0, 0, torch.float32), dict(ref=ref8, out_scale=os_lin,
                                                                                   quantized=False)),
        "u8in_zp_bias_u8out_zp": (lambda: ql(qx, xs, xzp, os_lin, ozp_lin, None),
                                  dict(ref=ref, out_scale=os_lin, out_zp=ozp_lin)),
        "u8in_zp_bias_relu_u8out": (lambda: ql(qx, xs, xzp, os_relu, 0, None, "relu"),
                                    dict(ref=ref.relu(), out_scale=os_relu)),
        "u8in_zp_bias_s8out": (lambda: ql(qx, xs, xzp, os_s8, 0, torch.int8), dict(ref=ref, out_scale=os_s8,
                                                                                    lo=-128, hi=127)),
        "s8in_bias_s8out": (lambda: ql(qx8, xs8, 0, os_s8, 0, torch.int8), dict(ref=ref8, out_scale=os_s8,
                                                                                 lo=-128, hi=127)),
        "u8in_gelu_erf_f32out": (lambda: ql(qx, xs, xzp, 1.0, 0, torch.float32, "gelu", (), "none"),
                                 dict(ref=gelu_ref, out_scale=os_lin, quantized=False)),
        "u8in_gelu_tanh_f32out": (lambda: ql(qx, xs, xzp, 1.0, 0, torch.float32, "gelu", (), "tanh"),
                                  dict(ref=F.gelu(ref, approximate="tanh"), out_scale=os_lin, quantized=False)),
        "u8in_bf16out": (lambda: ql(qx, xs, xzp, 1.0, 0, torch.bfloat16), dict(ref=ref, out_scale=os_lin,
                                                                                quantized=False)),
        "tensor_overload_f32out": (lambda: ql(qx, torch.tensor(xs), torch.tensor(xzp), 1.0, 0, torch.float32,
                                              op=on.qlinear_pointwise.tensor),
                                   dict(ref=ref, out_scale=os_lin, quantized=False)),
        "binary_add_f32other_f32out": (lambda: qlb("add", other), dict(ref=ref_add, out_scale=os_lin,
                                                                        quantized=False)),
        "binary_sum_f32other_f32out": (lambda: qlb("sum", other.clone()), dict(ref=ref_add, out_scale=os_lin,
                                                                                quantized=False)),
        "binary_add_relu_f32out": (lambda: qlb("add", other, "relu"), dict(ref=ref_add.relu(), out_scale=os_lin,
                                                                            quantized=False)),
        "3d_input_f32out": (lambda: ql(qx.view(1, M, K), xs, xzp, 1.0, 0, torch.float32).view(M, N),
                            dict(ref=ref, out_scale=os_lin, quantized=False)),
    }
    os_add, ozp_add = u8_params(ref_add)
    cases["binary_add_f32other_u8out"] = (lambda: qlb("add", other, "none", None, os_add),
                                          dict(ref=ref_add, out_scale=os_add))
    for tag, (fn, chk) in cases.items():
        y = attempt(f"{name}/{tag}", fn)
        if y is None:
            continue
        r = steps_vs(y, chk.pop("ref"), **chk)
        r["out_dtype"] = str(y.dtype).replace("torch.", "")
        record(f"gemm/{name}/{tag}", r)
    oth = other.clone()
    y = attempt(f"{name}/binary_sum_inplace_check", lambda: qlb("sum", oth))
    if y is not None:
        RESULT["cases"][f"gemm/{name}/binary_sum_other_overwritten"] = not torch.equal(oth, other)
        RESULT["cases"][f"gemm/{name}/binary_sum_returns_other_storage"] = (
            y.untyped_storage().data_ptr() == oth.untyped_storage().data_ptr())
    # torch._int_mm: int8 x int8 -> int32, symmetric s8 activations, dequant + bias by hand.
    qwt = qw.t().contiguous()
    im = attempt(f"{name}/int_mm", lambda: torch._int_mm(qx8, qwt))
    scale_row = (xs8 * ws)
    if im is not None:
        exact = bool(torch.equal(im.long(), qx8.long() @ qwt.long()))
        y = im.float() * scale_row + b
        r = steps_vs(y, ref8, os_lin, quantized=False); r["int32_exact"] = exact
        record(f"gemm/{name}/int_mm_s8_dequant_bias", r)
        imu = attempt(f"{name}/int_mm_u8", lambda: torch._int_mm(qx, qwt))
        if imu is not None:
            RESULT["cases"][f"gemm/{name}/int_mm_u8_input_exact"] = bool(
                torch.equal(imu.long(), qx.long() @ qwt.long()))
            print(f"  int_mm u8 input exact: {RESULT['cases'][f'gemm/{name}/int_mm_u8_input_exact']}")

    # ---- timing
    T, impl = {}, {}
    xf = dq(qx, xs, xzp)
    wt = w.t().contiguous()
    T["fp32_F_linear"] = (lambda: F.linear(xf, w, b))
    T["fp32_addmm_wT"] = (lambda: torch.addmm(b, xf, wt))
    impl["fp32_F_linear"] = onednn_impls(lambda: F.linear(xf, w, b))
    t = lambda: ql(qx, xs, xzp, 1.0, 0, torch.float32)
    T["int8_qlinear_u8in_f32out"] = (t); impl["int8_u8in_f32out"] = onednn_impls(t)
    t = lambda: ql(qx8, xs8, 0, 1.0, 0, torch.float32)
    T["int8_qlinear_s8in_f32out"] = (t); impl["int8_s8in_f32out"] = onednn_impls(t)
    T["int8_qlinear_u8in_u8out"] = (lambda: ql(qx, xs, xzp, os_lin, ozp_lin, None))
    T["int8_qlinear_s8in_s8out"] = (lambda: ql(qx8, xs8, 0, os_s8, 0, torch.int8))
    T["int8_qlinear_u8in_gelu_f32out"] = (lambda: ql(qx, xs, xzp, 1.0, 0, torch.float32, "gelu", (), "none"))
    T["fp32_F_linear+gelu"] = (lambda: F.gelu(F.linear(xf, w, b)))
    T["int8_qlinear_binary_add_f32out"] = (lambda: qlb("add", other))
    impl["int8_binary_add"] = onednn_impls(lambda: qlb("add", other))
    T["fp32_F_linear+add"] = (lambda: F.linear(xf, w, b).add_(other))
    if im is not None:
        T["int_mm_s8_only"] = (lambda: torch._int_mm(qx8, qwt))
        T["int_mm_s8+dequant_bias"] = (lambda: torch._int_mm(qx8, qwt).float().mul_(scale_row).add_(b))
        impl["int_mm"] = onednn_impls(lambda: torch._int_mm(qx8, qwt))
    T["quantize_static_f32_to_u8"] = (lambda: q_u8(xf, xs, xzp))
    T["quantize_static_f32_to_u8_3pass"] = (lambda: q_u8_fast(xf, xs, xzp))
    T["quantize_static_f32_to_s8"] = (lambda: q_s8(xf, xs8))
    T["quantize_dynamic_minmax_plus_u8"] = (lambda: q_u8(xf, *u8_params(xf)))
    T["quantize_dynamic_absmax_plus_s8"] = (lambda: q_s8(xf, s8_scale(xf)))
    yq = ql(qx, xs, xzp, os_lin, ozp_lin, None)
    T["dequantize_u8_to_f32_out"] = (lambda: dq(yq, os_lin, ozp_lin))

    def derived(T):
        T["static_layer_quant_u8+qlinear_f32out"] = round(
            T["quantize_static_f32_to_u8_3pass"] + T["int8_qlinear_u8in_f32out"], 4)
        T["dynamic_layer_quant_u8+qlinear_f32out"] = round(
            T["quantize_dynamic_minmax_plus_u8"] + T["int8_qlinear_u8in_f32out"], 4)
        T["speedup_int8_u8in_f32out_vs_F_linear"] = round(T["fp32_F_linear"] / T["int8_qlinear_u8in_f32out"], 3)
        T["speedup_static_layer_vs_F_linear"] = round(T["fp32_F_linear"] / T["static_layer_quant_u8+qlinear_f32out"],
                                                      3)
        T["macs"] = M * K * N

    TIMERS[f"gemm/{name}"] = (T, derived)
    RESULT.setdefault("onednn_impl", {})[f"gemm/{name}"] = impl
    print(f"  impl: {impl}")


# ---------------------------------------------------------------- main ------------------------------------------
RESULT["machine"] = machine()
RESULT["loadavg_start"] = os.getloadavg()
RESULT["schemas"] = schemas()
RESULT["method"] = (f"per timing: median of {args.reps} timed calls after {args.warmup} warm-up calls, "
                    f"{args.rounds} interleaved rounds over all layers, min of the round medians reported; "
                    f"time.perf_counter per call, torch.set_num_threads({args.threads}), torch.inference_mode; "
                    "errors in output "
                    "quantization steps vs a float64 reference from the same dequantized operands; for fp32/bf16 "
                    "outputs the step is the min-max uint8 scale of the reference output")
print("machine:", RESULT["machine"])
with torch.inference_mode():
    for nm, sh in CONVS.items():
        conv_probe(nm, sh)
    for nm, sh in GEMMS.items():
        gemm_probe(nm, sh)
    # Interleaved rounds over every layer and timing; per timing the smallest round median is kept (the 2 cores
    # may be shared: a transient stall then inflates one round, not the result). All round medians are kept.
    stat0, cpu0 = cpu_ticks(), os.times()
    raw: dict = {layer: {k: [] for k in fns} for layer, (fns, _) in TIMERS.items()}
    for r in range(args.rounds):
        print(f"timing round {r + 1}/{args.rounds}")
        for layer, (fns, _) in TIMERS.items():
            for k, fn in fns.items():
                raw[layer][k].append(bench(fn))
    stat1, cpu1 = cpu_ticks(), os.times()
    for layer, (_fns, derived) in TIMERS.items():
        T = {k: min(v) for k, v in raw[layer].items()}
        derived(T)
        RESULT["timings"][layer] = T
    RESULT["timing_round_medians_ms"] = raw
    hz = os.sysconf("SC_CLK_TCK")
    busy = (stat1[0] - stat0[0]) / hz
    mine = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    RESULT["cpu_contention_during_timing"] = {
        "wall_s": round(stat1[1] - stat0[1], 2), "all_cpus_busy_s": round(busy, 2),
        "this_process_cpu_s": round(mine, 2), "others_cpu_s": round(busy - mine, 2)}
    print("cpu during timing:", RESULT["cpu_contention_during_timing"])

print(f"\n== summary (ms, median; threads={args.threads}; {RESULT['machine'].get('cpu')}; "
      f"torch ISA {RESULT['machine']['torch_cpu_capability']}) ==")
print(f"{'layer':28s} {'fp32':>8s} {'int8 u8->u8':>11s} {'int8 ->f32':>10s} {'quant in':>9s} {'dequant':>8s} "
      f"{'int8 first':>10s} {'x':>6s}")
for key, T in RESULT["timings"].items():
    if key.startswith("conv/"):
        row = (T["fp32_mkldnn_prepacked_relu"], T["int8_u8in_relu_u8out"], T["int8_u8in_relu_f32out"],
               T["quantize_f32_to_u8_torch_ops_3pass"], T["dequantize_u8_to_f32_out"],
               T["first_layer_int8_quant+conv_f32out"], T["speedup_int8_u8out_vs_fp32"])
    else:
        row = (T["fp32_F_linear"], T["int8_qlinear_u8in_u8out"], T["int8_qlinear_u8in_f32out"],
               T["quantize_static_f32_to_u8_3pass"], T["dequantize_u8_to_f32_out"],
               T["static_layer_quant_u8+qlinear_f32out"],
               T["speedup_int8_u8in_f32out_vs_F_linear"])
    print(f"{key:28s} " + " ".join(f"{v:>{wd}.3f}" for v, wd in zip(row, (8, 11, 10, 9, 8, 10, 6))))
for key, T in RESULT["timings"].items():
    if "int_mm_s8_only" in T:
        print(f"{key:28s} _int_mm s8 {T['int_mm_s8_only']:.3f} ms, +dequant/bias {T['int_mm_s8+dequant_bias']:.3f} ms,"
              f" qlinear s8->f32 {T['int8_qlinear_s8in_f32out']:.3f} ms")
if RESULT["errors"]:
    print("\nrefused:")
    for k, v in RESULT["errors"].items():
        print(f"  {k}: {v}")

RESULT["loadavg_end"] = os.getloadavg()
out = Path(args.out or Path(__file__).resolve().parents[1] / "results" /
           f"cpu-int8-onednn-probe-{date.today().isoformat()}.json")
out.write_text(json.dumps(RESULT, indent=1, default=str) + "\n")
print(f"\nwrote {out}")

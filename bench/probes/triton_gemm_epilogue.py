"""Where BERT-base's FFN-in layer loses its time on the H100 (issue 20's fp16 row): cuBLAS's GEMM
alone, cuBLAS then a separate erf GELU, cuBLASLt with its tanh-GELU epilogue, Ember's Triton GEMM
(``libs.triton_gemm``) without an activation, with erf GELU and with tanh GELU in its epilogue,
over tile configurations, and Inductor's own GEMM + GELU (``--compile``) as what a code generator
reaches. Median ms of ``triton.testing.do_bench``; shapes of BERT-base at batch 128, sequence 128.

    python bench/probes/triton_gemm_epilogue.py [--compile] [--out probe.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ember.backends.cuda.libs.triton_conv import TileConfig  # noqa: E402
from ember.backends.cuda.libs.triton_gemm import linear  # noqa: E402
from ember.ops.attrs import Activation  # noqa: E402

CONFIGS = [(128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (128, 128, 64, 8, 3), (256, 128, 64, 8, 3),
           (128, 256, 64, 8, 4), (64, 256, 64, 4, 4), (128, 128, 128, 8, 3), (128, 64, 64, 4, 4),
           (64, 128, 64, 4, 4), (128, 256, 32, 8, 4)]
SHAPES = {"ffn_in": (16384, 768, 3072), "ffn_out": (16384, 3072, 768), "qkv": (16384, 768, 2304)}


def main() -> None:
    import triton

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--compile", action="store_true", help="also Inductor (max-autotune) GEMM + GELU")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows: list[dict[str, object]] = []

    def bench(shape: str, name: str, fn) -> None:  # type: ignore[no-untyped-def]
        try:
            fn()
            ms = float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
        except Exception as e:  # noqa: BLE001  (a probe: record and go on)
            rows.append({"shape": shape, "variant": name, "error": f"{type(e).__name__}: {e}"[:200]})
            print(f"{shape:8s} {name:40s} error {type(e).__name__}: {str(e)[:100]}", flush=True)
            return
        rows.append({"shape": shape, "variant": name, "ms": round(ms, 4)})
        print(f"{shape:8s} {name:40s} {ms:.4f}", flush=True)

    def one_shape(shape: str, m: int, k: int, n: int) -> None:
        x = torch.randn(m, k, device=dev, dtype=torch.float16, generator=g)
        w = torch.randn(n, k, device=dev, dtype=torch.float16, generator=g) / k ** 0.5
        b = torch.randn(n, device=dev, dtype=torch.float16, generator=g)
        out = torch.empty(m, n, device=dev, dtype=torch.float16)
        wt = w.t()
        bench(shape, "cublas addmm", lambda: torch.addmm(b, x, wt, out=out))
        if shape == "ffn_in":
            bench(shape, "cublas addmm + erf gelu (torch)", lambda: F.gelu(torch.addmm(b, x, wt, out=out)))
            bench(shape, "cublas addmm + erf gelu_ in place",
                  lambda: torch.ops.aten.gelu_(torch.addmm(b, x, wt, out=out)))
            bench(shape, "cublasLt tanh-gelu epilogue", lambda: torch._addmm_activation(b, x, wt, use_gelu=True))
        acts = [Activation.NONE] + ([Activation.GELU_ERF, Activation.GELU_TANH] if shape == "ffn_in" else [])
        for act in acts:
            for c in CONFIGS:
                cfg = TileConfig(*c)
                bench(shape, f"triton {act.name.lower()} {'x'.join(map(str, c))}",
                      lambda cfg=cfg, act=act: linear(x, w, b, act=act, config=cfg, out=out))
        if args.compile and shape == "ffn_in":
            import torch._inductor.config as ic

            ic.max_autotune_gemm_backends = "TRITON,ATEN"
            for mode in ("default", "max-autotune-no-cudagraphs"):
                fn = torch.compile(lambda x, w, b: F.gelu(F.linear(x, w, b)), mode=mode, dynamic=False)
                bench(shape, f"inductor {mode} linear+gelu", lambda fn=fn: fn(x, w, b))
                torch._dynamo.reset()

    for shape, (m, k, n) in SHAPES.items():
        one_shape(shape, m, k, n)
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                        "triton": triton.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

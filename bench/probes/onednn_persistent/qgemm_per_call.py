"""Per-call time of one QGemm: ``qlayers``' kernel (``qlinear_pointwise``) against ``onednn_persistent``,
at BERT-base shapes; the two kernels alternate call by call, min and median in µs.

    .venv/bin/python bench/probes/onednn_persistent/qgemm_per_call.py

Numbers: docs/CPU_NATIVE.md, "INT8 GEMMs".
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "backends" / "cpu"))
from test_gemm_persistent import OUT_U8, compile_node, qgemm_graph  # noqa: E402

from ember.ops.attrs import Activation  # noqa: E402

SHAPES = [(1, 16, 16), (128, 768, 768), (128, 768, 3072), (128, 3072, 768), (1024, 768, 768)]


def main() -> None:
    torch.set_num_threads(2)
    for m, k, n in SHAPES:
        for label, kw in (("u8 in, u8 out, relu", dict(act=Activation.RELU, out=OUT_U8)), ("f32 in, f32 out", {})):
            node, graph = qgemm_graph(k, n, x_shape=("b",), **kw)  # type: ignore[arg-type]
            kernels = {t: compile_node(node, graph, t) for t in ("onednn_persistent", "aten")}
            x = torch.randint(0, 256, (m, k), dtype=torch.uint8) if "u8 in" in label else torch.randn(m, k)
            consts = [torch.from_numpy(graph.constants[c]) for c in ("w", "c")]
            times: dict[str, list[float]] = {t: [] for t in kernels}
            with torch.inference_mode():
                for kernel in kernels.values():
                    for _ in range(5):
                        kernel([x, *consts])
                for _ in range(200 if m * k * n < 1e8 else 40):
                    for t, kernel in kernels.items():
                        t0 = time.perf_counter()
                        kernel([x, *consts])
                        times[t].append((time.perf_counter() - t0) * 1e6)
            print(f"{m}x{k}x{n} {label}: " + "  ".join(
                f"{t} min {min(v):.1f} med {statistics.median(v):.1f} us" for t, v in times.items()), flush=True)


if __name__ == "__main__":
    main()

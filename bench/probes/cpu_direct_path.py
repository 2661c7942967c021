"""Probe (issue 19): a one-chain CPU program's direct path (``CPUExecutor.infer_direct``) against
the generic one, with ONNX Runtime as a third, in one process. The two Ember runners are two
contexts of one engine; the generic one has its program's direct path switched off per call.
Blocks of 40 runs after 50 ms gaps, in a shuffled order each round; per-round ratios.

    .venv/bin/python bench/probes/cpu_direct_path.py mobilenet-v3-small 1 [rounds]

Twenty-first session, 2-core EPYC, b1, generic × direct: MobileNetV3-small 1.061x, MobileNetV2
1.006x, EfficientNet-B0 1.010x.
"""
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch  # noqa: E402

import ember  # noqa: E402
from ember import zoo  # noqa: E402
from ember.tools.runners import OrtRunner  # noqa: E402

torch.set_num_threads(2)
m, b = sys.argv[1], int(sys.argv[2])
feeds = zoo.sample_inputs(m, b)
path = str(zoo.export_onnx(m, batch=b))
eng = ember.build(path, ember.BuildConfig(device="cpu"), progress=False)
ca, cb = eng.create_context(), eng.create_context()
pb = cb.executor.program
# the two contexts share one program: switch its direct path per call
direct = ca.executor.program.direct
assert direct is not None
ort = OrtRunner(path, threads=2)


def on():
    ca.executor.program.direct = direct
    return ca.infer(feeds)


def off():
    pb.direct = None
    r = cb.infer(feeds)
    pb.direct = direct
    return r


fns = {"direct": on, "generic": off, "ort": lambda: ort(feeds)}
ts = {k: [] for k in fns}
for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 16):
    order = list(fns.items()); random.shuffle(order)
    for k, f in order:
        time.sleep(0.05)
        for _ in range(5): f()
        block = []
        for _ in range(40):
            t0 = time.perf_counter(); f(); block.append(time.perf_counter() - t0)
        ts[k].append(statistics.median(block) * 1e3)
med = {k: statistics.median(v) for k, v in ts.items()}


def ratio(a, b):
    return statistics.median([x / y for x, y in zip(ts[a], ts[b])])


print(m, b, {k: round(v, 4) for k, v in med.items()}, f"generic/direct {ratio('generic', 'direct'):.3f}",
      f"ORT/direct {ratio('ort', 'direct'):.3f} ORT/generic {ratio('ort', 'generic'):.3f}")

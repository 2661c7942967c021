"""Ember's compiled CPU extension: persistent oneDNN convolution primitives (``persistent_conv.cpp``).

The extension is built at first use, on this machine, by ``torch.utils.cpp_extension.load``
(ninja and the machine's C++ compiler) against a libdnnl installed next to PyTorch, and cached
under ``$XDG_CACHE_HOME/ember/native/<key>`` (``~/.cache/...``), the key being a hash of the
source, the library and the PyTorch / Python versions. PyTorch's own oneDNN is linked into
``libtorch_cpu.so`` with hidden symbols, so a separate libdnnl is needed.

Where the library is looked for: ``$EMBER_ONEDNN_PREFIX`` (a directory with
``include/oneapi/dnnl/dnnl.hpp`` and ``lib/libdnnl.so``), else this interpreter's prefix
(``sys.prefix``), where ``pip install ember[onednn]`` puts the ``onednn-cpu-gomp`` /
``onednn-devel-cpu-gomp`` wheels. Only a GNU-OpenMP build can run in PyTorch's process: it shares
PyTorch's ``libgomp.so.1`` (one thread pool; ``torch.set_num_threads`` sets oneDNN's thread count
too). A SYCL build (the ``onednn`` 2026 wheels) has no plain CPU engine; an Intel-OpenMP or TBB
build adds a second thread pool that fights PyTorch's (bench/probes/onednn_persistent/README.md).

Nothing here raises for a missing piece: ``extension()`` returns ``None`` and
``unavailable_reason()`` says why (no library, no compiler, no ninja, a SYCL / TBB / Intel-OpenMP
build, a header / library version mismatch, a failed compile); the reason is logged once, on the
``ember.backends.cpu.native`` logger. The tactic that uses it (``onednn_persistent``,
``ember.backends.cpu.kernels.conv_persistent``) is then simply not a candidate::

    >>> from ember.backends.cpu import native
    >>> ext = native.extension()          # None where unavailable (built on first call)
    >>> ext is not None or isinstance(native.unavailable_reason(), str)
    True

``EMBER_ONEDNN_PERSISTENT=0`` takes the tactic out of the candidates (``enabled()``) without
touching the extension: for measuring with and without it in one process (``bench/cpu.py``).
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import shutil
import sys
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

SOURCE = Path(__file__).resolve().parent / "persistent_conv.cpp"
PREFIX_ENV = "EMBER_ONEDNN_PREFIX"
SWITCH_ENV = "EMBER_ONEDNN_PERSISTENT"
_RUNTIMES = {0: "none", 1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool", 512: "SYCL"}
_HOW = ("pip install 'ember[onednn]' (onednn-cpu-gomp and onednn-devel-cpu-gomp 2023.2.0) "
        f"or set {PREFIX_ENV} to a GNU-OpenMP oneDNN install")

log = logging.getLogger("ember.backends.cpu.native")


class Unavailable(Exception):
    """Why the extension cannot be built or used here (a sentence a person can act on).
    ``compile_failed``: the library and a compiler were there and the source did not compile (a
    fault of Ember's, not of the machine)."""

    def __init__(self, message: str, compile_failed: bool = False) -> None:
        super().__init__(message)
        self.compile_failed = compile_failed


@dataclass(frozen=True)
class OneDNNConfig:
    """What a oneDNN install's headers declare."""

    prefix: Path
    version: str
    cpu_runtime: str
    threading_runtime: str


#: The extension's names of the tensor types its primitives take (``to_dt`` in the C++ source).
_DTYPE_NAMES = {"torch.float32": "f32", "torch.bfloat16": "bf16", "torch.uint8": "u8", "torch.int8": "s8"}


def dtype_name(dtype: Any) -> Optional[str]:
    """The extension's name of torch dtype ``dtype`` ("f32", "bf16", "u8", "s8"); ``None`` for
    types its primitives do not take."""
    return _DTYPE_NAMES.get(str(dtype))


def enabled() -> bool:
    """Whether the persistent tactic may be a candidate (``EMBER_ONEDNN_PERSISTENT`` is not 0/off)."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def find_prefix() -> Optional[Path]:
    """``$EMBER_ONEDNN_PREFIX`` if set, else ``sys.prefix`` where it holds oneDNN's headers and library."""
    env = os.environ.get(PREFIX_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    here = Path(sys.prefix)
    if (here / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and _library(here) is not None:
        return here
    return None


def _library(prefix: Path) -> Optional[Path]:
    for name in ("lib/libdnnl.so", "lib64/libdnnl.so"):
        if (prefix / name).exists():
            return prefix / name
    return None


def read_config(prefix: Path) -> OneDNNConfig:
    """The version and runtimes ``prefix``'s ``dnnl_config.h`` / ``dnnl_version.h`` declare."""
    inc = prefix / "include" / "oneapi" / "dnnl"
    cfg, ver = inc / "dnnl_config.h", inc / "dnnl_version.h"
    if not cfg.is_file() or not ver.is_file() or not (inc / "dnnl.hpp").is_file():
        raise Unavailable(f"{prefix}: no oneDNN headers (include/oneapi/dnnl/dnnl.hpp, dnnl_config.h); "
                          f"install the development package there (pip install --prefix {prefix} "
                          f"onednn-devel-cpu-gomp==2023.2.0)")
    text = cfg.read_text(errors="replace") + ver.read_text(errors="replace")

    def define(name: str) -> str:
        m = re.search(rf"#define\s+{name}\s+(\S+)", text)
        return m.group(1) if m else ""

    codes = dict(re.findall(r"#define\s+(DNNL_RUNTIME_\w+)\s+(\d+)u?", text))

    def runtime(name: str) -> str:
        value = define(name)
        return _RUNTIMES.get(int(codes.get(value, "-1")), value or "unknown")

    version = ".".join(define(f"DNNL_VERSION_{p}") for p in ("MAJOR", "MINOR", "PATCH"))
    return OneDNNConfig(prefix, version, runtime("DNNL_CPU_RUNTIME"), runtime("DNNL_CPU_THREADING_RUNTIME"))


def check_prefix(prefix: Path) -> tuple[OneDNNConfig, Path]:
    """The install's config and library when this process can use it, else ``Unavailable``."""
    cfg = read_config(prefix)
    if cfg.cpu_runtime == "SYCL":
        raise Unavailable(f"{prefix}: oneDNN {cfg.version} is a SYCL build (threading: {cfg.threading_runtime}); "
                          f"its CPU engine needs a SYCL CPU device. Use a GNU-OpenMP build: {_HOW}")
    if cfg.cpu_runtime != "OpenMP":
        raise Unavailable(f"{prefix}: oneDNN {cfg.version} uses the {cfg.cpu_runtime} CPU runtime, which would "
                          f"run a second thread pool next to PyTorch's OpenMP one. Use a GNU-OpenMP build: {_HOW}")
    lib = _library(prefix)
    if lib is None:
        raise Unavailable(f"{prefix}: no lib/libdnnl.so; install the runtime package there "
                          f"(pip install --prefix {prefix} onednn-cpu-gomp==2023.2.0)")
    intel = _needs_intel_openmp(lib)
    if intel:
        raise Unavailable(f"{lib} links {intel}, a second OpenMP runtime next to PyTorch's libgomp "
                          f"(its threads would contend with PyTorch's). Use a GNU-OpenMP build: {_HOW}")
    return cfg, lib


def _needs_intel_openmp(lib: Path) -> Optional[str]:
    """The Intel / LLVM OpenMP runtime ``lib`` names as a dependency, if any (its dynamic strings)."""
    with open(lib.resolve(), "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for name in (b"libiomp5.so", b"libomp.so"):
            if data.find(name + b"\0") >= 0:
                return name.decode()
    return None


def loaded_openmp() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (libgomp, libiomp5, libomp)."""
    seen: list[str] = []
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return seen
    for line in maps.splitlines():
        path = line.split()[-1] if "/" in line else ""
        base = os.path.basename(path)
        if base.startswith(("libgomp", "libiomp5", "libomp.")) and path not in seen:
            seen.append(path)
    return seen


#: A wheel's private copy of an OpenMP runtime, renamed by auditwheel (``libgomp-e985bcbb.so.1.0.0``,
#: scikit-learn's): its soname is its own and its package's extension loads it RTLD_LOCAL, so no
#: other library's ``GOMP_*`` symbols can bind to it.
_VENDORED = re.compile(r"^lib(gomp|iomp5|omp)-[0-9a-f]{8}\.so")


def shared_openmp(paths: list[str]) -> list[str]:
    """The OpenMP runtimes among ``paths`` that other libraries may bind to: all but wheels' private,
    renamed copies. More than one of these, and libdnnl's OpenMP calls may not reach PyTorch's pool.
    (Loading sentence-transformers maps scikit-learn's private libgomp; that must not turn the
    extension off.)"""
    return [p for p in paths if not _VENDORED.match(os.path.basename(p))]


def compiler() -> Optional[str]:
    """The C++ compiler ``torch.utils.cpp_extension`` would use (``$CXX``, else ``c++``), if present."""
    return shutil.which(os.environ.get("CXX", "c++"))


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ember" / "native"


#: -O3: ``quantize_nhwc``'s loop vectorized (GCC 12's -O2 leaves it scalar: 200 against 88 us for
#: a 224x224 image); no fused multiply-add, so that it rounds as PyTorch's mul then add do
#: -fopenmp: ``at::parallel_for`` in the extension (``quantize_nhwc``) runs on OpenMP threads only
#: when the code is compiled with it (without it the pragma is dropped and the loop runs on one
#: thread: 341 against 166 us for a batch-8 224x224 image, 2 threads); the library it links,
#: libgomp.so.1, is the one PyTorch has already loaded (one thread pool).
#: No -std: ``cpp_extension`` passes the C++ standard the installed PyTorch's headers need (C++17
#: up to 2.13, C++20 from 2.14: a fixed -std=c++17 after it made the build fail there).
CFLAGS = ("-O3", "-ffp-contract=off", "-fopenmp")


def _key(lib: Path) -> str:
    import torch

    st = lib.resolve().stat()
    parts = [SOURCE.read_bytes(), str(lib.resolve()).encode(), f"{st.st_size}:{st.st_mtime_ns}".encode(),
             torch.__version__.encode(), sys.version.encode(), str(sysconfig.get_platform()).encode(),
             " ".join(CFLAGS).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def build(prefix: Path, verbose: bool = False) -> ModuleType:
    """Compiles (once per key, cached) and loads the extension for the oneDNN under ``prefix``;
    ``Unavailable`` with the reason where it cannot."""
    from torch.utils import cpp_extension

    prefix = prefix.resolve()
    cfg, lib = check_prefix(prefix)
    if compiler() is None:
        raise Unavailable(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH: install g++ "
                          f"(apt-get install g++) to build the extension")
    if not cpp_extension.is_ninja_available():
        raise Unavailable("ninja is not on PATH: pip install ninja (it builds the extension)")
    key = _key(lib)
    name = f"ember_onednn_conv_{key}"
    loaded = sys.modules.get(name)
    if loaded is not None:  # built and loaded by an earlier call (a module cannot be loaded twice)
        return loaded
    build_dir = cache_root() / key
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise Unavailable(f"cannot create the extension's cache folder {build_dir} ({e}); set XDG_CACHE_HOME "
                          f"to a writable folder") from e
    if not any(build_dir.glob("*.so")):
        log.info("compiling Ember's oneDNN extension against oneDNN %s in %s (once; cached in %s)",
                 cfg.version, prefix, build_dir)
    lib_dir = str(lib.parent)
    try:
        mod = cpp_extension.load(
            name=name, sources=[str(SOURCE)], build_directory=str(build_dir),
            extra_include_paths=[str(prefix / "include")],  # -I: before torch's bundled oneDNN headers
            extra_cflags=list(CFLAGS),
            extra_ldflags=[f"-L{lib_dir}", "-ldnnl", "-fopenmp", f"-Wl,-rpath,{lib_dir}"], verbose=verbose)
    except (RuntimeError, OSError, ImportError) as e:
        last = str(e).strip().splitlines()[-1:] or [type(e).__name__]
        raise Unavailable(f"compiling {SOURCE.name} against oneDNN {cfg.version} in {prefix} failed "
                          f"({last[0]}); build log under {build_dir}", compile_failed=True) from e
    got: dict[str, Any] = mod.version()
    built = f"{got['major']}.{got['minor']}.{got['patch']}"
    if got["header_version"] != built:
        raise Unavailable(f"the extension was compiled against oneDNN {got['header_version']} headers but "
                          f"loaded libdnnl {built}: remove {build_dir} to rebuild it")
    omp = shared_openmp(loaded_openmp())
    if len(omp) > 1:
        raise Unavailable(f"more than one OpenMP runtime is loaded in this process ({', '.join(omp)}); "
                          f"the extension shares PyTorch's libgomp only")
    try:
        mod.engine_ok()
    except RuntimeError as e:
        raise Unavailable(f"oneDNN {built} in {prefix} cannot create a CPU engine: {e}") from e
    return mod


_lock = threading.Lock()
_state: dict[str, Any] = {}


def extension() -> Optional[ModuleType]:
    """The loaded extension (built on first call), or ``None`` where it is unavailable (the
    reason, logged once, is ``unavailable_reason()``)."""
    if "module" in _state:
        return _state["module"]  # type: ignore[no-any-return]
    with _lock:
        if "module" not in _state:
            mod, reason, compile_failed = None, None, False
            prefix = find_prefix()
            if prefix is None:
                reason = f"no oneDNN library found (neither ${PREFIX_ENV} nor {sys.prefix} has one): {_HOW}"
            else:
                try:
                    mod = build(prefix)
                except Unavailable as e:
                    reason, compile_failed = str(e), e.compile_failed
                except Exception as e:  # noqa: BLE001 - an optional tactic never breaks a build
                    reason = f"unexpected {type(e).__name__} while loading the extension from {prefix}: {e}"
            if reason is not None:
                (log.info if prefix is None else log.warning)(
                    "CPU tactic onednn_persistent is not a candidate: %s", reason)
            else:
                log.info("CPU tactic onednn_persistent: oneDNN %s from %s", version_of(mod), prefix)
            _state["reason"] = reason
            _state["compile_failed"] = compile_failed
            _state["module"] = mod
    return _state["module"]  # type: ignore[no-any-return]


def compile_failed() -> bool:
    """Whether the extension is unavailable because its source failed to compile here (library
    and compiler present): the test suite fails on it instead of skipping the extension's tests."""
    return bool(_state.get("compile_failed"))


def unavailable_reason() -> Optional[str]:
    """Why ``extension()`` is ``None`` (``None`` when it is available); builds on first call."""
    extension()
    return _state.get("reason")


def version_of(mod: Optional[ModuleType]) -> str:
    if mod is None:
        return ""
    v = mod.version()
    return f"{v['major']}.{v['minor']}.{v['patch']}"


def reset() -> None:
    """Forgets the outcome of ``extension()`` so the next call looks again (tests)."""
    with _lock:
        _state.clear()


def eltwise(act: Any, params: Any) -> tuple[str, float, float]:
    """The extension's fused activation (``Layer``'s and ``HeadLayer``'s ``activation, alpha, beta``)
    computing ONNX activation ``act`` (an ``ember.ops.attrs.Activation``) with ``params``, or
    ``("none", 0, 0)`` where the extension fuses none (the caller applies it after the call)."""
    from ember.ops.attrs import Activation, activation_params

    p = [float(v) for v in activation_params(act, params)]
    if act is Activation.RELU:
        return "relu", 0.0, 0.0
    if act is Activation.CLIP:
        return "clip", p[0], p[1]
    if act is Activation.LEAKY_RELU:
        return "leaky_relu", p[0], 0.0
    if act is Activation.HARD_SIGMOID:
        return "hardsigmoid", p[0], p[1]
    if act is Activation.HARD_SWISH:  # ONNX HardSwish: x * max(0, min(1, x / 6 + 0.5))
        return "hardswish", 1.0 / 6.0, 0.5
    if act is Activation.SIGMOID:
        return "sigmoid", 0.0, 0.0
    if act is Activation.SILU:  # x * sigmoid(x): EfficientNet's activation
        return "silu", 0.0, 0.0
    if act is Activation.TANH:
        return "tanh", 0.0, 0.0
    return "none", 0.0, 0.0


__all__ = ["OneDNNConfig", "PREFIX_ENV", "SWITCH_ENV", "Unavailable", "build", "check_prefix", "compiler", "eltwise",
           "compile_failed", "dtype_name", "enabled", "extension", "find_prefix", "loaded_openmp", "read_config",
           "reset", "shared_openmp", "unavailable_reason"]

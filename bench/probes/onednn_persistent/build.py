"""Builds (once, cached) and loads the persistent-primitive extension ``persistent_conv.cpp``.

    python bench/probes/onednn_persistent/build.py --prefix /tmp/onednn-gomp   # build + print what it linked

The extension is compiled with the machine's C++ compiler by ``torch.utils.cpp_extension.load``
(ninja) against a libdnnl installed outside PyTorch: PyTorch's own oneDNN is linked into
``libtorch_cpu.so`` with hidden symbols, so nothing can call it but PyTorch's operators.

``prefix`` is a directory with ``include/oneapi/dnnl/dnnl.hpp`` and ``lib/libdnnl.so`` (a ``pip
install --prefix`` of a oneDNN wheel, or a conda / system install). Before compiling, its
``dnnl_config.h`` is read: a SYCL CPU runtime (the ``onednn`` 2026.x wheels) has no plain CPU
engine and is refused; an OpenMP build is accepted only for GNU OpenMP, which is the runtime
PyTorch's Linux wheels bundle (``torch/lib/libgomp.so.1``): one ``libgomp.so.1`` is then loaded
and shared, so ``torch.set_num_threads`` sets oneDNN's thread count too (checked after loading).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "persistent_conv.cpp"
RUNTIMES = {0: "none", 1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool", 512: "SYCL"}


class OneDNNUnavailable(RuntimeError):
    """No usable libdnnl under the prefix, or it cannot share this process's threading runtime."""


def default_prefix() -> Optional[Path]:
    """``$EMBER_ONEDNN_PREFIX``, else the prefix of this interpreter if it holds a libdnnl."""
    env = os.environ.get("EMBER_ONEDNN_PREFIX")
    if env:
        return Path(env)
    here = Path(sys.prefix)
    return here if (here / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() else None


def config_of(prefix: Path) -> dict[str, Any]:
    """Version and runtimes the headers under ``prefix`` declare."""
    inc = prefix / "include" / "oneapi" / "dnnl"
    cfg, ver = inc / "dnnl_config.h", inc / "dnnl_version.h"
    if not cfg.is_file() or not ver.is_file():
        raise OneDNNUnavailable(f"{prefix}: no include/oneapi/dnnl/dnnl_config.h; install a oneDNN development "
                                f"package there (e.g. pip install --prefix {prefix} onednn-devel-cpu-gomp)")
    text = cfg.read_text() + ver.read_text()

    def define(name: str) -> str:
        m = re.search(rf"#define\s+{name}\s+(\S+)", text)
        return m.group(1) if m else ""

    codes = {k: v for k, v in re.findall(r"#define\s+(DNNL_RUNTIME_\w+)\s+(\d+)u", text)}
    cpu = define("DNNL_CPU_RUNTIME")
    threading = define("DNNL_CPU_THREADING_RUNTIME")
    return {"version": ".".join(define(f"DNNL_VERSION_{p}") for p in ("MAJOR", "MINOR", "PATCH")),
            "cpu_runtime": RUNTIMES.get(int(codes.get(cpu, "0")), cpu),
            "cpu_threading_runtime": RUNTIMES.get(int(codes.get(threading, "0")), threading),
            "gpu_runtime": define("DNNL_GPU_RUNTIME")}


def _check_prefix(prefix: Path) -> dict[str, Any]:
    cfg = config_of(prefix)
    if cfg["cpu_runtime"] == "SYCL":
        raise OneDNNUnavailable(
            f"{prefix}: oneDNN {cfg['version']} is built with the SYCL CPU runtime (threading: "
            f"{cfg['cpu_threading_runtime']}); its CPU engine needs a SYCL CPU device, which its wheel's "
            f"dependencies do not provide here. Use an OpenMP (GNU) build such as onednn-cpu-gomp")
    lib = prefix / "lib" / "libdnnl.so"
    if not lib.exists():
        raise OneDNNUnavailable(f"{prefix}: no lib/libdnnl.so")
    return cfg


def load(prefix: Optional[Path] = None, verbose: bool = False) -> ModuleType:
    """The compiled extension for the libdnnl under ``prefix`` (built on first use)."""
    from torch.utils import cpp_extension

    prefix = Path(prefix) if prefix is not None else default_prefix()
    if prefix is None:
        raise OneDNNUnavailable("no oneDNN prefix: pass --prefix or set EMBER_ONEDNN_PREFIX")
    prefix = prefix.resolve()
    cfg = _check_prefix(prefix)
    key = hashlib.sha256(SOURCE.read_bytes() + str(prefix).encode()).hexdigest()[:12]
    build_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ember-onednn-probe" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    lib_dir = str(prefix / "lib")
    mod = cpp_extension.load(
        name=f"persistent_conv_{key}", sources=[str(SOURCE)], build_directory=str(build_dir),
        extra_include_paths=[str(prefix / "include")],  # -I: searched before torch's bundled oneDNN headers
        extra_cflags=["-O2", "-std=c++17"],
        extra_ldflags=[f"-L{lib_dir}", "-ldnnl", f"-Wl,-rpath,{lib_dir}"], verbose=verbose)
    got = mod.version()
    built = f"{got['major']}.{got['minor']}.{got['patch']}"
    if got["header_version"] != built:
        raise OneDNNUnavailable(f"extension compiled against oneDNN {got['header_version']} headers but loaded "
                                f"libdnnl {built}: rebuild (clear {build_dir})")
    if cfg["cpu_threading_runtime"] == "OpenMP":
        gomps = loaded_openmp()
        if len(gomps) != 1:
            raise OneDNNUnavailable(f"more than one OpenMP runtime in this process: {gomps}")
    return mod


def loaded_openmp() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (libgomp, libiomp5, libomp)."""
    names = ("libgomp", "libiomp5", "libomp.")
    seen = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1] if "/" in line else ""
        if any(n in os.path.basename(path) for n in names) and path not in seen:
            seen.append(path)
    return seen


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", type=Path, default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    import torch

    prefix = args.prefix or default_prefix()
    if prefix is not None:
        print("headers:", config_of(prefix))
    mod = load(prefix, args.verbose)
    print("libdnnl:", mod.version())
    print("OpenMP runtimes mapped:", loaded_openmp())
    print("torch:", torch.__version__, "threads", torch.get_num_threads())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

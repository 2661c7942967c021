"""Device fingerprints: what an engine was built on, and whether this machine can run it."""
from __future__ import annotations

import functools
import platform
import warnings
from typing import Any, Mapping

import torch

from ember.errors import DeviceError


@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fingerprint(device: str) -> dict[str, Any]:
    """What identifies the device an engine is built for.

    cpu: the CPU model, architecture and the ISA level PyTorch dispatches to (e.g. ``AVX512``);
    cuda: the GPU name, compute capability and CUDA version.
    """
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("a CUDA build needs an NVIDIA GPU, and this machine has none (or "
                              "PyTorch was installed without CUDA); build with --device cpu")
        major, minor = torch.cuda.get_device_capability()
        return {"type": "cuda", "gpu": torch.cuda.get_device_name(),
                "capability": f"{major}.{minor}", "cuda": torch.version.cuda or ""}
    return {"type": "cpu", "cpu": _cpu_model(), "arch": platform.machine(),
            "isa": torch.backends.cpu.get_cpu_capability()}


def device_key(fp: Mapping[str, Any]) -> str:
    """One line naming the device, used to key timing caches and in messages."""
    if fp.get("type") == "cuda":
        return f"cuda:{fp.get('gpu')}:sm{fp.get('capability')}:cuda{fp.get('cuda')}"
    return f"cpu:{fp.get('cpu')}:{fp.get('arch')}:{fp.get('isa')}"


def describe(fp: Mapping[str, Any]) -> str:
    if fp.get("type") == "cuda":
        return f"CUDA ({fp.get('gpu')}, compute capability {fp.get('capability')})"
    return f"CPU ({fp.get('cpu')})"


def check_compatible(fp: Mapping[str, Any], where: str) -> None:
    """Raises ``DeviceError`` if this machine cannot run an engine built for ``fp``.

    A CUDA engine needs a GPU; one built on another GPU model still runs (its kernels are
    PyTorch/Triton code compiled at load) but its tactics were timed elsewhere, so we warn.
    A CPU engine runs on any CPU (weights are prepacked at load); another ISA draws a warning.
    """
    kind = fp.get("type")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{where} was built for {describe(fp)} but this machine has no GPU; "
                              f"rebuild it with --device cpu")
        here = fingerprint("cuda")
        if (here["gpu"], here["capability"]) != (fp.get("gpu"), fp.get("capability")):
            warnings.warn(f"{where} was built on {describe(fp)} and runs here on {describe(here)}; "
                          f"its tactics were timed on the other GPU, rebuild it here for best speed",
                          stacklevel=3)
    elif kind == "cpu":
        here = fingerprint("cpu")
        if (here["arch"], here["isa"]) != (fp.get("arch"), fp.get("isa")):
            warnings.warn(f"{where} was built on a {fp.get('arch')} CPU with {fp.get('isa')} and runs "
                          f"here on {here['arch']} with {here['isa']}; rebuild it here for best speed", stacklevel=3)
    else:
        raise DeviceError(f"{where} is for an unknown device type {kind!r}; rebuild it with `ember build`")

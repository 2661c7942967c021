"""The CUDA backend as a whole (CPU-only): it implements the entire ``Backend`` contract, its
timer carries the plan's records and the build's configuration, every module imports without a
GPU, and the package's roles (kernels, libs, exec) import each other in one direction."""
from __future__ import annotations

import ast
import importlib.util
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ember.backends.cuda as cuda_pkg
from ember.backends.base import Backend, Executor, Program
from ember.backends.cuda import CUDABackend
from ember.backends.cuda.exec.executor import CudaExecutor
from ember.backends.cuda.exec.program import CudaProgram
from ember.backends.cuda.tuning import CudaTacticTimer
from ember.plan.config import BuildConfig
from ember.plan.records import Records

PKG = Path(cuda_pkg.__file__).parent
REPO = PKG.parents[2]


def _abstract_methods(cls: type) -> set[str]:
    return {name for name, member in vars(cls).items() if getattr(member, "__isabstractmethod__", False)}


@pytest.mark.parametrize("impl,contract", [(CUDABackend, Backend), (CudaProgram, Program),
                                           (CudaExecutor, Executor)])
def test_every_abstract_method_of_the_contract_is_implemented(impl, contract):
    assert issubclass(impl, contract)
    assert not inspect.isabstract(impl), impl.__abstractmethods__
    for name in _abstract_methods(contract):
        # implemented by the CUDA class itself, not inherited as the abstract stub
        assert not getattr(getattr(impl, name), "__isabstractmethod__", False), name


def test_the_backend_instantiates_and_names_its_device():
    backend = CUDABackend()
    assert isinstance(backend, Backend) and backend.name == "cuda"


@pytest.mark.parametrize("arena", [True, False])
def test_make_timer_builds_a_cuda_timer_carrying_records_and_config(arena):
    records, config = Records(), BuildConfig(device="cuda", cuda_arena=arena)
    timer = CUDABackend().make_timer({}, torch.device("cpu"), records, config)
    assert isinstance(timer, CudaTacticTimer)
    assert timer.records is records and timer.config is config
    assert timer.arena is arena  # timed against the arena only where the engine will use one


def test_the_backend_is_importable_from_the_package_root():
    from ember.backends.devices import get_backend
    from ember.plan.config import Device

    assert isinstance(get_backend(Device.CUDA), CUDABackend)


# ---- importing without a GPU ------------------------------------------------------------------
def _modules() -> list[str]:
    names = [cuda_pkg.__name__]
    for info in pkgutil.walk_packages([str(PKG)], prefix=cuda_pkg.__name__ + "."):
        names.append(info.name)
    return sorted(names)


def test_every_module_imports_without_touching_cuda():
    """In a fresh process with no visible GPU: importing every module of the package (and loading
    the kernel families) neither fails nor initializes CUDA. ``libs.triton_jit`` is the one module
    that needs Triton itself; it is left out where Triton is not installed."""
    modules = [m for m in _modules()
               if not (m.endswith(".triton_jit") and importlib.util.find_spec("triton") is None)]
    assert f"{cuda_pkg.__name__}.exec.program" in modules
    code = ("import importlib, sys, torch\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "from ember.backends.cuda.kernels import load_kernels\n"
            "load_kernels()\n"
            "assert not torch.cuda.is_initialized(), 'importing initialized CUDA'\n")
    env = {"CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ---- roles: kernels -> libs; exec -> nothing of kernels, libs or tuning; tuning -> exec ---------
#: role (a subpackage or top-level module of ember.backends.cuda) -> roles it must not import
FORBIDDEN = {
    "libs": {"kernels", "exec"},
    "kernels": {"exec", "tuning"},
    "exec": {"kernels", "libs", "tuning"},
}


def _role(module: str) -> str:
    rest = module[len(cuda_pkg.__name__) + 1:] if module.startswith(cuda_pkg.__name__ + ".") else ""
    return rest.split(".")[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of the file, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return found


def test_roles_import_each_other_in_one_direction():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        role = path.relative_to(PKG).parts[0].removesuffix(".py")
        for line, module in _imports(path):
            if _role(module) in FORBIDDEN.get(role, ()):
                bad.append(f"{path.relative_to(REPO)}:{line} ({role}) imports {module}")
    assert not bad, bad

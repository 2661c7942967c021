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
from ember.plan.config import BuildConfig, Precision
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


# --- the generic kernel as the CUDA tactics' last resort ------------------------------------------

def _conv_runtime_weight() -> tuple:
    """A Conv whose weight is a graph input (computed at run time), as ONNX's backend cases and
    some exporters give it: every CUDA convolution kernel needs a constant weight."""
    from ember.ir import DType, Graph, Node, OpType, TensorType
    from ember.ops.attrs import ConvAttrs

    types = {"x": TensorType(DType.FLOAT32, (1, 3, 6, 6)), "w": TensorType(DType.FLOAT32, (4, 3, 3, 3)),
             "y": TensorType(DType.FLOAT32, (1, 4, 6, 6))}
    node = Node("c", OpType.CONV, ("x", "w"), ("y",), ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1))
    return Graph("t", [node], ["x", "w"], ["y"], types, {}), node


def _pool(op_name: str, dtype_name: str, dilations=(1, 1), indices: bool = False) -> tuple:
    from ember.ir import DType, Graph, Node, OpType, TensorType
    from ember.ops.attrs import PoolAttrs

    dt = DType[dtype_name]
    outs = ("y", "i") if indices else ("y",)
    types = {"x": TensorType(dt, (1, 2, 6, 6)), "y": TensorType(dt, (1, 2, 4, 4)),
             "i": TensorType(DType.INT64, (1, 2, 4, 4))}
    node = Node("p", OpType[op_name], ("x",), outs, PoolAttrs((3, 3) if dilations == (1, 1) else (2, 2),
                                                              (1, 1), (0, 0, 0, 0), dilations))
    return Graph("t", [node], ["x"], list(outs), types, {}), node


def _ctx(graph, tactic: str):
    from ember.backends.base import CompileContext

    return CompileContext(graph, {}, torch.device("cpu"), tactic, Precision.FP32, Records(),
                          BuildConfig(device="cuda"))


def test_ops_with_cuda_kernels_end_their_tactics_with_the_generic_kernel():
    from ember.backends.cuda.registry import GENERIC

    graph, node = _conv_runtime_weight()
    names = CUDABackend().tactics(node, graph)
    assert names[0] == "cudnn" and names[-1] == GENERIC and names.count(GENERIC) == 1


def test_int8_layers_keep_their_own_fallback_last():
    from ember.backends.cuda.registry import GENERIC, cuda_candidates
    from ember.ir import Node, OpType

    node = Node("q", OpType.QGEMM, ("x",), ("y",), None)
    assert GENERIC not in CUDABackend().tactics(node, None)
    assert CUDABackend().tactics(node, None) == cuda_candidates(node, None)


def test_a_runtime_weight_is_refused_by_cudnn_and_computed_by_the_generic_kernel():
    from ember.errors import BuildError

    graph, node = _conv_runtime_weight()
    backend = CUDABackend()
    with pytest.raises(BuildError, match="constant weight"):
        backend.compile_node(node, _ctx(graph, "cudnn"))
    kernel = backend.compile_node(node, _ctx(graph, "generic"))
    x, w = torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(kernel([x, w])[0], torch.nn.functional.conv2d(x, w, padding=1))


def test_the_tuner_falls_back_to_the_generic_kernel_where_every_cuda_kernel_refuses():
    """The tactic selector with a timer that compiles and runs each candidate (on CPU tensors
    here): the CUDA convolutions refuse the run-time weight (inf), the generic kernel runs."""
    from ember.backends.timing import wall_clock_timer
    from ember.builder.tactics import TacticSelector

    graph, node = _conv_runtime_weight()
    backend = CUDABackend()
    timer = wall_clock_timer(backend, {}, torch.device("cpu"), Records(), BuildConfig(device="cuda"),
                             warmup=0, reps=1)
    choice = TacticSelector(timer).select(node, graph, backend.tactics(node, graph), Precision.FP32,
                                          backend.fallback_tactics)
    assert choice.tactic == "generic"
    assert all(t == float("inf") for name, t in choice.timings.items() if name != "generic")


@pytest.mark.parametrize("case", ["uint8_max", "int8_max", "max_with_indices", "dilated_average"])
def test_pooling_forms_the_cuda_kernels_do_not_compute_go_to_the_generic_kernel(case):
    """torch's CUDA pooling would return float for 8-bit input, has no Indices output here and no
    dilated average pooling: those forms have no CUDA candidate, so the generic kernel runs them
    (in their own dtype)."""
    op, dtype, dil, idx = {"uint8_max": ("MAX_POOL", "UINT8", (1, 1), False),
                           "int8_max": ("MAX_POOL", "INT8", (1, 1), False),
                           "max_with_indices": ("MAX_POOL", "FLOAT32", (1, 1), True),
                           "dilated_average": ("AVERAGE_POOL", "FLOAT32", (2, 2), False)}[case]
    graph, node = _pool(op, dtype, dil, idx)
    backend = CUDABackend()
    assert backend.tactics(node, graph) == ["aten"]
    kernel = backend.compile_node(node, _ctx(graph, ""))
    if dtype == "FLOAT32":
        x = torch.randn(1, 2, 6, 6)
    else:
        x = torch.randint(0, 100, (1, 2, 6, 6)).to(getattr(torch, dtype.lower()))
    outs = kernel([x])
    assert outs[0].dtype == x.dtype and tuple(outs[0].shape) == (1, 2, 4, 4)
    if op == "MAX_POOL":
        want = torch.nn.functional.max_pool2d(x.float(), 3, 1).to(x.dtype)
    else:
        want = torch.stack([x[..., i:i + 3:2, j:j + 3:2].mean(dim=(-2, -1)) for i in range(4) for j in range(4)],
                           dim=-1).reshape(1, 2, 4, 4)
    torch.testing.assert_close(outs[0], want)


def test_float_pooling_keeps_its_cuda_kernels():
    graph, node = _pool("MAX_POOL", "FLOAT32")
    names = CUDABackend().tactics(node, graph)
    assert names[0] == "aten" and names[-1] == "generic"


def test_the_generic_kernel_takes_host_bounds_exact_bits_and_8_bit_floats():
    """What ONNX's backend cases found on the H100 in the generic kernels: Clip's bounds read on
    the host (a CUDA host slot) beside data on the device; BitCast's float64 input cast to the
    layer's float32 before its bits were read; inputs of the 8-bit float types, which
    ``torch.from_numpy`` refuses. The ``meta`` device stands in for the GPU."""
    import ml_dtypes
    import numpy as np

    from ember.backends.base import CompileContext
    from ember.backends.cuda.device import host_tensor
    from ember.ir import DType, OpType, TensorType
    from ember.ops.attrs import CastAttrs, ClipAttrs

    from cuda_graphs import one_node

    meta = torch.device("meta")
    clip = one_node(OpType.CLIP, ClipAttrs(), [("x", (2, 3)), ("lo", (1,)), ("hi", (1,))])
    kernel = CUDABackend().compile_node(clip.nodes[0], CompileContext(clip, {}, meta, "aten", "fp32"))
    out = kernel([torch.empty(2, 3, device=meta), torch.tensor([-1.0]), torch.tensor([1.0])])[0]
    assert out.device == meta and tuple(out.shape) == (2, 3)
    from ember.backends.cpu.kernels.activation import _bound

    # CUDA's clamp takes no host tensor beside device data (meta does): the bound becomes a number
    assert _bound(None, torch.tensor([-1.0]), torch.empty(2, device=meta)) == -1.0
    assert isinstance(_bound(None, torch.tensor([-1.0]), torch.empty(2)), torch.Tensor)

    cast = one_node(OpType.BIT_CAST, CastAttrs(to=DType.INT64), [("x", TensorType(DType.FLOAT64, (3,)))])
    kernel = CUDABackend().compile_node(cast.nodes[0], CompileContext(cast, {}, torch.device("cpu"), "aten", "fp32"))
    x = torch.tensor([1.5, -2.0, float("nan")], dtype=torch.float64)
    assert torch.equal(kernel([x])[0], x.view(torch.int64))

    f8 = np.array([0.5, -448.0, 3.0], dtype=ml_dtypes.float8_e4m3fn)
    t = host_tensor(f8)
    assert t.dtype == torch.float8_e4m3fn and t.view(torch.uint8).tolist() == f8.view(np.uint8).tolist()
    assert host_tensor(np.float32(2.0)).dim() == 0


def test_8_bit_max_pooling_off_the_cpu_pools_in_float():
    """PyTorch's CUDA max pooling takes floats only: 8- and 16-bit integers pool in float32 there
    (exact), on the CPU in their own type."""
    from ember.backends.cpu.kernels.pool import max_pool
    from ember.ops.attrs import PoolAttrs

    a = PoolAttrs(kernel_shape=(3, 3), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1))
    x = torch.randint(0, 255, (1, 2, 6, 6), dtype=torch.uint8)
    want = torch.nn.functional.max_pool2d(x.float(), 3, 1).to(torch.uint8)
    assert torch.equal(max_pool(x, a), want)
    y = max_pool(x.to("meta"), a)
    assert y.device.type == "meta" and y.dtype == torch.uint8 and tuple(y.shape) == (1, 2, 4, 4)


def test_int8_layers_time_their_float_fallback_only_when_every_int8_kernel_fails():
    """``dequantized_fp32`` (dequantize, float32, requantize) is a fallback of the CUDA backend:
    the tuner times it only where every INT8 tactic of the layer failed, so an INT8 build does not
    spend ~0.4 s a ResNet-50 layer (batch 256, H100) timing a tactic that never won there."""
    from ember.backends.cuda.registry import DEQUANTIZED
    from ember.builder.tactics import TacticSelector

    assert DEQUANTIZED in CUDABackend.fallback_tactics
    timed: list[str] = []

    def timer(int8_ms: float):
        def run(node, graph, tactic, precision):
            timed.append(tactic)
            return 3.0 if tactic == DEQUANTIZED else int8_ms
        return run

    candidates = ["triton_int8_128x128x64", "cudnn_int8", DEQUANTIZED]
    node, graph = object(), object()
    choice = TacticSelector(timer(1.0)).select(node, graph, candidates, Precision.INT8, CUDABackend.fallback_tactics)
    assert choice.tactic == "triton_int8_128x128x64" and DEQUANTIZED not in timed
    timed.clear()
    choice = TacticSelector(timer(float("inf"))).select(node, graph, candidates, Precision.INT8,
                                                        CUDABackend.fallback_tactics)
    assert choice.tactic == DEQUANTIZED and timed[-1] == DEQUANTIZED

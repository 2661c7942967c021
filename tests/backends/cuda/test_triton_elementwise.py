"""FusedElementwise on CUDA: the generated Triton kernel against torch, and through an engine.

The code generator itself needs no GPU (which steps have a Triton form, how dims are merged, the
kernel source), so those tests run everywhere; kernels run on the GPU only (``-m cuda``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ember.backends.base import CompileContext
from ember.backends.cuda.libs import triton_elementwise as te
from ember.ir import DType, Node, OpType, TensorType
from ember.ops.attrs import CastAttrs, ClipAttrs, FusedElementwiseAttrs, GeluAttrs
from ember.ops.attrs import FusedStep as S

F32 = DType.FLOAT32


def fused(steps, n_inputs):
    return Node("fused", OpType.FUSED_ELEMENTWISE, tuple(f"i{k}" for k in range(n_inputs)), ("y",),
                FusedElementwiseAttrs(tuple(steps)))


def types(*specs):
    return [TensorType(d, tuple(s)) for s, d in specs]


# ---- code generation (no GPU) -----------------------------------------------------------------
def test_program_types_each_step():
    node = fused([S(OpType.CAST, (0,), CastAttrs("float32")), S(OpType.SUB, (2, 1)),
                  S(OpType.GREATER, (3, 1)), S(OpType.WHERE, (4, 3, 1))], 2)
    prog = te.elementwise_program(node, types(((2, 6), DType.INT64), ((), F32)))
    assert prog.in_kinds == ("i64", "f") and prog.out_kind == "f"
    assert prog.body[0] == "v2 = v0.to(tl.float32)"
    assert prog.body[2] == "v4 = v3 > v1" and prog.body[3] == "v5 = tl.where(v4, v3, v1)"


@pytest.mark.parametrize("steps, specs", [
    ([S(OpType.DIV, (0, 1)), S(OpType.NEG, (2,))], [((4,), DType.INT64), ((4,), DType.INT64)]),  # int Div
    ([S(OpType.ADD, (0, 1)), S(OpType.NEG, (2,))], [((4,), DType.INT8), ((4,), DType.INT8)]),  # int8
    ([S(OpType.MOD, (0, 1)), S(OpType.NEG, (2,))], [((4,), F32), ((4,), F32)]),  # Python-style float Mod
])
def test_steps_without_a_triton_form_are_refused(steps, specs):
    with pytest.raises(te.NoTritonForm, match="fused"):
        te.elementwise_program(fused(steps, len(specs)), types(*specs))


def test_tactics_offer_triton_only_where_it_applies():
    from ember.backends.cuda.kernels.elementwise_fused import _has_triton_form
    from ember.ir import Graph

    def graph(steps, specs):
        node = fused(steps, len(specs))
        tt = {f"i{k}": t for k, t in enumerate(types(*specs))}
        tt["y"] = TensorType(specs[0][1], specs[0][0])
        return node, Graph("g", [node], list(tt)[:-1], ["y"], tt, {})

    assert _has_triton_form(*graph([S(OpType.ADD, (0, 1)), S(OpType.RELU, (2,))], [((2, 3), F32), ((3,), F32)]))
    assert not _has_triton_form(*graph([S(OpType.DIV, (0, 1)), S(OpType.NEG, (2,))],
                                       [((2, 3), DType.INT32), ((3,), DType.INT32)]))


def test_layout_merges_dims_and_marks_broadcast_inputs():
    x = torch.empty(2, 3, 5, 7)
    out = torch.empty(2, 3, 5, 7)
    lay = te.plan_layout([x, torch.empty(3, 1, 1), torch.empty(())], out)
    assert lay.sizes == (2, 3, 35) and lay.patterns == (te.DENSE, (1,), ())
    cl = x.contiguous(memory_format=torch.channels_last)
    out = te.output_like([torch.empty(1, 3, 1, 1), cl], (2, 3, 5, 7), torch.float16, torch.device("cpu"))
    assert out.is_contiguous(memory_format=torch.channels_last) and out.dtype == torch.float16
    lay = te.plan_layout([cl, torch.empty(1, 3, 1, 1)], out)
    assert lay.sizes == (70, 3) and lay.patterns == (te.DENSE, (1,))
    # an NCHW input into a channels-last output is read through its own strides
    lay = te.plan_layout([x], out)
    assert lay.patterns[0] != te.DENSE and not lay.index64


def test_kernel_source_reads_each_input_once():
    prog = te.elementwise_program(fused([S(OpType.ADD, (0, 1)), S(OpType.GELU, (2,), GeluAttrs("tanh"))], 2),
                                  types(((2, 3, 35), F32), ((3, 1), F32)))
    src = te.kernel_source(prog, 3, (te.DENSE, (1,)))
    assert src.count("tl.load(") == 2 and "libdevice.tanh" in src and src.count("tl.store(") == 1
    assert "c1 = rem % size1" in src and "c0 =" not in src  # the bias varies along dim 1 only


# ---- kernels on the GPU -----------------------------------------------------------------------
def _reference(node, inputs):
    """The CPU backend's FusedElementwise kernel, in fp32 on the same device (torch ops)."""
    from ember.backends.cpu.kernels.fused import fused_elementwise

    kernel = fused_elementwise(node, CompileContext(None, {}, inputs[0].device))
    args = [t.float() if t.is_floating_point() else t for t in inputs]
    return kernel(args)[0]


def _specs(inputs):
    def dt(t):
        return {torch.float32: F32, torch.float16: F32, torch.bfloat16: F32, torch.int64: DType.INT64,
                torch.int32: DType.INT32, torch.bool: DType.BOOL}[t.dtype]
    return types(*[(tuple(t.shape), dt(t)) for t in inputs])


def _run(steps, inputs, dtype):
    node = fused(steps, len(inputs))
    prog = te.elementwise_program(node, _specs(inputs))
    shape = torch.broadcast_shapes(*(t.shape for t in inputs))
    ref = _reference(node, inputs)
    out_dtype = dtype if prog.out_kind == "f" else ref.dtype
    return te.run_program(prog, inputs, shape, out_dtype), ref


def _close(got, ref, dtype):
    assert got.shape == ref.shape
    if not ref.is_floating_point():
        assert torch.equal(got.cpu(), ref.cpu().to(got.dtype))
        return
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[got.dtype]
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol, equal_nan=True)


def _dev(*shape, dtype=torch.float32, scale=1.0, shift=0.0, cl=False):
    t = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape) + 7)) * scale + shift
    t = t.to("cuda", dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t


UNARY = [OpType.RELU, OpType.SIGMOID, OpType.TANH, OpType.ERF, OpType.EXP, OpType.NEG, OpType.ABS,
         OpType.FLOOR, OpType.CEIL, OpType.ROUND, OpType.SIGN, OpType.SIN, OpType.COS, OpType.ATAN,
         OpType.SINH, OpType.ASINH, OpType.SOFTPLUS, OpType.SOFTSIGN, OpType.MISH, OpType.ELU,
         OpType.CELU, OpType.SELU, OpType.THRESHOLDED_RELU, OpType.HARD_SWISH, OpType.HARD_SIGMOID,
         OpType.GELU, OpType.LEAKY_RELU]


@pytest.mark.cuda
@pytest.mark.parametrize("op", UNARY, ids=[o.value for o in UNARY])
def test_unary_steps_match_torch(op):
    got, ref = _run([S(OpType.MUL, (0, 1)), S(op, (2,))], [_dev(3, 17, 13), _dev(13, scale=2.0)], torch.float32)
    _close(got, ref, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_broadcast_chain_in_every_float_dtype(dtype):
    x, b, s = _dev(4, 8, 9, 11, dtype=dtype), _dev(8, 1, 1, dtype=dtype), _dev(11, dtype=dtype, shift=3.0)
    steps = [S(OpType.SUB, (0, 1)), S(OpType.DIV, (3, 2)), S(OpType.CLIP, (4,), ClipAttrs(-1.0, 1.5)),
             S(OpType.TANH, (5,)), S(OpType.MAX, (6, 1))]
    got, ref = _run(steps, [x, b, s], dtype)
    assert got.dtype == dtype and got.is_contiguous()
    _close(got, ref, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_channels_last_in_and_out(dtype):
    x = _dev(2, 24, 7, 5, dtype=dtype, cl=True)
    r = _dev(2, 24, 7, 5, dtype=dtype)  # NCHW residual, read through its own strides
    got, ref = _run([S(OpType.MUL, (2, 0)), S(OpType.ADD, (3, 1)), S(OpType.RELU, (4,))],
                    [x, r, _dev(1, 24, 1, 1, dtype=dtype)], dtype)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    _close(got, ref, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 1000003 // 1000), (5, 3, 1, 33), (0, 4), (2, 0, 3), ()], ids=str)
def test_odd_empty_and_scalar_shapes(shape):
    got, ref = _run([S(OpType.ADD, (0, 1)), S(OpType.EXP, (2,)), S(OpType.NEG, (3,))],
                    [_dev(*shape), _dev(*shape[-1:]) if shape else _dev()], torch.float32)
    _close(got, ref, torch.float32)


@pytest.mark.cuda
def test_large_tensor_and_strided_views():
    x = _dev(3, 1 << 20)
    got, ref = _run([S(OpType.MUL, (0, 1)), S(OpType.SIGMOID, (2,))], [x, _dev(3, 1)], torch.float32)
    _close(got, ref, torch.float32)
    t = _dev(64, 48).t()
    sl = _dev(48, 130)[:, 1:129:2]
    got, ref = _run([S(OpType.SUB, (0, 1)), S(OpType.ABS, (2,))], [t, sl], torch.float32)
    _close(got, ref, torch.float32)


@pytest.mark.cuda
def test_integer_bool_and_cast_steps():
    i = torch.randint(-50, 50, (4, 1, 6), device="cuda")
    j = torch.randint(-50, 50, (5, 1), device="cuda")
    mask = torch.randint(0, 2, (4, 5, 6), device="cuda")
    steps = [S(OpType.ADD, (0, 1)), S(OpType.MUL, (3, 1)), S(OpType.GREATER, (4, 2)), S(OpType.NOT, (5,)),
             S(OpType.CAST, (6,), CastAttrs("float32")), S(OpType.CAST, (4,), CastAttrs("float16")),
             S(OpType.CAST, (8,), CastAttrs("float32")), S(OpType.WHERE, (5, 9, 7))]
    got, ref = _run(steps, [i, j, mask], torch.float32)
    _close(got, ref, torch.float32)
    got, ref = _run([S(OpType.MUL, (0, 0)), S(OpType.CAST, (1,), CastAttrs("int64")), S(OpType.ABS, (2,))],
                    [_dev(9, 10, scale=7.0)], torch.float32)
    assert got.dtype == torch.int64
    _close(got, ref, torch.float32)


@pytest.mark.cuda
def test_runs_inside_a_cuda_graph():
    x, b = _dev(8, 64, 56), _dev(64, 1)
    node = fused([S(OpType.ADD, (0, 1)), S(OpType.GELU, (2,))], 2)
    prog = te.elementwise_program(node, _specs([x, b]))
    te.run_program(prog, [x, b], x.shape, torch.float16)  # compiles outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = te.run_program(prog, [x, b], x.shape, torch.float16)
    x.copy_(_dev(8, 64, 56, scale=3.0))
    g.replay()
    _close(out, _reference(node, [x, b]), torch.float16)


def _chain_model():
    """A chain the optimizer fuses: (x - m) * s -> swish -> + z (a diamond inside). No conv in
    front: the folding passes would fold - m and * s into its weights and fuse_conv the rest."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as oh

    nodes = [oh.make_node("Sub", ["x", "m"], ["a"], name="sub"), oh.make_node("Mul", ["a", "s"], ["p"], name="mul"),
             oh.make_node("Sigmoid", ["p"], ["g"], name="gate"), oh.make_node("Mul", ["p", "g"], ["q"], name="swish"),
             oh.make_node("Add", ["q", "z"], ["y"], name="residual")]
    rng = np.random.default_rng(0)
    inits = {"m": rng.standard_normal((16, 1, 1)).astype(np.float32),
             "s": rng.uniform(0.5, 1.5, (1, 16, 1, 1)).astype(np.float32)}
    graph = oh.make_graph(nodes, "chain", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 12, 12]),
                           oh.make_tensor_value_info("z", TensorProto.FLOAT, [2, 16, 12, 12])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_build_times_both_tactics_and_each_runs(precision):
    import onnxruntime as ort

    import ember
    from ember.runtime.engine import Engine

    model = _chain_model()
    engine = ember.build(model.SerializeToString(), ember.BuildConfig(device="cuda", precision=precision))
    layers = [lay for lay in engine.plan.layers if lay.kind == "FusedElementwise"]
    assert len(layers) == 1 and tuple(layers[0].origin) == ("sub", "mul", "gate", "swish", "residual")
    timings = layers[0].timings
    assert set(timings) == {"eager", "triton"} and all(np.isfinite(v) for v in timings.values()), timings
    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal((2, 16, 12, 12)).astype(np.float32) for k in ("x", "z")}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(["y"], feeds)[0].astype(np.float64)
    tol = 1e-4 if precision == "fp32" else 1e-2
    for tactic in ("eager", "triton"):
        plan = dataclasses.replace(engine.plan, layers=[
            dataclasses.replace(lay, tactic=tactic) if lay.kind == "FusedElementwise" else lay
            for lay in engine.plan.layers])
        with Engine(plan).create_context() as ctx:
            got = np.asarray(ctx.infer(feeds)["y"], np.float64)
        err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert err <= tol, (tactic, err)


# ---- NaN in, NaN out (under Triton's interpreter in CI, on the GPU with -m cuda) ---------------
_NAN_CHECK = r"""
import sys
import torch
from test_triton_elementwise import UNARY, S, _reference, _specs, fused
from ember.backends.cuda.libs import triton_elementwise as te
from ember.ir import OpType

dev = torch.device(sys.argv[1])
x = torch.tensor([[float("nan"), -4.0, -0.5, 0.0, 0.5, 4.0, float("inf"), -float("inf")]], device=dev)
bad, checked = [], []
for op in UNARY + [OpType.MAX, OpType.MIN]:
    steps = [S(op, (0,))] if op in UNARY else [S(op, (0, 1))]
    inputs = [x] if op in UNARY else [x, torch.zeros_like(x)]
    node = fused(steps, len(inputs))
    prog = te.elementwise_program(node, _specs(inputs))
    try:
        got = te.run_program(prog, inputs, x.shape, torch.float32)
    except Exception:  # noqa: BLE001
        if dev.type == "cuda":
            raise
        continue  # libdevice's functions (tanh, sinh, ...) do not run under the interpreter
    checked.append(op)
    want = _reference(node, inputs)
    nan_out = op is not OpType.THRESHOLDED_RELU  # x if x > alpha else 0: ONNX's NaN gives 0
    if bool(got[0, 0].isnan()) != nan_out or not torch.equal(got.isnan(), want.isnan()):
        bad.append((op.value, got.tolist(), want.tolist()))
assert not bad, bad
assert {OpType.HARD_SIGMOID, OpType.HARD_SWISH, OpType.RELU, OpType.MAX, OpType.MIN} <= set(checked), checked
print("ok")
"""


def test_nan_propagates_through_every_unary_step_under_tritons_interpreter():
    """Each generated activation keeps NaN where PyTorch's does (Triton's minimum/maximum return
    the other operand for NaN unless told to propagate it: HardSigmoid lost NaN)."""
    import importlib.util

    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        pytest.skip("CPU check under Triton's interpreter (the GPU variant runs with -m cuda)")
    from tritonkit import run_triton_check

    run_triton_check(_NAN_CHECK, "cpu")


@pytest.mark.cuda
def test_nan_propagates_through_every_unary_step_on_the_gpu():
    from tritonkit import run_triton_check

    run_triton_check(_NAN_CHECK, "cuda")


# ---- the GPU tests' scale chains, under Triton's interpreter in CI -----------------------------
# The GPU tests compare each kernel with the CPU backend's FusedElementwise compiled on its own (no
# graph). A squeeze-excite scale (Mul, then Add and ReLU) is also a CPU chain step, whose check once
# raised on a graph-less compile: only the GPU run showed it. These run the same chains on the CPU.
_SCALE_CHAINS = r"""
import sys
import torch
from test_triton_elementwise import S, _run, _close
from ember.ir import OpType

dev = torch.device(sys.argv[1])
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 24, 7, 5, generator=g).to(dev).contiguous(memory_format=torch.channels_last)
r = torch.randn(2, 24, 7, 5, generator=g).to(dev)
gate = torch.rand(1, 24, 1, 1, generator=g).to(dev)
x[0, 0, 0, 0] = float("nan")
got, ref = _run([S(OpType.MUL, (2, 0)), S(OpType.ADD, (3, 1)), S(OpType.RELU, (4,))], [x, r, gate], torch.float32)
_close(got, ref, torch.float32)
assert bool(got[0, 0, 0, 0].isnan())
a, b = torch.randn(3, 17, 13, generator=g).to(dev), torch.randn(13, generator=g).to(dev) * 2.0
for op in (OpType.RELU, OpType.SIGMOID):
    got, ref = _run([S(OpType.MUL, (0, 1)), S(op, (2,))], [a, b], torch.float32)
    _close(got, ref, torch.float32)
print("ok")
"""


def test_scale_chains_match_the_cpu_reference_under_tritons_interpreter():
    import importlib.util

    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        pytest.skip("CPU check under Triton's interpreter (the GPU tests run these with -m cuda)")
    from tritonkit import run_triton_check

    run_triton_check(_SCALE_CHAINS, "cpu")

"""The signal ops on the CPU, through ONNX models built with ``ember.build``: every attribute and
input form against ONNX's reference implementation (``onnx.reference``), the forms ONNX Runtime
implements against it too, run-time sizes, bad run-time values, the torch path the GPU takes,
and an STFT + Hann window + MelWeightMatrix model end to end."""
from __future__ import annotations

import itertools
from typing import Any, Optional

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.backends.base import CompileContext
from ember.backends.cpu.kernels.signal import transform
from ember.backends.cuda.fallback import HOST_SLOTS
from ember.backends.tensors import max_relative_error
from ember.errors import InputError, ShapeError, UnsupportedOpError
from ember.ir import Graph, Node, OpType
from ember.ops.attrs import DFTAttrs, MelWeightMatrixAttrs, STFTAttrs, WindowAttrs

F32, F64, I64 = np.float32, np.float64, np.int64
WINDOWS = ("HannWindow", "HammingWindow", "BlackmanWindow")
GENERATORS = (*WINDOWS, "MelWeightMatrix")


class In:
    """A model input: fed at run time (``const=False``) or an initializer; ``dims`` overrides
    the declared shape (symbols for dynamic dims)."""

    def __init__(self, name: str, value: Any, const: bool = False, dims: Optional[list] = None) -> None:
        self.name, self.value, self.const, self.dims = name, np.asarray(value), const, dims


def make_model(op: str, ins: list[Optional[In]], opset: int = 17, name: str = "sig", **attrs: Any) -> onnx.ModelProto:
    node = helper.make_node(op, ["" if i is None else i.name for i in ins], ["y"], name=name, **attrs)
    present = [i for i in ins if i is not None]
    graph = helper.make_graph(
        [node], "signal",
        [helper.make_tensor_value_info(i.name, helper.np_dtype_to_tensor_dtype(i.value.dtype),
                                       i.dims if i.dims is not None else list(i.value.shape))
         for i in present if not i.const],
        [helper.make_value_info("y", onnx.TypeProto())],
        initializer=[numpy_helper.from_array(i.value, i.name) for i in present if i.const])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def feeds_of(ins: list[Optional[In]]) -> dict[str, np.ndarray]:
    return {i.name: i.value for i in ins if i is not None and not i.const}


def run_ember(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        return np.asarray(ctx.infer(dict(feeds))["y"])


def run_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(ReferenceEvaluator(model).run(None, feeds)[0])


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def assert_close(got: np.ndarray, want: np.ndarray, tol: float = 1e-5, absolute: bool = False) -> None:
    """Spectra to ``tol`` relative to their largest value; windows and filter banks (values in
    [0, 1]) to ``tol`` absolute, where a reference's 7e-15 rounding noise and Ember's exact 0 agree."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want)
    elif absolute:
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    elif want.size:
        error = max_relative_error(torch.from_numpy(got.astype(F64)), torch.from_numpy(want.astype(F64)))
        assert error <= tol, f"max relative error {error}"


def check(op: str, ins: list[Optional[In]], opset: int = 17, tol: float = 1e-5, **attrs: Any) -> np.ndarray:
    model = make_model(op, ins, opset, **attrs)
    feeds = feeds_of(ins)
    got = run_ember(model, feeds)
    assert_close(got, run_reference(model, feeds), tol, absolute=op in GENERATORS)
    return got


def signal(shape: tuple[int, ...], dtype: Any = F32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, shape).astype(dtype)


# ---- windows --------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's 0 / 0
@pytest.mark.parametrize("op", WINDOWS)
@pytest.mark.parametrize("periodic", [0, 1])
@pytest.mark.parametrize("size", [0, 1, 2, 7, 16, 33])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16,
                                   TensorProto.INT32, TensorProto.UINT8, TensorProto.INT64])
def test_window_matches_onnx_reference(op, periodic, size, dtype):
    if size == 1 and not periodic and dtype not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
        pytest.skip("a symmetric window of one value is NaN (0 / 0), which has no integer value")
    ins = [In("size", np.array(size, I64), const=True)]
    if dtype == TensorProto.FLOAT16:  # the reference computes these in float16 (n * pi, rounded): 1.5e-3 off
        got = run_ember(make_model(op, ins, periodic=periodic, output_datatype=dtype), {})
        exact = run_reference(make_model(op, ins, periodic=periodic, output_datatype=TensorProto.DOUBLE), {})
        assert_close(got, exact.astype(np.float16), 5e-4, absolute=True)
    else:
        got = check(op, ins, periodic=periodic, output_datatype=dtype, tol=1e-6)
    if size == 1 and not periodic:
        assert np.isnan(got).all()  # ONNX's reference and ONNX Runtime give NaN too


@pytest.mark.parametrize("op", WINDOWS)
@pytest.mark.parametrize("periodic", [0, 1])
def test_window_matches_onnxruntime_with_a_run_time_size(op, periodic):
    ins = [In("size", np.array(20, np.int32), dims=[])]
    model = make_model(op, ins, periodic=periodic)
    got = run_ember(model, feeds_of(ins))
    assert_close(got, run_ort(model, feeds_of(ins)), 1e-6, absolute=True)
    assert_close(got, run_reference(model, feeds_of(ins)), 1e-6, absolute=True)


def test_window_default_attributes_are_periodic_float32():
    got = check("HannWindow", [In("size", np.array(8, I64), const=True)])
    np.testing.assert_allclose(got, np.hanning(9)[:8].astype(F32), atol=1e-7)  # periodic: one more, last cut


def test_window_of_a_negative_run_time_size_names_the_node():
    ins = [In("size", np.array(-4, I64), dims=[])]
    with pytest.raises(InputError, match=r"node 'sig' \(HannWindow\): size is -4"):
        run_ember(make_model("HannWindow", ins), feeds_of(ins))


# ---- DFT ------------------------------------------------------------------------------------
DFT_FORMS = list(itertools.product([1, 2], [(0, 0), (0, 1), (1, 0), (1, 1)], [1, 2, -2, -3], [None, 4, 9]))


def _dft_inputs(x: np.ndarray, length: Optional[int], axis: Optional[int], opset: int) -> list[Optional[In]]:
    ins: list[Optional[In]] = [In("x", x), None if length is None else In("n", np.array(length, I64), const=True)]
    if opset >= 20:
        ins.append(In("axis", np.array(axis, I64), const=True))
    return ins


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("components, flags, axis, length", DFT_FORMS,
                         ids=[f"c{c}-inv{i}-one{o}-axis{a}-n{n}" for c, (i, o), a, n in DFT_FORMS])
def test_dft_matches_onnx_reference(opset, components, flags, axis, length):
    inverse, onesided = flags
    x = signal((2, 6, 5, components))
    ins = _dft_inputs(x, length, axis, opset)
    attrs = {"axis": axis} if opset < 20 else {}
    check("DFT", ins, opset, inverse=inverse, onesided=onesided, **attrs)


@pytest.mark.parametrize("dtype, tol", [(F64, 1e-12), (np.float16, 2e-3)])
@pytest.mark.parametrize("inverse, onesided", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_dft_in_float64_and_float16(dtype, tol, inverse, onesided):
    ins = _dft_inputs(signal((3, 16, 2), dtype), None, 1, 20)
    check("DFT", ins, 20, tol=tol, inverse=inverse, onesided=onesided)


def test_dft_of_a_rank_2_signal_along_axis_0():
    check("DFT", _dft_inputs(signal((12, 1)), None, 0, 20), 20, onesided=1)


@pytest.mark.parametrize("inverse, onesided, components", [(0, 0, 1), (0, 0, 2), (0, 1, 1), (1, 0, 2)])
@pytest.mark.parametrize("length", [None, 6, 8, 13])
def test_dft_matches_onnxruntime(inverse, onesided, components, length):
    ins = _dft_inputs(signal((2, 10, 3, components)), length, 1, 20)
    model = make_model("DFT", ins, 20, inverse=inverse, onesided=onesided)
    got = run_ember(model, feeds_of(ins))
    assert_close(got, run_ort(model, feeds_of(ins)), 1e-5)


def test_dft_with_run_time_axis_and_length():
    x = signal((2, 6, 5, 2))
    ins = [In("x", x, dims=["b", "m", "k", 2]), In("n", np.array(8, I64), dims=[]),
           In("axis", np.array(-3, I64), dims=[])]
    model = make_model("DFT", ins, 20)
    feeds = feeds_of(ins)
    assert_close(run_ember(model, feeds), run_reference(model, feeds))
    for axis, n in ((2, 3), (1, 11)):
        feeds = {**feeds, "axis": np.array(axis, I64), "n": np.array(n, I64)}
        engine = ember.build(model, ember.BuildConfig(device="cpu"))
        with engine.create_context() as ctx:
            got = np.asarray(ctx.infer(feeds)["y"])
        assert_close(got, run_reference(model, feeds))


@pytest.mark.parametrize("feeds, match", [
    ({"n": np.array(0, I64), "axis": np.array(1, I64)}, r"dft_length is 0; it must be positive"),
    ({"n": np.array(4, I64), "axis": np.array(3, I64)}, r"DFT axis 3 is out of range"),
    ({"n": np.array([4, 5], I64), "axis": np.array(1, I64)}, r"dft_length \(input 1\) must be one integer"),
])
def test_dft_bad_run_time_values_name_the_node(feeds, match):
    ins = [In("x", signal((2, 6, 5, 1))), In("n", feeds["n"], dims=["k"] * feeds["n"].ndim),
           In("axis", feeds["axis"], dims=[])]
    model = make_model("DFT", ins, 20)
    with pytest.raises(InputError, match=r"node 'sig' \(DFT\).*" + match):
        run_ember(model, {"x": ins[0].value, **feeds})


def test_dft_of_a_complex_input_whose_last_dim_is_not_2_is_refused_at_load():
    ins = _dft_inputs(signal((2, 6, 3)), None, 1, 20)
    with pytest.raises(ShapeError, match=r"node 'sig' \(DFT\).*must end in a dim of 1 \(real\) or 2 .*not 3"):
        run_ember(make_model("DFT", ins, 20), feeds_of(ins))


def test_dft_of_a_run_time_shape_whose_last_dim_is_not_2_names_the_node():
    ins = [In("x", signal((2, 6, 3)), dims=["b", "n", "c"])]
    with pytest.raises(InputError, match=r"node 'sig' \(DFT\).*must end in a dim of 1 \(real\) or 2"):
        run_ember(make_model("DFT", ins, 17), feeds_of(ins))


def test_dft_bad_flag_is_refused_with_the_node():
    ins = _dft_inputs(signal((2, 6, 1)), None, 1, 20)
    with pytest.raises(UnsupportedOpError, match=r"DFT.*sig.*onesided=2 must be 0 or 1"):
        run_ember(make_model("DFT", ins, 20, onesided=2), feeds_of(ins))


# ---- STFT -----------------------------------------------------------------------------------
STFT_FORMS = list(itertools.product([0, 1], [1, 2], ["none", "window", "length", "both"], [1, 3, 8]))


@pytest.mark.parametrize("onesided, components, given, step", STFT_FORMS,
                         ids=[f"one{o}-c{c}-{g}-step{s}" for o, c, g, s in STFT_FORMS])
def test_stft_matches_onnx_reference(onesided, components, given, step):
    x = signal((2, 40, components))
    window = np.hanning(16).astype(F32)
    ins: list[Optional[In]] = [In("x", x), In("step", np.array(step, I64), const=True),
                               In("w", window) if given in ("window", "both") else None,
                               In("len", np.array(16, I64), const=True) if given in ("length", "both") else None]
    while ins[-1] is None:
        ins.pop()
    check("STFT", ins, onesided=onesided)


@pytest.mark.parametrize("onesided", [0, 1])
@pytest.mark.parametrize("with_window", [False, True])
def test_stft_matches_onnxruntime(onesided, with_window):
    ins: list[Optional[In]] = [In("x", signal((3, 100, 1))), In("step", np.array(10, I64), const=True),
                               In("w", np.hamming(20).astype(F32)) if with_window else None,
                               In("len", np.array(20, I64), const=True)]
    model = make_model("STFT", ins, onesided=onesided)
    got = run_ember(model, feeds_of(ins))
    assert_close(got, run_ort(model, feeds_of(ins)), 1e-5)


def test_stft_of_a_batch_length_signal_matches_onnxruntime():
    """ONNX Runtime also takes a real signal as [batch, length], without the component dim."""
    ins = [In("x", signal((2, 50))), In("step", np.array(5, I64), const=True), In("w", np.hanning(12).astype(F32))]
    model = make_model("STFT", ins)
    assert_close(run_ember(model, feeds_of(ins)), run_ort(model, feeds_of(ins)), 1e-5)


def test_stft_in_float64_with_run_time_sizes():
    x = signal((2, 64, 1), F64)
    ins = [In("x", x, dims=["b", "t", 1]), In("step", np.array(6, I64), dims=[]), In("w", np.hanning(10)),
           In("len", np.array(10, np.int32), dims=[])]
    model = make_model("STFT", ins)
    assert_close(run_ember(model, feeds_of(ins)), run_reference(model, feeds_of(ins)), 1e-12)


@pytest.mark.parametrize("feeds, match", [
    ({"step": np.array(0, I64), "len": np.array(16, I64)}, r"frame_step is 0; it must be positive"),
    ({"step": np.array(-3, I64), "len": np.array(16, I64)}, r"frame_step is -3; it must be positive"),
    ({"step": np.array(4, I64), "len": np.array(12, I64)}, r"the window has 16 values but frame_length is 12"),
    ({"step": np.array(4, I64), "len": np.array(16, I64), "x": signal((2, 10, 1))},
     r"frame_length 16 is longer than the signal \(10 samples\)"),
])
def test_stft_bad_run_time_values_name_the_node(feeds, match):
    ins = [In("x", signal((2, 40, 1)), dims=["b", "t", 1]), In("step", np.array(4, I64), dims=[]),
           In("w", np.hanning(16).astype(F32), dims=["w"]), In("len", np.array(16, I64), dims=[])]
    model = make_model("STFT", ins)
    with pytest.raises(InputError, match=r"node 'sig' \(STFT\).*" + match):
        run_ember(model, {**feeds_of(ins), **feeds})


@pytest.mark.parametrize("ins, match", [
    ([In("x", signal((2, 40, 1))), In("step", np.array(0, I64), const=True)], r"frame_step is 0"),
    ([In("x", signal((2, 40, 1))), In("step", np.array(4, I64), const=True), In("w", np.hanning(16).astype(F32)),
      In("len", np.array(8, I64), const=True)], r"the window has 16 values but frame_length is 8"),
])
def test_stft_bad_constants_are_refused_at_build_with_the_node(ins, match):
    with pytest.raises(ShapeError, match=r"node 'sig' \(STFT\).*" + match):
        run_ember(make_model("STFT", ins), feeds_of(ins))


# ---- MelWeightMatrix ------------------------------------------------------------------------
MEL_CASES = [(8, 16, 8192, 0.0, 4096.0), (40, 512, 16000, 20.0, 8000.0), (80, 400, 16000, 0.0, 8000.0),
             (10, 64, 22050, 300.0, 3000.0), (3, 9, 100, 10.0, 40.0), (13, 1024, 44100, 0.0, 11025.0)]


@pytest.mark.parametrize("params", MEL_CASES, ids=[f"{p[0]}mels-{p[1]}dft" for p in MEL_CASES])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT32, TensorProto.UINT8])
def test_mel_weight_matrix_matches_onnx_reference(params, dtype):
    mels, length, rate, low, high = params
    ins = [In("mels", np.array(mels, I64), const=True), In("n", np.array(length, np.int32), const=True),
           In("rate", np.array(rate, I64), const=True), In("low", np.array(low, F32), const=True),
           In("high", np.array(high, F32), const=True)]
    check("MelWeightMatrix", ins, output_datatype=dtype, tol=1e-6)


@pytest.mark.parametrize("params", MEL_CASES, ids=[f"{p[0]}mels-{p[1]}dft" for p in MEL_CASES])
def test_mel_weight_matrix_matches_onnxruntime_with_run_time_inputs(params):
    mels, length, rate, low, high = params
    ins = [In("mels", np.array(mels, I64), dims=[]), In("n", np.array(length, I64), dims=[]),
           In("rate", np.array(rate, I64), dims=[]), In("low", np.array(low, F32), dims=[]),
           In("high", np.array(high, F32), dims=[])]
    model = make_model("MelWeightMatrix", ins)
    assert_close(run_ember(model, feeds_of(ins)), run_ort(model, feeds_of(ins)), 1e-6, absolute=True)


def test_mel_weight_matrix_out_of_range_run_time_hertz_names_the_node():
    ins = [In("mels", np.array(8, I64), dims=[]), In("n", np.array(16, I64), dims=[]),
           In("rate", np.array(8192, I64), dims=[]), In("low", np.array(0.0, F32), dims=[]),
           In("high", np.array(6000.0, F32), dims=[])]
    with pytest.raises(InputError, match=r"node 'sig' \(MelWeightMatrix\).*upper_edge_hertz 6000.0 Hz is past"):
        run_ember(make_model("MelWeightMatrix", ins), feeds_of(ins))


@pytest.mark.parametrize("dtype", [TensorProto.STRING, TensorProto.BOOL, 99])
def test_generators_refuse_output_datatypes_they_cannot_make(dtype):
    ins = [In("size", np.array(8, I64), const=True)]
    with pytest.raises(UnsupportedOpError, match=r"HannWindow.*sig.*output_datatype"):
        run_ember(make_model("HannWindow", ins, output_datatype=dtype), {})


# ---- the GPU's path: torch.fft, and every tensor on the data's device -------------------------
@pytest.mark.parametrize("kind", ["fft", "ifft", "rfft", "irfft"])
@pytest.mark.parametrize("n", [None, 5, 12])
def test_torch_transforms_agree_with_numpys(kind, n):
    x = torch.from_numpy(signal((3, 9, 4), F64))
    if kind != "rfft":
        x = torch.complex(x, torch.from_numpy(signal((3, 9, 4), F64, seed=1)))
    want = transform(kind, x, n, 1)
    got = transform(kind, x, n, 1, use_torch=True)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert (got - want).abs().max().item() < 1e-12


META_CASES = {
    "hann": (Node("sig", OpType.HANN_WINDOW, ("size",), ("y",), WindowAttrs()), [np.array(8, I64)]),
    "blackman": (Node("sig", OpType.BLACKMAN_WINDOW, ("size",), ("y",), WindowAttrs(False)), [np.array(8, I64)]),
    "dft": (Node("sig", OpType.DFT, ("x", "n"), ("y",), DFTAttrs(1, onesided=True)),
            [signal((2, 8, 1)), np.array(6, I64)]),
    "idft": (Node("sig", OpType.DFT, ("x", "", "axis"), ("y",), DFTAttrs(None, inverse=True)),
             [signal((2, 8, 2)), None, np.array(1, I64)]),
    "irfft": (Node("sig", OpType.DFT, ("x",), ("y",), DFTAttrs(-2, True, True)), [signal((2, 5, 2))]),
    "stft": (Node("sig", OpType.STFT, ("x", "step", "w"), ("y",), STFTAttrs()),
             [signal((2, 32, 1)), np.array(4, I64), np.hanning(8).astype(F32)]),
    "stft_complex": (Node("sig", OpType.STFT, ("x", "step", "", "len"), ("y",), STFTAttrs(False)),
                     [signal((2, 32, 2)), np.array(4, I64), None, np.array(8, I64)]),
    "mel": (Node("sig", OpType.MEL_WEIGHT_MATRIX, ("a", "b", "c", "d", "e"), ("y",), MelWeightMatrixAttrs()),
            [np.array(8, I64), np.array(16, I64), np.array(8192, I64), np.array(0, F32), np.array(4096, F32)]),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_kernels_keep_their_tensors_on_the_datas_device(case):
    """As the CUDA backend runs them: host slots (sizes, steps) on the host, data on the device
    (here PyTorch's ``meta``, which refuses a CPU tensor beside its own as CUDA does); outputs
    computed from host values alone stay on the host (the backend moves them)."""
    from ember.backends.cpu.registry import ATEN, lookup

    node, arrays = META_CASES[case]
    meta = torch.device("meta")
    kernel = lookup(node, ATEN, None).factory(node, CompileContext(Graph("g", [node], [], [], {}), {}, meta, ATEN))
    hosts = HOST_SLOTS[node.op]
    args = [None if a is None else torch.from_numpy(a) if i in hosts else torch.from_numpy(a).to(meta)
            for i, a in enumerate(arrays)]
    with torch.inference_mode():
        outs = kernel(args)
    data_on_meta = any(a is not None and a.device == meta for a in args)
    assert all(o.device == (meta if data_on_meta else torch.device("cpu")) for o in outs)
    want = ember.backends.cpu.evaluate(node, arrays)
    assert tuple(outs[0].shape) == want[0].shape and outs[0].dtype == torch.from_numpy(want[0]).dtype


# ---- end to end ---------------------------------------------------------------------------------
def _spectrogram_model(n_fft: int = 64, hop: int = 16, mels: int = 12, rate: int = 8000) -> onnx.ModelProto:
    """A log-mel spectrogram: STFT with a Hann window, power, mel filter bank, log."""
    def const(name: str, value: Any) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    nodes = [
        helper.make_node("HannWindow", ["n_fft"], ["window"], name="hann"),
        helper.make_node("STFT", ["audio", "hop", "window", "n_fft"], ["spec"], name="stft", onesided=1),
        helper.make_node("ReduceSumSquare", ["spec", "last"], ["power"], name="power", keepdims=0),
        helper.make_node("MelWeightMatrix", ["mels", "n_fft", "rate", "low", "high"], ["filters"], name="mel"),
        helper.make_node("MatMul", ["power", "filters"], ["mel_power"], name="apply"),
        helper.make_node("Add", ["mel_power", "eps"], ["shifted"], name="floor"),
        helper.make_node("Log", ["shifted"], ["y"], name="log"),
    ]
    graph = helper.make_graph(
        nodes, "log_mel",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[const("n_fft", np.int64(n_fft)), const("hop", np.int64(hop)), const("last", np.array([-1], I64)),
                     const("mels", np.int64(mels)), const("rate", np.int64(rate)), const("low", np.float32(0)),
                     const("high", np.float32(rate / 2 - 100)), const("eps", np.float32(1e-6))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_log_mel_spectrogram_end_to_end_on_the_cpu():
    model = _spectrogram_model()
    t = np.arange(1000) / 8000
    audio = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 1800 * t) * 0.5])[..., None].astype(F32)
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer({"audio": audio})["y"])
    want_ort = run_ort(model, {"audio": audio})
    want_ref = run_reference(model, {"audio": audio})
    assert got.shape == want_ort.shape == (2, 59, 12)
    np.testing.assert_allclose(got, want_ort, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, want_ref, rtol=1e-4, atol=1e-4)
    # the 440 Hz tone's energy lands in a lower mel band than the 1800 Hz one
    assert got[0].mean(0).argmax() < got[1].mean(0).argmax()
    # a longer recording, same engine: the frame count follows the symbolic length
    with engine.create_context() as ctx:
        longer = np.asarray(ctx.infer({"audio": np.concatenate([audio, audio], axis=1)})["y"])
    assert longer.shape == (2, 122, 12)


@pytest.mark.cuda
def test_log_mel_spectrogram_end_to_end_on_the_gpu():
    model = _spectrogram_model()
    audio = signal((2, 1000, 1))
    engine = ember.build(model, ember.BuildConfig(device="cuda", precision="fp32"))
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer({"audio": audio})["y"])
    np.testing.assert_allclose(got, run_ort(model, {"audio": audio}), rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("inverse, onesided", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_dft_on_the_gpu(inverse, onesided):
    ins = _dft_inputs(signal((2, 12, 3, 2)), 10, 1, 20)
    model = make_model("DFT", ins, 20, inverse=inverse, onesided=onesided)
    engine = ember.build(model, ember.BuildConfig(device="cuda", precision="fp32"))
    with engine.create_context() as ctx:
        got = np.asarray(ctx.infer(feeds_of(ins))["y"])
    assert_close(got, run_reference(model, feeds_of(ins)), 1e-5)


def test_signal_layers_round_trip_through_an_engine_file(tmp_path):
    """Attributes with a dtype (output_datatype) and a run-time axis (None) survive the file."""
    ins = [In("x", signal((2, 6, 5, 2)), dims=["b", "m", "k", 2]), In("n", np.array(8, I64), dims=[]),
           In("axis", np.array(-3, I64), dims=[])]
    size = [In("size", np.array(9, I64), dims=[])]
    for model, feeds in ((make_model("DFT", ins, 20, inverse=1, onesided=1), feeds_of(ins)),
                         (make_model("BlackmanWindow", size, output_datatype=TensorProto.DOUBLE, periodic=0),
                          feeds_of(size))):
        path = tmp_path / "signal.ember"
        ember.build(model, ember.BuildConfig(device="cpu")).save(str(path))
        with ember.load(str(path)).create_context() as ctx:
            got = np.asarray(ctx.infer(dict(feeds))["y"])
        assert_close(got, run_reference(model, feeds), 1e-6)

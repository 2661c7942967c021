"""The ember command line end to end: build, run and inspect a small ONNX model."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ember.cli import main
from ember.errors import InputError
from ember.tools.args import parse_shapes


def _tiny_cnn() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1)]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = _tiny_cnn()
    onnx.save(model, d / "tiny.onnx")
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    import onnxruntime as ort

    sess = ort.InferenceSession((d / "tiny.onnx").as_posix(), providers=["CPUExecutionProvider"])
    return d, x, sess.run(None, {"x": x})[0]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_build_run_inspect(files, capsys):
    d, _, want = files
    code, out, err = _run(capsys, "build", d / "tiny.onnx", "-o", d / "tiny.ember", "--shapes", "x:2x3x8x8",
                          "--timing-cache", d / "cache.json", "--tune-cpu")
    assert code == 0, err
    assert out.startswith(f"built {d / 'tiny.ember'}: ") and "from 6 ONNX nodes" in out
    assert (d / "tiny.ember").exists() and (d / "cache.json").exists()

    code, out, err = _run(capsys, "run", d / "tiny.ember", "--input", f"x={d / 'x.npy'}")
    assert code == 0, err
    assert out.startswith("probs: float32[2, 5] [")

    code, out, err = _run(capsys, "run", d / "tiny.ember", "--input", f"x={d / 'x.npy'}",
                          "--output", d / "out.npz")
    assert code == 0, err
    with np.load(d / "out.npz") as got:
        np.testing.assert_allclose(got["probs"], want, rtol=1e-4, atol=1e-6)

    code, out, err = _run(capsys, "inspect", d / "tiny.ember")
    assert code == 0, err
    assert "from 6 ONNX nodes" in out and "memory plan: peak" in out and "weights: " in out
    assert "input  x: float32[2, 3, 8, 8]" in out
    for column in ("layer", "kind", "tactic", "precision", "rule"):
        assert column in out
    assert "Softmax" in out and "float32[2, 5]" in out


def test_inspect_model_and_json(files, capsys):
    d, _, _ = files
    code, out, err = _run(capsys, "inspect", d / "tiny.onnx")
    assert code == 0, err
    assert "from 6 ONNX nodes" in out and "allowed [0.., 3, 8, 8]" in out
    code, out, err = _run(capsys, "inspect", "--json", d / "tiny.onnx", "--shapes", "x:1x3x8x8")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["inputs"][0]["shape"] == [1, 3, 8, 8] and manifest["layers"]


def test_run_model_built_on_the_fly_with_profile(files, capsys):
    d, x, want = files
    profile = ["--min-shapes", "x:1x3x8x8", "--max-shapes", "x:4x3x8x8"]
    code, out, err = _run(capsys, "run", d / "tiny.onnx", "--input", f"x={d / 'x.npy'}",
                          "--output", d / "fly.npz", *profile)
    assert code == 0, err
    with np.load(d / "fly.npz") as got:
        np.testing.assert_allclose(got["probs"], want, rtol=1e-4, atol=1e-6)
    big = d / "big.npy"
    np.save(big, np.zeros((5, 3, 8, 8), np.float32))
    code, out, err = _run(capsys, "run", d / "tiny.onnx", "--input", f"x={big}", *profile)
    assert code == 1 and err == ("error: input 'x' has shape [5, 3, 8, 8] but the engine's profile allows "
                                 "[1..4, 3, 8, 8]; rebuild with a wider --max-shapes\n")


def test_errors_are_one_line_without_traceback(files, capsys):
    d, _, _ = files
    cases = [
        (["build", d / "nope.onnx"], "error: model file"),
        (["run", d / "tiny.onnx"], "error: missing input 'x'"),
        (["run", d / "tiny.onnx", "--input", "x=missing.npy"], "error: --input 'x=missing.npy': cannot read"),
        (["build", d / "tiny.onnx", "--shapes", "x:2xAx8"], "error: --shapes 'x:2xAx8': bad shape"),
        (["build", d / "tiny.onnx", "--max-shapes", "x:2x3x8x8"], "error: input 'x' needs both --min-shapes"),
        (["inspect", d / "x.npy"], "error: "),
    ]
    for argv, start in cases:
        code, out, err = _run(capsys, *argv)
        assert code == 1 and err.startswith(start), (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1


def test_parse_shapes():
    assert parse_shapes(["a:1x3,b:2", "c:0:4x4"]) == {"a": (1, 3), "b": (2,), "c:0": (4, 4)}
    with pytest.raises(InputError, match="write name:dims"):
        parse_shapes(["1x3"])


def test_python_dash_m_and_dump_passes(files, tmp_path):
    d, _, _ = files
    dump = tmp_path / "passes"
    proc = subprocess.run([sys.executable, "-m", "ember", "build", str(d / "tiny.onnx"), "-o",
                           str(tmp_path / "t.ember"), "--dump-passes", str(dump)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dumps = sorted(p.name for p in dump.iterdir())
    assert dumps and dumps[0].startswith("00-")


def test_run_random_inputs_on_an_engine_file(files, capsys, tmp_path):
    d, _, _ = files
    import onnxruntime as ort

    engine = tmp_path / "dyn.ember"
    code, out, err = _run(capsys, "build", d / "tiny.onnx", "-o", engine, "--min-shapes", "x:1x3x8x8",
                          "--opt-shapes", "x:3x3x8x8", "--max-shapes", "x:4x3x8x8")
    assert code == 0, err
    sess = ort.InferenceSession((d / "tiny.onnx").as_posix(), providers=["CPUExecutionProvider"])
    # no --shapes: the profile's opt shape; the values are N(0, 1) from the seed
    code, out, err = _run(capsys, "run", engine, "--random", "--seed", "5", "--output", tmp_path / "o.npz")
    assert code == 0, err
    assert out.splitlines()[0] == "input x: float32[3, 3, 8, 8] random (seed 5)"
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with np.load(tmp_path / "o.npz") as got:
        np.testing.assert_allclose(got["probs"], sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-6)
    # --shapes sizes the random input of an engine file; outputs printed with their stats
    code, out, err = _run(capsys, "run", engine, "--random", "--shapes", "x:2x3x8x8")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "input x: float32[2, 3, 8, 8] random (seed 0)"
    assert lines[1].startswith("probs: float32[2, 5] [")
    assert lines[2].startswith("  min ") and " max " in lines[2] and " mean 0.2 " in lines[2] and " std " in lines[2]


def test_run_random_errors_say_what_to_pass(files, capsys, tmp_path):
    d, _, _ = files
    engine = tmp_path / "dyn.ember"
    assert _run(capsys, "build", d / "tiny.onnx", "-o", engine)[0] == 0
    cases = [
        (["run", engine, "--random"],
         "error: input 'x' has a dynamic dim 0 ('N') and the engine has no profile for it; pass its shape "
         "with --shapes x:1x3x8x8 (any size for dim 0)\n"),
        (["run", engine, "--random", "--shapes", "y:1x3x8x8"],
         "error: --shapes names 'y', which is not an input; the inputs are 'x'\n"),
        (["run", engine, "--random", "--shapes", "x:1x4x8x8"],
         "error: --shapes gives input 'x' size 4 in dim 1, which is fixed at 3 (float32['N', 3, 8, 8])\n"),
        (["run", engine, "--random", "--shapes", "x:2x3x8x8", "--input", f"x={d / 'x.npy'}", "--shapes", "x:1x3x8x8"],
         "error: input 'x' comes from --input with shape [2, 3, 8, 8] but --shapes gives [1, 3, 8, 8]; "
         "drop one of them\n"),
        (["run", engine, "--seed", "1"], "error: --seed only applies to random inputs; add --random\n"),
    ]
    for argv, want in cases:
        code, out, err = _run(capsys, *argv)
        assert (code, err) == (1, want), argv


def test_layout_option_reaches_the_build(files, capsys):
    d, _, _ = files
    code, out, err = _run(capsys, "inspect", "--json", d / "tiny.onnx", "--shapes", "x:1x3x8x8", "--layout", "nchw")
    assert code == 0, err
    assert json.loads(out)["config"]["layout"] == "nchw"
    code, out, err = _run(capsys, "inspect", "--no-layers", d / "tiny.onnx", "--shapes", "x:1x3x8x8")
    assert code == 0, err
    assert "nhwc preferred" in out  # auto: channels-last on the CPU too
    with pytest.raises(SystemExit):
        main(["inspect", str(d / "tiny.onnx"), "--layout", "chw"])


def test_int8_commands_are_registered(capsys):
    from ember.cli import make_parser

    parser = make_parser()
    args = parser.parse_args(["build", "m.onnx", "--precision", "int8", "--calib-data", "c.npz",
                              "--calibrator", "mse", "--calib-cache", "m.calib", "--calib-percentile", "99.9"])
    assert (args.precision, args.calib_data, args.calibrator, args.calib_cache, args.calib_percentile) == \
        ("int8", "c.npz", "mse", "m.calib", 99.9)
    args = parser.parse_args(["debug-precision", "m.onnx", "--calib-data", "c.npz", "--top", "5"])
    assert args.top == 5 and args.batches == 8 and not hasattr(args, "precision")
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "m.onnx", "--calibrator", "kl"])
    assert "debug-precision" in parser.format_help()
    capsys.readouterr()


def test_ember_warnings_are_one_line(capsys, monkeypatch):
    import warnings

    from ember.builder.calibration import CalibrationWarning
    from ember.tools import build as build_tool

    def warn(args):
        warnings.warn("a cache is not used", CalibrationWarning, stacklevel=2)
        return 0

    monkeypatch.setattr(build_tool, "run", warn)
    assert main(["build", "m.onnx"]) == 0
    assert capsys.readouterr().err == "warning: a cache is not used\n"


def test_threads_sets_the_cpu_engines_thread_count(files, capsys, monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)  # the test process's pool stays as it is
    model = str(files[0] / "tiny.onnx")
    assert main(["--threads", "1", "inspect", model]) == 0
    assert seen == [1]
    with pytest.raises(SystemExit):
        main(["--threads", "0", "inspect", model])
    assert "--threads 0: give 1 or more threads" in capsys.readouterr().err and seen == [1]

"""The TensorFlow and Keras rows of ``ember.frontends.load``'s table without TensorFlow: files
are recognized from their suffix or first bytes, ``import ember`` never imports TensorFlow, and
a user without the extra is told how to install it. Runs with or without TensorFlow."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ember.errors import ModelLoadError
from ember.frontends import detect, formats, load
from ember.frontends.tensorflow import source

#: A GraphDef written by hand: node {name: "x" op: "Placeholder"} versions {producer: 1}.
_NODE = b"\x0a\x01x\x12\x0bPlaceholder"
GRAPH_DEF = b"\x0a" + bytes([len(_NODE)]) + _NODE + b"\x22\x02\x08\x01"
#: A SavedModel proto: saved_model_schema_version 1, one (empty) meta graph.
SAVED_MODEL = b"\x08\x01\x12\x00"


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {"pb": tmp_path / "frozen.pb", "bin": tmp_path / "frozen.bin", "dir": tmp_path / "exported",
           "keras": tmp_path / "model.keras", "zip": tmp_path / "model.zip", "h5": tmp_path / "model.h5",
           "hdf": tmp_path / "weights.dat"}
    out["pb"].write_bytes(GRAPH_DEF)
    out["bin"].write_bytes(GRAPH_DEF)
    out["dir"].mkdir()
    (out["dir"] / "saved_model.pb").write_bytes(SAVED_MODEL)
    for name in ("keras", "zip"):
        with zipfile.ZipFile(out[name], "w") as z:
            z.writestr("config.json", "{}")
            z.writestr("metadata.json", "{}")
    out["h5"].write_bytes(source.HDF5_MAGIC + b"\x00" * 64)
    out["hdf"].write_bytes(source.HDF5_MAGIC + b"\x00" * 64)
    return out


def test_the_rows_are_in_the_table() -> None:
    assert {"tensorflow", "keras"} <= set(formats())


def test_files_are_recognized_by_suffix_and_by_content(files: dict[str, Path]) -> None:
    assert detect(files["pb"]).name == "tensorflow"
    assert detect(files["bin"]).name == "tensorflow"  # content: a GraphDef
    assert detect(files["dir"]).name == "tensorflow"  # a SavedModel folder
    assert detect(files["dir"] / "saved_model.pb").name == "tensorflow"
    assert detect(files["keras"]).name == "keras"
    assert detect(files["zip"]).name == "keras"  # content: a Keras v3 archive
    assert detect(files["h5"]).name == "keras"
    assert detect(files["hdf"]).name == "keras"  # content: HDF5
    assert detect(GRAPH_DEF).name == "tensorflow"


def test_other_protobufs_are_not_taken_for_graphs() -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    assert not source.tf_recognizes(model.SerializeToString())
    assert not source.graph_def_bytes(b"\x0a\x05GoogLeNet\x12\x00")  # a Caffe NetParameter's name
    assert not source.graph_def_bytes(SAVED_MODEL)
    assert source.is_saved_model_proto(source.message_fields(SAVED_MODEL))


def test_import_ember_and_detection_do_not_import_tensorflow(files: dict[str, Path]) -> None:
    paths = [str(files[k]) for k in ("pb", "bin", "dir", "keras", "zip", "h5")]
    code = ("import sys, ember, ember.frontends, ember.frontends.tensorflow; "
            "from ember.frontends import detect; "
            f"names = [detect(p).name for p in {paths!r}]; "
            "heavy = [m for m in ('tensorflow', 'keras', 'tf2onnx', 'h5py') if m in sys.modules]; "
            "assert not heavy, heavy; print(names)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "tensorflow" in out.stdout and "keras" in out.stdout


@pytest.mark.parametrize("kind", ["keras", "pb", "dir"])
def test_without_the_extra_the_error_says_how_to_install_it(files: dict[str, Path], kind: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("tensorflow", "tf2onnx", "keras"):
        monkeypatch.setitem(sys.modules, module, None)  # `import tensorflow` now raises ImportError
    with pytest.raises(ModelLoadError) as info:
        load(files[kind])
    msg = str(info.value)
    assert "pip install 'ember[tensorflow]'" in msg and files[kind].name in msg


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("triton") is None,
                    reason="needs TensorFlow and Triton installed")
def test_tensorflow_and_triton_never_meet_in_one_process() -> None:
    """Both bundle LLVM and a process that loads both aborts: after TensorFlow, Ember's Triton
    kernels stand aside (no import, the library tactics serve); after Triton, reading a TensorFlow
    model is a clear error, not an abort. Each direction in its own subprocess."""
    import subprocess
    import sys

    after_tf = ("import tensorflow, sys\n"
                "from ember.backends.cuda.libs import llvm_clash, triton_conv, triton_qconv\n"
                "assert triton_conv.triton is None and triton_qconv.triton is None and 'triton' not in sys.modules\n"
                "assert 'another process' in llvm_clash()\n")
    after_triton = ("import triton\n"
                    "from ember.errors import ModelLoadError\n"
                    "from ember.frontends.tensorflow.libs import require\n"
                    "try:\n    require('tensorflow', 'model.keras')\nexcept ModelLoadError as e:\n"
                    "    assert 'Triton' in str(e) and 'another process' in str(e), e\n"
                    "else:\n    raise SystemExit(3)\n")
    for code in (after_tf, after_triton):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

"""The calibration cache: TensorRT's text format, read and written bit-exactly; damaged files."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from ember import __version__
from ember.builder.calibration import Calibrator, read_cache, write_cache
from ember.builder.calibration.cache import float_to_hex, header_line, hex_to_float
from ember.errors import BuildError


def test_hex_is_big_endian_float32_bits():
    assert float_to_hex(1.0) == "3f800000"
    assert float_to_hex(-2.0) == "c0000000"
    assert float_to_hex(0.0078125) == "3c000000"
    assert hex_to_float("3c000000") == 0.0078125
    x = float(np.float32(0.0123))
    assert hex_to_float(float_to_hex(x)) == x
    assert bytes.fromhex(float_to_hex(x)) == struct.pack(">f", x)


def test_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    scales = {f"t{i}": float(np.float32(s)) for i, s in enumerate(rng.uniform(1e-6, 10, 50))}
    scales["(Unnamed Layer* 3) [Convolution]_output"] = float(np.float32(0.5))
    scales["tf/conv:0"] = float(np.float32(0.25))
    path = tmp_path / "model.calib"
    write_cache(path, Calibrator.MSE, scales)
    text = path.read_text()
    assert text.splitlines()[0] == f"EMBER-{__version__}-MSECalibration"
    assert "tf/conv:0: 3e800000" in text.splitlines()
    cache = read_cache(path)
    assert cache.tool == "EMBER" and cache.calibrator is Calibrator.MSE and cache.percentile is None
    assert list(cache.scales) == list(scales)  # order kept
    assert all(struct.pack(">f", cache.scales[k]) == struct.pack(">f", v) for k, v in scales.items())
    write_cache(path, Calibrator.MSE, cache.scales)
    assert path.read_text() == text


def test_percentile_header_keeps_its_percentile(tmp_path):
    assert header_line(Calibrator.PERCENTILE, 99.9).endswith("-PercentileCalibration(99.9)")
    write_cache(tmp_path / "c", Calibrator.PERCENTILE, {"x": 0.5}, 99.9)
    cache = read_cache(tmp_path / "c")
    assert cache.calibrator is Calibrator.PERCENTILE and cache.percentile == 99.9
    assert cache.mismatch(Calibrator.PERCENTILE, 99.9, ["x"]) is None
    assert "99.9th percentile, not the 99.99th" in cache.mismatch(Calibrator.PERCENTILE, 99.99, ["x"])


def test_reads_a_tensorrt_cache_written_by_hand(tmp_path):
    path = tmp_path / "trt.cache"
    path.write_text("TRT-8600-EntropyCalibration2\n"
                    "input: 3c010204\n"
                    "(Unnamed Layer* 0) [Convolution]_output: 3d7a2b8c\n"
                    "conv1_relu: 3dcccccd\r\n"
                    "\n")
    cache = read_cache(path)
    assert (cache.tool, cache.version, cache.algorithm) == ("TRT", "8600", "EntropyCalibration2")
    assert cache.calibrator is Calibrator.ENTROPY
    assert cache.scales["input"] == struct.unpack(">f", bytes.fromhex("3c010204"))[0]
    assert cache.scales["conv1_relu"] == float(np.float32(0.1))
    assert len(cache.scales) == 3
    # extra names are fine (TensorRT names tensors Ember fuses away); missing ones are not
    assert cache.mismatch(Calibrator.ENTROPY, 99.99, ["input", "conv1_relu"]) is None
    assert "written by the entropy calibrator, not minmax" in cache.mismatch(Calibrator.MINMAX, 99.99, ["input"])
    assert "no scale for 1 of the engine's 2 tensors ('fc'): it is for another model" in \
        cache.mismatch(Calibrator.ENTROPY, 99.99, ["input", "fc"])
    (tmp_path / "mm").write_text("TRT-100300-MinMaxCalibration\nx: 3f800000\n")
    assert read_cache(tmp_path / "mm").calibrator is Calibrator.MINMAX
    (tmp_path / "legacy").write_text("TRT-7134-LegacyCalibration\nx: 3f800000\n")
    assert "LegacyCalibration, a calibrator Ember does not implement" in \
        read_cache(tmp_path / "legacy").mismatch(Calibrator.ENTROPY, 99.99, ["x"])


@pytest.mark.parametrize("text, line, what", [
    ("", 1, "no header line"),
    ("EntropyCalibration2\nx: 3f800000\n", 1, "is not TOOL-VERSION-CALIBRATOR"),
    ("TRT-8600-FancyCalibration\nx: 3f800000\n", 1, "unknown calibrator 'FancyCalibration'"),
    ("TRT-8600-EntropyCalibration2\nx 3f800000\n", 2, "is not 'tensor_name: <8 hex digits>'"),
    ("TRT-8600-EntropyCalibration2\nx: 3f800000\ny: 3f8000\n", 3, "the scale of 'y' is '3f8000', not 8 hex"),
    ("TRT-8600-EntropyCalibration2\nx: 3f80zz00\n", 2, "not 8 hex digits"),
    ("TRT-8600-EntropyCalibration2\nx: 7fc00000\n", 2, "the scale of 'x' is nan"),
    ("TRT-8600-EntropyCalibration2\nx: bf800000\n", 2, "the scale of 'x' is -1.0"),
    ("TRT-8600-EntropyCalibration2\nx: 3f800000\nx: 3f800000\n", 3, "appears again \\(first on line 2\\)"),
])
def test_damaged_cache_names_the_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "bad.calib"
    path.write_text(text)
    with pytest.raises(BuildError, match=f"calibration cache '.*bad.calib', line {line}: .*{what}.*delete it"):
        read_cache(path)


def test_binary_or_missing_cache(tmp_path):
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(BuildError, match="is not a text file"):
        read_cache(tmp_path / "bin")
    with pytest.raises(BuildError, match="cannot read calibration cache"):
        read_cache(tmp_path / "nope")

"""Calibration data: feed dicts, .npz files and folders, each bad input named."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ember.builder.calibration import calibration_batches
from ember.errors import InputError
from ember.ir import DType
from ember.plan.plan import TensorSpec

FIXED = [TensorSpec("image", DType.FLOAT32, (4, 3), (4, 3), (4, 3)),
         TensorSpec("mask", DType.INT64, (4,), (4,), (4,))]
DYNAMIC = [TensorSpec("x", DType.FLOAT32, ("batch", 2), (1, 2), (None, 2))]


def stacked(n: int) -> dict[str, np.ndarray]:
    return {"image": np.arange(n * 3, dtype=np.float32).reshape(n, 3), "mask": np.ones(n, dtype=np.int64)}


def test_iterable_of_feed_dicts_is_used_as_given():
    feeds = [{"image": np.zeros((4, 3), np.float32), "mask": torch.ones(4, dtype=torch.int64)}] * 3
    assert len(list(calibration_batches(feeds, FIXED))) == 3
    assert len(list(calibration_batches(iter(feeds), FIXED))) == 3  # a generator too


def test_npz_split_into_the_engines_batch_and_the_remainder_left_out(tmp_path):
    np.savez(tmp_path / "calib.npz", **stacked(10))
    batches = list(calibration_batches(tmp_path / "calib.npz", FIXED))
    assert len(batches) == 2 and all(b["image"].shape == (4, 3) for b in batches)
    assert np.array_equal(batches[1]["image"], stacked(10)["image"][4:8])


def test_dynamic_batch_takes_a_given_size_and_keeps_the_last_partial_batch(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((70, 2), np.float32))
    assert [b["x"].shape[0] for b in calibration_batches(tmp_path / "d.npz", DYNAMIC)] == [32, 32, 6]
    assert [b["x"].shape[0] for b in calibration_batches(tmp_path / "d.npz", DYNAMIC, 50)] == [50, 20]


def test_folder_of_npz_files_in_name_order(tmp_path):
    for i in (2, 1):
        data = stacked(4)
        data["image"] += 100 * i
        np.savez(tmp_path / f"part{i}.npz", **data)
    (tmp_path / "notes.txt").write_text("not data")
    batches = list(calibration_batches(tmp_path, FIXED))
    assert [b["image"][0, 0] for b in batches] == [100.0, 200.0]


def test_a_dict_of_stacked_arrays_is_like_an_npz():
    assert len(list(calibration_batches(stacked(8), FIXED))) == 2


def test_wrong_name_shape_dtype_name_the_file_and_batch(tmp_path):
    bad = stacked(8)
    bad["image"] = bad["image"].astype(np.float64)
    np.savez(tmp_path / "f64.npz", **bad)
    with pytest.raises(InputError, match=r"calibration file '.*f64.npz', batch 0 \(samples 0..3\): input "
                                         r"'image' has dtype float64 .*astype\(np.float32\)"):
        list(calibration_batches(tmp_path / "f64.npz", FIXED))
    feeds = [{"image": np.zeros((4, 3), np.float32), "mask": np.ones(4, np.int64)},
             {"image": np.zeros((4, 5), np.float32), "mask": np.ones(4, np.int64)}]
    with pytest.raises(InputError, match=r"calibration batch 1: input 'image' has shape \[4, 5\]"):
        list(calibration_batches(feeds, FIXED))
    with pytest.raises(InputError, match=r"calibration batch 0: unknown input 'img'"):
        list(calibration_batches([{"img": np.zeros((4, 3), np.float32), "mask": np.ones(4, np.int64)}], FIXED))
    with pytest.raises(InputError, match=r"calibration batch 0: missing input 'mask'"):
        list(calibration_batches([{"image": np.zeros((4, 3), np.float32)}], FIXED))
    with pytest.raises(InputError, match="calibration batch 0 is a list; each batch is a dict"):
        list(calibration_batches([[np.zeros((4, 3))]], FIXED))


def test_npz_problems(tmp_path):
    np.savez(tmp_path / "uneven.npz", image=np.zeros((8, 3), np.float32), mask=np.ones(6, np.int64))
    with pytest.raises(InputError, match=r"uneven.npz': the arrays hold different numbers of samples "
                                         r".*image: 8, mask: 6"):
        list(calibration_batches(tmp_path / "uneven.npz", FIXED))
    np.savez(tmp_path / "few.npz", **stacked(3))
    with pytest.raises(InputError, match="few.npz' holds 3 samples, fewer than the engine's batch size 4"):
        list(calibration_batches(tmp_path / "few.npz", FIXED))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz' cannot be read as an .npz file"):
        list(calibration_batches(tmp_path / "junk.npz", FIXED))
    np.save(tmp_path / "one.npy", np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match="one.npy' holds one unnamed array"):
        list(calibration_batches(tmp_path / "one.npy", FIXED))
    np.savez(tmp_path / "obj.npz", image=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="obj.npz' is damaged or holds objects"):
        list(calibration_batches(tmp_path / "obj.npz", FIXED))


@pytest.mark.parametrize("source", [[], {}, "EMPTY_DIR", "MISSING", iter([])])
def test_empty_data_says_what_to_pass(tmp_path, source):
    if source == "EMPTY_DIR":
        source = tmp_path
    elif source == "MISSING":
        source = str(tmp_path / "missing.npz")
    with pytest.raises(InputError, match=r"give an iterable of \{input name: array\} dicts, an .npz file whose "
                                         r"arrays are named after the engine's inputs \('image' \(float32\[4, 3\]\)"):
        list(calibration_batches(source, FIXED))


def test_not_data_at_all():
    with pytest.raises(InputError, match="calibration data is a ndarray; give an iterable"):
        list(calibration_batches(np.zeros((4, 3)), FIXED))
    with pytest.raises(InputError, match="batch_size 0 must be 1 or more"):
        list(calibration_batches([], FIXED, 0))

"""RoiAlign against ONNX's reference implementation (``onnx.reference``), built and run through
Ember: both pooling modes, both coordinate transformations, fixed and adaptive sampling, ROIs
partly or wholly outside the image, degenerate and empty ROI lists, opset 10's default, float64 and
float16, and the errors bad inputs give."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import ember
from ember.backends.cpu.kernels import roi as roi_kernels
from ember.errors import IndexRangeError, ShapeError
from ember.ir.graph import Node
from ember.ir.optype import OpType
from ember.ops.attrs import RoiAlignAttrs

ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16}

#: ROIs (x1, y1, x2, y2) in image pixels: inside, at the border, partly and wholly outside,
#: tiny, inverted (x2 < x1), and one larger than the image.
ROIS = np.array([[0, 0, 9, 9], [0, 5, 4, 9], [5, 5, 9, 9], [-3, -2, 14, 13], [2.2, 3.1, 2.4, 3.3],
                 [4, 4, 2, 1], [-20, -20, -15, -12], [11, 1, 30, 40], [1.5, 0.25, 7.75, 6.5]])


def _model(opset: int = 22, dtype=np.float32, rois_shape=None, **attrs):
    node = helper.make_node("RoiAlign", ["X", "rois", "batch_indices"], ["Y"], name="roi_align", **attrs)
    t = ONNX_TYPES[dtype]
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("X", t, [2, 3, 10, 12]),
         helper.make_tensor_value_info("rois", t, rois_shape or ["num_rois", 4]),
         helper.make_tensor_value_info("batch_indices", TensorProto.INT64, [(rois_shape or ["num_rois"])[0]])],
        [helper.make_tensor_value_info("Y", t, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _inputs(dtype=np.float32, rois=ROIS):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 10, 12)).astype(dtype)
    idx = (np.arange(len(rois)) % 2).astype(np.int64)
    return {"X": x, "rois": rois.astype(dtype), "batch_indices": idx}


def _run(model, feeds, **build):
    engine = ember.build(model, ember.BuildConfig(device="cpu", **build))
    with engine.create_context() as ctx:
        return ctx.infer(feeds)["Y"]


def _reference(model, feeds):
    return ReferenceEvaluator(model).run(None, feeds)[0]


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("coord", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("sampling_ratio", [0, 2, 3])
def test_roi_align_matches_the_onnx_reference(mode, coord, sampling_ratio):
    model = _model(mode=mode, coordinate_transformation_mode=coord, output_height=5, output_width=4,
                   sampling_ratio=sampling_ratio, spatial_scale=0.8)
    feeds = _inputs()
    out, ref = _run(model, feeds), _reference(model, feeds)
    assert out.shape == ref.shape == (len(ROIS), 3, 5, 4)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert np.all(out[6] == 0), "a ROI wholly outside the image pools zeros"


def test_max_mode_takes_the_largest_weighted_neighbour_not_the_blend():
    """ONNX's max mode: over the points, the max of w_i * v_i over the four neighbours. On a
    constant image of 1s a point's blend is 1 but its largest weighted neighbour is below 1."""
    model = _model(mode="max", output_height=1, output_width=1, sampling_ratio=1)
    feeds = {"X": np.ones((2, 3, 10, 12), np.float32), "rois": np.array([[1.0, 1.0, 3.0, 3.0]], np.float32),
             "batch_indices": np.array([0], np.int64)}
    out, ref = _run(model, feeds), _reference(model, feeds)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    np.testing.assert_allclose(out, 0.25)  # the point (1.5, 1.5) - 0.5 shift -> (1.5, 1.5): 4 weights of 1/4


def test_opset_10_has_no_coordinate_attribute_and_does_not_shift():
    """Opset 16's ``output_half_pixel`` is "the backward-compatible behavior" (the spec), i.e.
    opset 10's, as ONNX Runtime runs it; ``onnx.reference`` has one RoiAlign for every opset
    and so applies the new default (half_pixel) to opset 10 models as well."""
    model = _model(opset=10, output_height=3, output_width=3, sampling_ratio=2)
    feeds = _inputs()
    out = _run(model, feeds)
    unshifted = _model(opset=16, coordinate_transformation_mode="output_half_pixel", output_height=3,
                       output_width=3, sampling_ratio=2)
    np.testing.assert_allclose(out, _reference(unshifted, feeds), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, _reference(model, feeds)), "opset 10 must not shift by half a pixel"


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float16, 2e-2)])
def test_other_float_types(dtype, tol):
    model = _model(dtype=dtype, mode="avg", output_height=2, output_width=3, sampling_ratio=0)
    feeds = _inputs(dtype)
    out = _run(model, feeds)
    assert out.dtype == dtype
    ref = _reference(_model(dtype=np.float64, mode="avg", output_height=2, output_width=3, sampling_ratio=0),
                     {k: v.astype(np.float64) if v.dtype == dtype else v for k, v in feeds.items()})
    np.testing.assert_allclose(out.astype(np.float64), ref, rtol=tol, atol=tol)


def test_an_empty_roi_list_gives_an_empty_output():
    model = _model(output_height=2, output_width=2)
    feeds = _inputs(rois=np.zeros((0, 4), np.float32))
    out = _run(model, feeds)
    assert out.shape == (0, 3, 2, 2)


def test_a_static_empty_roi_list_builds():
    model = _model(output_height=2, output_width=2, rois_shape=[0, 4])
    out = _run(model, _inputs(rois=np.zeros((0, 4), np.float32)))
    assert out.shape == (0, 3, 2, 2)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_chunks_of_rois_give_the_same_result(monkeypatch, mode, sampling_ratio):
    """Many ROIs are processed in chunks (adaptive ones grouped by lattice size, out of order);
    chunk boundaries must not change anything."""
    model = _model(mode=mode, output_height=3, output_width=3, sampling_ratio=sampling_ratio)
    feeds = _inputs()
    ref = _reference(model, feeds)
    monkeypatch.setattr(roi_kernels, "CHUNK_ELEMENTS", 1)  # one ROI per chunk
    np.testing.assert_allclose(_run(model, feeds), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [2, -1])
def test_a_batch_index_out_of_range_names_the_node(bad):
    model = _model(output_height=2, output_width=2)
    feeds = _inputs()
    feeds["batch_indices"][3] = bad
    with pytest.raises(IndexRangeError, match=rf"'roi_align'.*batch_indices holds {bad}.*2 images"):
        _run(model, feeds)


def test_rois_that_are_not_n_by_4_are_refused_at_build_naming_the_node():
    with pytest.raises(ShapeError, match=r"roi_align.*rois must be \[num_rois, 4\]"):
        ember.build(_model(rois_shape=[5, 5]), ember.BuildConfig(device="cpu"))


def test_rois_and_batch_indices_of_different_counts_are_refused():
    model = _model()
    model.graph.input[2].type.tensor_type.shape.dim[0].dim_value = 3
    model.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 4
    with pytest.raises(ShapeError, match=r"roi_align.*4 rois but 3 batch_indices"):
        ember.build(model, ember.BuildConfig(device="cpu"))


def test_bad_attributes_are_refused_naming_the_node():
    with pytest.raises(ShapeError, match=r"roi_align.*output size 0x2 must be positive"):
        ember.build(_model(output_height=0, output_width=2), ember.BuildConfig(device="cpu"))


@pytest.mark.parametrize("mode,images", [("avg", 1), ("max", 2)])
def test_the_kernel_keeps_every_tensor_on_the_datas_device(mode, images):
    """CUDA runs this generic kernel on the GPU: on the meta device (which refuses CPU tensors
    beside its own as CUDA does) the fixed-sampling path runs end to end (the adaptive one and
    average pooling over several images read values: the lattice size, the images present)."""
    a = RoiAlignAttrs(mode=mode, output_height=2, output_width=3, sampling_ratio=2)
    node = Node("roi_align", OpType.ROI_ALIGN, ("X", "rois", "batch_indices"), ("Y",), a)
    meta = torch.device("meta")
    out = roi_kernels.roi_align(node, torch.empty(images, 3, 10, 12, device=meta), torch.empty(5, 4, device=meta),
                                torch.empty(5, dtype=torch.int64, device=meta), a)
    assert out.device == meta and tuple(out.shape) == (5, 3, 2, 3)


@pytest.mark.cuda
def test_roi_align_on_cuda_matches_the_reference():
    model = _model(mode="avg", output_height=5, output_width=4, sampling_ratio=0, spatial_scale=0.8)
    feeds = _inputs()
    engine = ember.build(model, ember.BuildConfig(device="cuda"))
    with engine.create_context() as ctx:
        out = ctx.infer(feeds)["Y"]
    np.testing.assert_allclose(out, _reference(model, feeds), rtol=1e-4, atol=1e-5)


def test_an_engine_with_roi_align_survives_save_and_load(tmp_path):
    model = _model(mode="max", coordinate_transformation_mode="output_half_pixel", output_height=2,
                   output_width=3, sampling_ratio=0, spatial_scale=0.5)
    feeds = _inputs()
    engine = ember.build(model, ember.BuildConfig(device="cpu"))
    engine.save(tmp_path / "roi.ember")
    with ember.load(tmp_path / "roi.ember").create_context() as ctx:
        out = ctx.infer(feeds)["Y"]
    np.testing.assert_allclose(out, _reference(model, feeds), rtol=1e-5, atol=1e-6)

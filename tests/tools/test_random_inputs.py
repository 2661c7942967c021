"""Random inputs shared by ``ember run --random``, ``ember compare`` and ``ember bench``:
shapes (given, shared dims, profiles, batch) and values (floats, ids in range, masks, bools)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.errors import InputError
from ember.ir.dtype import DType
from ember.runtime import example_inputs as ti
from ember.tools.bench import BenchOptions, resolve_source

F32, I64 = DType.FLOAT32, DType.INT64


def ids_model() -> onnx.ModelProto:
    """ids[batch, seq] -> Gather(emb[7, 4]); mask[batch, seq] multiplies the result."""
    emb = numpy_helper.from_array(np.arange(28, dtype=np.float32).reshape(7, 4), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed", axis=0),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axes"], ["mu"]),
             helper.make_node("Mul", ["e", "mu"], ["y"], name="mul")]
    axes = numpy_helper.from_array(np.array([2], np.int64), "axes")
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"])]
    graph = helper.make_graph(nodes, "ids", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])], [emb, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_given_shape_sizes_the_dims_other_inputs_share():
    specs = ti.onnx_input_specs(ids_model())
    assert [(s.name, s.shape) for s in specs] == [("ids", ("batch", "seq")), ("mask", ("batch", "seq"))]
    assert ti.resolve_shapes(specs, {"ids": (2, 9)}) == {"ids": (2, 9), "mask": (2, 9)}
    # arrays from files size shared dims the same way, unchecked
    assert ti.resolve_shapes(specs, known={"mask": (3, 5)}) == {"ids": (3, 5), "mask": (3, 5)}


def test_shape_errors_name_the_input_and_what_to_pass():
    specs = [ti.InputSpec("x", F32, ("N", 3, 8, 8), (0, 3, 8, 8)), ti.InputSpec("ids", I64, ("N", "seq"))]
    with pytest.raises(InputError, match=r"input 'x' has a dynamic dim 0 \('N'\) and nothing gives its size; "
                                         r"pass its shape with --shapes x:1x3x8x8"):
        ti.resolve_shapes(specs)
    with pytest.raises(InputError, match=r"input 'ids' has a dynamic dim 1 \('seq'\).*--shapes ids:2x1"):
        ti.resolve_shapes(specs, {"x": (2, 3, 8, 8)})
    with pytest.raises(InputError, match=r"--shapes names 'y', which is not an input; the inputs are 'x', 'ids'"):
        ti.resolve_shapes(specs, {"y": (1,)})
    with pytest.raises(InputError, match=r"has rank 2 but input 'x' has rank 4"):
        ti.resolve_shapes(specs, {"x": (1, 3)})
    with pytest.raises(InputError, match=r"gives input 'x' size 4 in dim 1, which is fixed at 3"):
        ti.resolve_shapes(specs, {"x": (1, 4, 8, 8)})
    with pytest.raises(InputError, match=r"dim 'N' is 2 in input 'x' but 3 in input 'ids'"):
        ti.resolve_shapes(specs, {"x": (2, 3, 8, 8), "ids": (3, 4)})


def test_dynamic_policies_and_batch():
    prof = ti.InputSpec("x", F32, ("N", 3, "H"), (1, 3, 8), opt=(4, 3, 16))
    bare = ti.InputSpec("x", F32, ("N", 3, "H"), (0, 3, 0))
    assert ti.resolve_shapes([prof], dynamic="opt") == {"x": (4, 3, 16)}
    assert ti.resolve_shapes([prof], dynamic="min") == {"x": (1, 3, 8)}
    assert ti.resolve_shapes([bare], dynamic="min") == {"x": (1, 3, 1)}
    with pytest.raises(InputError, match="the engine has no profile for it"):
        ti.resolve_shapes([bare], dynamic="opt")
    with pytest.raises(InputError, match="dynamic dim 2"):
        ti.resolve_shapes([bare], dynamic_batch=1)
    assert ti.resolve_shapes([bare], {"x": (2, 3, 5)}, batch=7) == {"x": (2, 3, 5)}
    static = ti.InputSpec("s", F32, (2, 3))
    assert ti.resolve_shapes([static, prof], batch=7, dynamic="opt") == {"s": (7, 3), "x": (7, 3, 16)}
    assert ti.resolve_shapes([static, prof], dynamic_batch=5, dynamic="opt") == {"s": (2, 3), "x": (5, 3, 16)}
    with pytest.raises(ValueError, match="dynamic="):
        ti.resolve_shapes([prof], dynamic="max")


def test_values_ids_in_range_masks_ones_seeded():
    model = ids_model()
    specs = ti.onnx_input_specs(model) + [ti.InputSpec("flag", DType.BOOL, (64,))]
    assert ti.onnx_int_ranges(model) == {"ids": 7}
    shapes = ti.resolve_shapes(specs, {"ids": (4, 50)})
    feeds = ti.random_inputs(specs, shapes, seed=3, int_ranges=ti.onnx_int_ranges(model))
    assert feeds["ids"].dtype == np.int64 and feeds["ids"].min() >= 0 and feeds["ids"].max() == 6
    assert (feeds["mask"] == 1).all() and feeds["mask"].shape == (4, 50)
    assert feeds["flag"].dtype == bool and 0 < feeds["flag"].sum() < 64
    again = ti.random_inputs(specs, shapes, seed=3, int_ranges=ti.onnx_int_ranges(model))
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    other = ti.random_inputs(specs, shapes, seed=4, int_ranges=ti.onnx_int_ranges(model))
    assert not np.array_equal(feeds["ids"], other["ids"])
    with pytest.raises(InputError, match="input 'h' is bfloat16"):
        ti.random_inputs([ti.InputSpec("h", DType.BFLOAT16, (2,))], {"h": (2,)})


def test_engine_specs_keep_the_profile_opt_and_the_embedding_range():
    engine = ember.build(ids_model(), ember.BuildConfig(profiles={"ids": ((1, 1), (2, 6), (4, 16)),
                                                                  "mask": ((1, 1), (2, 6), (4, 16))}))
    specs = ti.engine_input_specs(engine)
    assert {s.name: s.opt for s in specs} == {"ids": (2, 6), "mask": (2, 6)}
    assert ti.graph_int_ranges(engine.plan.graph) == {"ids": 7}
    feeds = ti.random_inputs(specs, ti.resolve_shapes(specs, dynamic="opt"), int_ranges={"ids": 7})
    with engine.create_context() as ctx:
        y = ctx.infer(feeds)["y"]
    assert y.shape == (2, 6, 4)
    np.testing.assert_array_equal(y, np.arange(28, dtype=np.float32).reshape(7, 4)[feeds["ids"]])


def test_bench_draws_through_the_shared_inputs(tmp_path):
    path = tmp_path / "ids.onnx"
    onnx.save(ids_model(), str(path))
    src = resolve_source(BenchOptions(model=str(path), shapes={"ids": (2, 8)}))
    assert src.feeds["ids"].shape == (2, 8) and src.feeds["mask"].shape == (2, 8)
    assert src.feeds["ids"].max() < 7
    assert resolve_source(BenchOptions(model=str(path), batch=3, shapes={"mask": (3, 5)})).feeds["ids"].shape == (3, 5)
    with pytest.raises(InputError, match=r"input 'ids' has a dynamic dim 1 \('seq'\).*--shapes ids:1x1"):
        resolve_source(BenchOptions(model=str(path)))


def test_array_stats():
    assert ti.array_stats(np.array([1.0, 3.0], np.float32)) == "min 1 max 3 mean 2 std 1"
    assert ti.array_stats(np.array([1.0, np.nan, np.inf])) == "min 1 max 1 mean 1 std 0, NaN 1 Inf 1"
    assert ti.array_stats(np.array([True, False, True])) == "true 2 of 3"
    assert ti.array_stats(np.zeros((0, 3))) == "empty"

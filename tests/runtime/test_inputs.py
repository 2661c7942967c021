"""Every wrong input to ExecutionContext.infer gives an InputError naming the input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ember
from ember.builder.build import build
from ember.errors import EmberError, InputError
from ember.ir import DType, Graph, Node, OpType, TensorType

from runtime_graphs import mlp_graph, mlp_reference

MLP = mlp_graph()  # the unoptimized graph: references use its weights


def _two_input_graph() -> Graph:
    """ids[batch, seq] int64, mask[batch, seq] float32 -> cast(ids) * mask."""
    from ember.ops.attrs import CastAttrs

    nodes = [Node("cast", OpType.CAST, ("ids",), ("idf",), CastAttrs("float32")),
             Node("mul", OpType.MUL, ("idf", "mask"), ("y",))]
    types = {"ids": TensorType(DType.INT64, ("batch", "seq")),
             "mask": TensorType(DType.FLOAT32, ("batch", "seq")),
             "idf": TensorType(DType.FLOAT32, ("batch", "seq")),
             "y": TensorType(DType.FLOAT32, ("batch", "seq"))}
    return Graph("two", nodes, ["ids", "mask"], ["y"], types)


@pytest.fixture(scope="module")
def profiled():
    return build(_two_input_graph(), ember.BuildConfig(profiles={
        "ids": ((1, 1), (1, 128), (8, 512)), "mask": ((1, 1), (1, 128), (8, 512))}))


@pytest.fixture(scope="module")
def static():
    return build(mlp_graph(), ember.BuildConfig(shapes={"x": (2, 6)}))


def _ok(b=1, s=16):
    return {"ids": np.ones((b, s), np.int64), "mask": np.ones((b, s), np.float32)}


def _err(engine, inputs) -> str:
    with engine.create_context() as ctx, pytest.raises(InputError) as e:
        ctx.infer(inputs)
    return str(e.value)


def test_valid_inputs_across_the_profile(profiled):
    with profiled.create_context() as ctx:
        for b, s in [(1, 1), (3, 77), (8, 512)]:
            ids = np.arange(b * s, dtype=np.int64).reshape(b, s)
            mask = np.full((b, s), 0.5, np.float32)
            np.testing.assert_array_equal(ctx.infer({"ids": ids, "mask": mask})["y"], ids * 0.5)


def test_missing_and_unknown_names(profiled):
    msg = _err(profiled, {"ids": np.ones((1, 4), np.int64)})
    assert msg.startswith("missing input 'mask' (float32[1..8, 1..512])")
    msg = _err(profiled, {**_ok(), "token_type_ids": np.ones((1, 16), np.int64)})
    assert msg.startswith("unknown input 'token_type_ids'") and "'ids' (int64[1..8, 1..512])" in msg


def test_wrong_dtype(profiled):
    msg = _err(profiled, {**_ok(), "ids": np.ones((1, 16), np.int32)})
    assert msg == "input 'ids' has dtype int32 but the engine expects int64; convert it with .astype(np.int64)"
    msg = _err(profiled, {"ids": torch.ones(1, 16, dtype=torch.int64), "mask": torch.ones(1, 16, dtype=torch.float16)})
    assert "input 'mask' has dtype float16" in msg and ".to(torch.float32)" in msg


def test_wrong_rank(profiled):
    msg = _err(profiled, {**_ok(), "mask": np.ones((1, 16, 1), np.float32)})
    assert msg == "input 'mask' has shape [1, 16, 1] (rank 3) but the engine expects rank 2: [1..8, 1..512]"


def test_outside_profile(profiled):
    msg = _err(profiled, _ok(1, 600))
    assert msg == ("input 'ids' has shape [1, 600] but the engine's profile allows [1..8, 1..512]; "
                   "rebuild with a wider --max-shapes")
    msg = _err(profiled, _ok(0, 4))
    assert "has shape [0, 4]" in msg and "--min-shapes" in msg


def test_shared_dims_must_agree(profiled):
    msg = _err(profiled, {"ids": np.ones((2, 16), np.int64), "mask": np.ones((2, 15), np.float32)})
    assert "input 'mask' has dim 1 ('seq') = 15 but input 'ids' gives 'seq' = 16" in msg


def test_wrong_static_dim(static):
    msg = _err(static, {"x": np.ones((3, 6), np.float32)})
    assert msg.startswith("input 'x' has shape [3, 6] but the engine expects [2, 6] (dim 0 must be 2)")


def test_not_an_array_or_not_a_dict(static):
    assert "input 'x' is a list" in _err(static, {"x": [[1.0] * 6] * 2})
    assert "infer() takes a dict" in _err(static, [np.ones((2, 6), np.float32)])
    msg = _err(static, {"x": np.ones((2, 6), np.complex64)})
    assert "input 'x' has dtype complex64, which Ember does not support" in msg


def test_numpy_in_numpy_out_torch_in_torch_out(static):
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    with static.create_context() as ctx:
        out_np = ctx.infer({"x": x})
        out_t = ctx.infer({"x": torch.from_numpy(x)})
    assert isinstance(out_np["y"], np.ndarray) and isinstance(out_t["y"], torch.Tensor)
    np.testing.assert_allclose(out_np["y"], mlp_reference(MLP, x)["y"], rtol=1e-5)
    np.testing.assert_array_equal(out_t["y"].numpy(), out_np["y"])


def test_non_contiguous_and_read_only_inputs(static):
    x = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32).T
    x.flags.writeable = False
    with static.create_context() as ctx:
        out = ctx.infer({"x": x})
    np.testing.assert_allclose(out["y"], mlp_reference(MLP, x)["y"], rtol=1e-5)


def test_closed_context_refuses(static):
    ctx = static.create_context()
    ctx.close()
    with pytest.raises(EmberError, match="closed"):
        ctx.infer({"x": np.ones((2, 6), np.float32)})


def test_outputs_do_not_alias_inputs_or_weights():
    g = Graph("id", [Node("i", OpType.IDENTITY, ("x",), ("y",))], ["x"], ["y", "c"],
              {"x": TensorType(DType.FLOAT32, (2,)), "y": TensorType(DType.FLOAT32, (2,)),
               "c": TensorType(DType.FLOAT32, (2,))}, {"c": np.ones(2, np.float32)})
    engine = build(g)
    x = np.zeros(2, np.float32)
    with engine.create_context() as ctx:
        out = ctx.infer({"x": x})
        out["y"][0] = 5
        out["c"][0] = 7
        assert x[0] == 0
        np.testing.assert_array_equal(ctx.infer({"x": x})["c"], [1, 1])


def test_a_context_checks_every_call_after_a_valid_one(profiled):
    """A context skips the field-by-field checks only for inputs exactly like the last valid ones
    (names, array types, dtypes, shapes): any change after a valid call is checked again."""
    import torch

    with profiled.create_context() as ctx:
        ctx.infer(_ok(2, 8))
        ctx.infer(_ok(2, 8))
        with pytest.raises(InputError, match=r"has shape \[2, 600\] but the engine.s profile allows"):
            ctx.infer({"ids": np.ones((2, 600), np.int64), "mask": np.ones((2, 600), np.float32)})
        with pytest.raises(InputError, match="'mask' has dtype float64"):
            ctx.infer({"ids": np.ones((2, 8), np.int64), "mask": np.ones((2, 8), np.float64)})
        with pytest.raises(InputError, match="missing input 'mask'"):
            ctx.infer({"ids": np.ones((2, 8), np.int64)})
        with pytest.raises(InputError, match="unknown input 'extra'"):
            ctx.infer({**_ok(2, 8), "extra": np.ones(1)})
        with pytest.raises(InputError, match="'mask' is a list"):
            ctx.infer({"ids": np.ones((2, 8), np.int64), "mask": [[1.0] * 8] * 2})
        out = ctx.infer({"ids": torch.ones(2, 8, dtype=torch.int64), "mask": torch.ones(2, 8)})
        assert isinstance(out["y"], torch.Tensor)  # torch in, torch out, the same shapes as before
        with pytest.raises(InputError, match="'ids' has dtype int32"):
            ctx.infer({"ids": torch.ones(2, 8, dtype=torch.int32), "mask": torch.ones(2, 8)})
        np.testing.assert_array_equal(ctx.infer(_ok(2, 8))["y"], np.ones((2, 8), np.float32))

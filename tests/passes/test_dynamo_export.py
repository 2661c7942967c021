"""What the ``torch.export``-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``) writes
differently from the TorchScript exporter, and the optimizer making the same plan of both.

Each pattern as a small hand-built graph (Before -> After, outputs against ONNX Runtime), then
modules exported both ways: the optimized graphs must have the same layers.
"""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from ember.frontends.onnx import import_onnx

from passkit import check_against_ort, onnx_model, ops, optimized, optimized_against_ort, rng_const

F32 = np.float32
INT64_MAX = np.iinfo(np.int64).max
NEG_MAX = np.finfo(np.float32).min


def _dynamic(model: onnx.ModelProto, dims: dict[str, list]) -> onnx.ModelProto:
    """``model`` with its inputs' dims replaced (a str is a symbolic dim)."""
    for vi in model.graph.input:
        if vi.name in dims:
            shape = vi.type.tensor_type.shape
            for d, want in zip(shape.dim, dims[vi.name]):
                d.Clear()
                if isinstance(want, str):
                    d.dim_param = want
                else:
                    d.dim_value = want
    return model


# ---- Reshape with allowzero=1 to a shape computed from a dynamic batch ------------------------
def _flatten_model(target_tail: list[int], allowzero: int = 1) -> onnx.ModelProto:
    """``x.view(x.shape[0], -1)`` as the dynamo exporter writes it (Shape, Concat, Reshape with
    allowzero=1), after a ReLU so that the Reshape is not the graph's only node."""
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"),
             oh.make_node("Shape", ["x"], ["n"], name="shape", start=0, end=1),
             oh.make_node("Concat", ["n", "tail"], ["target"], name="concat", axis=0),
             oh.make_node("Reshape", ["r", "target"], ["y"], name="flatten", allowzero=allowzero)]
    model = onnx_model(nodes, {"x": (2, 8, 1, 1)}, ["y"], {"tail": np.asarray(target_tail, np.int64)})
    return _dynamic(model, {"x": ["batch", 8, 1, 1]})


@pytest.mark.parametrize("allowzero", [1, 0])
def test_reshape_of_a_computed_batch_shape_gets_a_constant_target(allowzero):
    model = _flatten_model([8], allowzero)
    out = optimized_against_ort(model, feeds={"x": rng_const(3, 8, 1, 1)})
    assert ops(out.graph) == ["Relu", "Reshape"]  # Shape and Concat are gone
    reshape = out.graph.nodes[1]
    assert out.graph.constants[reshape.inputs[1]].tolist() == [0, 8]
    assert not reshape.attrs.allowzero, "its 0 copies the batch"
    assert out.graph.types["y"].shape == ("batch", 8)
    assert sum(r.fired.get("op(x, shape(...)) with static output => op(x, constant shape)", 0)
               for r in out.stats) == 1


def test_reshape_with_allowzero_and_a_literal_zero_keeps_its_computed_target():
    # [batch, 0, 8] with allowzero: the 0 is a zero-sized dim, which a constant target for
    # allowzero=0 cannot say, so the computed shape stays.
    nodes = [oh.make_node("Shape", ["x"], ["n"], name="shape", start=0, end=1),
             oh.make_node("Concat", ["n", "tail"], ["target"], name="concat", axis=0),
             oh.make_node("Reshape", ["x", "target"], ["y"], name="reshape", allowzero=1)]
    model = _dynamic(onnx_model(nodes, {"x": (2, 0, 4)}, ["y"], {"tail": np.asarray([0, 8], np.int64)}),
                     {"x": ["batch", 0, 4]})
    graph = optimized(import_onnx(model)).graph
    assert "Shape" in ops(graph) and "Concat" in ops(graph)


# ---- Slice over a whole symbolic axis ----------------------------------------------------------
def _mask_slice(start: int) -> onnx.ModelProto:
    """``mask[:, None, None, :]`` of a dynamic batch as the dynamo exporter writes it (a Slice of
    dim 0 from 0 to INT64_MAX first), then the additive mask."""
    nodes = [oh.make_node("Slice", ["m", "s0", "e0", "a0"], ["ms"], name="slice"),
             oh.make_node("Unsqueeze", ["ms", "a1"], ["mu"], name="unsqueeze"),
             oh.make_node("Cast", ["mu"], ["mf"], name="cast", to=TensorProto.FLOAT),
             oh.make_node("Mul", ["mf", "big"], ["y"], name="bias")]
    consts = {"s0": np.asarray([start], np.int64), "e0": np.asarray([INT64_MAX], np.int64),
              "a0": np.asarray([0], np.int64), "a1": np.asarray([1, 2], np.int64), "big": F32(-1e4)}
    model = onnx_model(nodes, {"m": (2, 5)}, ["y"], consts, input_types={"m": TensorProto.INT64})
    return _dynamic(model, {"m": ["batch", 5]})


def test_slice_over_a_whole_symbolic_axis_is_removed():
    feeds = {"m": np.asarray([[1, 1, 0, 0, 1], [0, 1, 1, 1, 1], [1, 0, 1, 0, 1]], np.int64)}
    out = optimized_against_ort(_mask_slice(0), feeds=feeds)
    assert "Slice" not in ops(out.graph)
    assert sum(r.fired.get("x -> noop(x) => x", 0) for r in out.stats) >= 1


def test_slice_from_one_on_a_symbolic_axis_stays():
    feeds = {"m": np.asarray([[1, 1, 0, 0, 1], [0, 1, 1, 1, 1], [1, 0, 1, 0, 1]], np.int64)}
    out = optimized_against_ort(_mask_slice(1), feeds=feeds)
    assert "Slice" in ops(out.graph)


# ---- k.transpose(-2, -1) written with reshapes (torchlib's scaled_dot_product_attention) -------
def _swap_model(mid: tuple[int, ...], perm: tuple[int, ...], end: tuple[int, ...]) -> onnx.ModelProto:
    nodes = [oh.make_node("Transpose", ["x"], ["k"], name="heads", perm=[0, 2, 1, 3]),
             oh.make_node("Reshape", ["k", "mid"], ["k3"], name="merge"),
             oh.make_node("Transpose", ["k3"], ["kt3"], name="swap", perm=list(perm)),
             oh.make_node("Reshape", ["kt3", "end"], ["y"], name="restore")]
    consts = {"mid": np.asarray(mid, np.int64), "end": np.asarray(end, np.int64)}
    return onnx_model(nodes, {"x": (2, 5, 3, 4)}, ["y"], consts)


def test_last_two_axes_swapped_through_reshapes_become_one_transpose():
    model = _swap_model((-1, 5, 4), (0, 2, 1), (2, 3, 4, 5))
    out = optimized_against_ort(model, feeds={"x": rng_const(2, 5, 3, 4)})
    assert ops(out.graph) == ["Transpose"]  # composed with the heads' transpose
    assert out.graph.nodes[0].attrs.perm == (0, 2, 3, 1)
    assert sum(r.fired.get("reshape(transpose(reshape(x, [-1, a, b]), (0, 2, 1)), [..., b, a]) "
                           "=> transpose(x, swap last two)", 0) for r in out.stats) == 1


def test_reshapes_that_regroup_the_last_axes_are_not_a_swap():
    # the first reshape splits the last two axes differently: not the same elements
    model = _swap_model((-1, 4, 5), (0, 2, 1), (2, 3, 5, 4))
    out = check_against_ort(model, feeds={"x": rng_const(2, 5, 3, 4)})
    assert ops(out).count("Reshape") == 2


# ---- scaled_dot_product_attention with the NaN guard after the softmax -------------------------
def _sdpa(mask: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """torchlib's SDPA decomposition: q and k^T each scaled by sqrt(scale), scores + mask,
    Softmax, ``Where(IsNaN(p), 0, p)``, @ v. ``mask``: "none", "where" (Hugging Face's
    ``Where(keep, 0, finfo.min)`` of a boolean input), "input" (a float input, may be -inf),
    "where64" (``Where(keep, 0, -1e300)`` in float64 cast to float32: -inf)."""
    s = F32(8 ** -0.25)
    nodes = [oh.make_node("Mul", ["q", "s"], ["qs"], name="q_scale"),
             oh.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 1, 3, 2]),
             oh.make_node("Mul", ["kt", "s"], ["ks"], name="k_scale"),
             oh.make_node("MatMul", ["qs", "ks"], ["scores"], name="qk")]
    inputs = {"q": (1, 2, 4, 8), "k": (1, 2, 4, 8), "v": (1, 2, 4, 8)}
    types = {}
    logits = "scores"
    if mask == "where":
        nodes.append(oh.make_node("Where", ["keep", "zero", "neg"], ["bias"], name="mask"))
        inputs["keep"] = (1, 1, 1, 4)
        types["keep"] = TensorProto.BOOL
    elif mask == "input":
        inputs["bias"] = (1, 1, 1, 4)
    elif mask == "where64":
        nodes += [oh.make_node("Where", ["keep", "zero64", "neg64"], ["bias64"], name="mask"),
                  oh.make_node("Cast", ["bias64"], ["bias"], name="mask_cast", to=TensorProto.FLOAT)]
        inputs["keep"] = (1, 1, 1, 4)
        types["keep"] = TensorProto.BOOL
    if mask != "none":
        nodes.append(oh.make_node("Add", ["scores", "bias"], ["masked"], name="mask_add"))
        logits = "masked"
    nodes += [oh.make_node("Softmax", [logits], ["p"], name="softmax", axis=-1),
              oh.make_node("IsNaN", ["p"], ["nan"], name="isnan"),
              oh.make_node("Where", ["nan", "zero", "p"], ["pg"], name="guard"),
              oh.make_node("MatMul", ["pg", "v"], ["y"], name="pv")]
    consts = {"s": s, "zero": F32(0.0)}
    if mask == "where":
        consts["neg"] = F32(NEG_MAX)
    elif mask == "where64":
        consts.update(zero64=np.float64(0.0), neg64=np.float64(-1e300))
    model = onnx_model(nodes, inputs, ["y"], consts, input_types=types)
    feeds = {k: rng_const(*shape, seed=i) for i, (k, shape) in enumerate(inputs.items())}
    if mask in ("where", "where64"):
        feeds["keep"] = np.asarray([True, True, False, True]).reshape(1, 1, 1, 4)
    elif mask == "input":
        feeds["bias"] = np.asarray([0, 0, -np.inf, 0], F32).reshape(1, 1, 1, 4)
    return model, feeds


@pytest.mark.parametrize("mask", ["none", "where"])
def test_guarded_sdpa_becomes_fused_attention(mask):
    model, feeds = _sdpa(mask)
    out = check_against_ort(model, feeds=feeds)
    assert ops(out).count("FusedAttention") == 1
    assert not {"Softmax", "IsNaN", "Where", "MatMul"} & set(ops(out)) - ({"Where"} if mask == "where" else set())
    node = next(n for n in out.nodes if n.op.value == "FusedAttention")
    assert abs(node.attrs.scale - 8 ** -0.5) < 1e-6 and node.attrs.k_transposed
    assert "guard" in node.origin


def test_guarded_sdpa_with_a_mask_that_may_hide_a_row_keeps_the_guard():
    model, feeds = _sdpa("input")
    out = check_against_ort(model, feeds=feeds)
    assert "FusedAttention" not in ops(out)
    # a row hidden entirely: zeros through the guard, as ONNX Runtime computes the file
    feeds["bias"] = np.full((1, 1, 1, 4), -np.inf, F32)
    out = check_against_ort(model, feeds=feeds)
    assert "FusedAttention" not in ops(out)


def test_guarded_sdpa_with_a_mask_cast_out_of_range_keeps_the_guard():
    # -1e300 is finite in float64 and -inf in float32: a row can be hidden entirely
    model, feeds = _sdpa("where64")
    feeds["keep"] = np.zeros((1, 1, 1, 4), bool)
    out = check_against_ort(model, feeds=feeds)
    assert "FusedAttention" not in ops(out)


# ---- ONNX Attention (opset 23) -----------------------------------------------------------------
def _onnx_attention(mask: str | None, **attrs) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    inputs = {"q": (2, 2, 4, 8), "k": (2, 2, 5, 8), "v": (2, 2, 5, 8)}
    consts: dict[str, np.ndarray] = {}
    names = ["q", "k", "v"]
    if mask == "float":
        inputs["m"] = (2, 1, 4, 5)
        names.append("m")
    elif mask in ("bool_const", "bool_all"):
        keep = np.ones((1, 1, 4, 5), bool)
        if mask == "bool_const":
            keep[..., 1] = False
        consts["m"] = keep
        names.append("m")
    nodes = [oh.make_node("Relu", ["q"], ["qr"], name="relu")]
    names[0] = "qr"
    nodes.append(oh.make_node("Attention", names, ["y"], name="attention", **attrs))
    model = onnx_model(nodes, inputs, ["y"], consts, opset=23)
    feeds = {k: rng_const(*s, seed=i) for i, (k, s) in enumerate(inputs.items())}
    return model, feeds


@pytest.mark.parametrize("mask", [None, "bool_const", "bool_all"])
def test_plain_onnx_attention_becomes_fused_attention(mask):
    model, feeds = _onnx_attention(mask, scale=0.3)
    out = check_against_ort(model, feeds=feeds)
    assert ops(out) == ["Relu", "FusedAttention"]
    node = out.nodes[1]
    assert node.attrs.scale == pytest.approx(0.3) and not node.attrs.k_transposed
    assert len(node.inputs) == (4 if mask == "bool_const" else 3)


@pytest.mark.parametrize("mask, attrs", [("float", {}), (None, {"is_causal": 1}), (None, {"softcap": 2.0})])
def test_onnx_attention_beyond_plain_attention_keeps_its_op(mask, attrs):
    # a float mask of the model's input may hide a row (the op zeroes it); causal and softcap
    # are not what FusedAttention computes
    model, feeds = _onnx_attention(mask, **attrs)
    out = check_against_ort(model, feeds=feeds)
    assert "Attention" in ops(out) and "FusedAttention" not in ops(out)


# ---- modules exported by both exporters --------------------------------------------------------
torch = pytest.importorskip("torch")


def _export(module, args, names, exporter: str, dynamic: bool) -> onnx.ModelProto:
    import io
    import warnings

    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            shapes = tuple({0: torch.export.Dim("batch")} for _ in args) if dynamic else None
            return torch.onnx.export(module, args, None, dynamo=True, opset_version=20, input_names=names,
                                     dynamic_shapes=shapes, verbose=False).model_proto
        buf = io.BytesIO()
        axes = {n: {0: "batch"} for n in names} if dynamic else None
        torch.onnx.export(module, args, buf, dynamo=False, opset_version=17, input_names=names, dynamic_axes=axes)
        return onnx.load_from_string(buf.getvalue())


class SdpaBlock(torch.nn.Module):
    """An encoder block on ``F.scaled_dot_product_attention`` with Hugging Face's mask
    (``Where(keep, 0, finfo.min)``), flattened per example at the end."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.out = torch.nn.Linear(d, d)
        self.norm = torch.nn.LayerNorm(d)
        self.ff = torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d))

    def forward(self, x, mask):
        b, s, d = x.shape
        keep = mask[:, None, None, :].bool()
        bias = torch.where(keep, torch.zeros((), dtype=x.dtype), torch.finfo(x.dtype).min)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.norm(x + self.out(a.transpose(1, 2).reshape(b, s, d)))
        x = self.norm(x + self.ff(x))
        return x.view(b, -1)


def _layers(model: onnx.ModelProto) -> collections.Counter:
    """The optimized graph's layers by kind. ``torch.flatten`` is a Flatten from the TorchScript
    exporter and a Reshape from the dynamo one: both are the same view of the same memory, one
    layer either way, so they count as one kind here."""
    kinds = ["Reshape" if op == "Flatten" else op for op in ops(optimized(import_onnx(model)).graph)]
    return collections.Counter(kinds)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic_batch"])
def test_sdpa_block_makes_the_same_layers_from_both_exporters(dynamic):
    torch.manual_seed(0)
    module = SdpaBlock()
    x = torch.randn(2, 6, 32)
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[1, 4:] = 0
    ts = _export(module, (x, mask), ["x", "mask"], "torchscript", dynamic)
    dy = _export(module, (x, mask), ["x", "mask"], "dynamo", dynamic)
    layers, classic = _layers(dy), _layers(ts)
    # the same fused layers; around them the dynamo file needs no more layers (it is one Split
    # where the TorchScript file slices the QKV projection three times)
    fused = ("FusedAttention", "FusedGemm", "SkipLayerNormalization", "FusedElementwise", "Transpose")
    assert {k: layers[k] for k in fused} == {k: classic[k] for k in fused}
    assert sum(layers.values()) <= sum(classic.values()), (layers, classic)
    assert layers["FusedAttention"] == 1 and not {"Softmax", "Shape", "Concat"} & set(layers)
    feeds = {"x": x.numpy(), "mask": mask.numpy()}
    check_against_ort(dy, feeds=feeds)
    check_against_ort(ts, feeds=feeds)


@pytest.mark.parametrize("name", ["bert-tiny", "mobilenet-v3-small"])
def test_zoo_models_make_the_same_layers_from_both_exporters(name):
    from ember import zoo

    for dynamic in (False, True):
        ts = onnx.load(str(zoo.export_onnx(name, dynamic_batch=dynamic, progress=False)))
        dy = onnx.load(str(zoo.export_onnx(name, dynamic_batch=dynamic, exporter="dynamo", opset=20,
                                           progress=False)))
        assert dy.opset_import[0].version == 20
        assert _layers(dy) == _layers(ts), (name, dynamic)

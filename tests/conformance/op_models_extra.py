"""Conformance models for the ops beyond the core families (see ``op_models``): math and logic,
more reductions, indexing, movement, resampling, recurrent, composite and the other norms, with
every opset variant and attribute form, checked against ONNX Runtime. Their ops live in their
families' modules (``ember.ops.activation``, ``reduce``, ``index``, ``movement``, ...); they are
grouped here because the CUDA backend runs most of them through its generic fallback
(``test_extra_ops_cuda``)."""
from __future__ import annotations

import numpy as np

from tests.conformance.op_models import F32, I64, OpCase, _rng, const, feed, rnd, single


def _unary(r) -> list[OpCase]:
    x = rnd(r, 2, 3, 4)
    unit = rnd(r, 2, 3, 4, lo=-0.9, hi=0.9)
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49, -0.51], F32)  # Round: half to even
    cases = [single(op, op, [feed("x", x)]) for op in
             ("Floor", "Ceil", "Sin", "Cos", "Atan", "Sinh", "Cosh", "Asinh", "Softplus", "Softsign")]
    cases += [single(op, op, [feed("x", unit)]) for op in ("Asin", "Acos", "Atanh", "Tan")]
    cases += [
        single("Floor-11", "Floor", [feed("x", x)], opset=11),
        single("Acosh", "Acosh", [feed("x", rnd(r, 3, 4, lo=1.0, hi=4.0))]),
        single("Round", "Round", [feed("x", halves)]),
        single("Sign-float", "Sign", [feed("x", np.array([-2.0, 0.0, 3.5], F32))]),
        single("Sign-int64", "Sign", [feed("x", np.array([-7, 0, 4], I64))], opset=13),
        single("Mish-18", "Mish", [feed("x", x)], opset=18),
        single("Elu", "Elu", [feed("x", x)], alpha=0.7),
        single("Elu-default", "Elu", [feed("x", x)]),
        single("Celu-12", "Celu", [feed("x", x)], opset=12, alpha=0.5),
        single("Selu", "Selu", [feed("x", x)]),
        single("Selu-attrs", "Selu", [feed("x", x)], alpha=2.0, gamma=3.0),
        single("ThresholdedRelu", "ThresholdedRelu", [feed("x", x)], alpha=0.5),
        single("ThresholdedRelu-default", "ThresholdedRelu", [feed("x", x)]),
    ]
    special = np.array([1.0, np.nan, np.inf, -np.inf, 0.0, -3.0], F32)
    cases += [
        single("IsNaN", "IsNaN", [feed("x", special)], opset=13),
        single("IsInf", "IsInf", [feed("x", special)]),
        single("IsInf-positive-only", "IsInf", [feed("x", special)], detect_negative=0),
        single("IsInf-negative-only", "IsInf", [feed("x", special)], detect_positive=0),
    ]
    return cases


def _binary(r) -> list[OpCase]:
    a, b = rnd(r, 2, 3, 4), rnd(r, 4)
    ia = r.integers(-9, 9, (2, 3, 4))
    ib = np.array([3, -2, 5, -7], I64)
    ba, bb = r.random((2, 3, 4)) > 0.5, r.random((3, 1)) > 0.5
    return [
        single("Mod-int-python", "Mod", [feed("a", ia), const("b", ib)]),
        single("Mod-int-fmod", "Mod", [feed("a", ia), const("b", ib)], fmod=1),
        single("Mod-float-fmod", "Mod", [feed("a", a), feed("b", rnd(r, 4, lo=0.5, hi=1.5))], fmod=1),
        single("Mod-10-int", "Mod", [feed("a", ia), feed("b", ib)], opset=10),
        single("And", "And", [feed("a", ba), feed("b", bb)]),
        single("Or", "Or", [feed("a", ba), feed("b", bb)]),
        single("Xor", "Xor", [feed("a", ba), feed("b", bb)]),
        single("GreaterOrEqual", "GreaterOrEqual", [feed("a", np.round(a)), feed("b", np.round(b))]),
        single("LessOrEqual", "LessOrEqual", [feed("a", np.round(a)), feed("b", np.round(b))]),
        single("GreaterOrEqual-int64", "GreaterOrEqual", [feed("a", ia), const("b", ib)], opset=16),
        single("LessOrEqual-12", "LessOrEqual", [feed("a", ia), const("b", ib)], opset=12),
    ]


def _reductions(r) -> list[OpCase]:
    x = rnd(r, 2, 3, 4)
    pos = rnd(r, 2, 3, 4, lo=0.5, hi=1.5)
    axes = lambda *a: const("axes", np.array(a, I64))  # noqa: E731
    cases = []
    for op, data in (("ReduceMin", x), ("ReduceProd", pos), ("ReduceL1", x), ("ReduceL2", x),
                     ("ReduceSumSquare", x), ("ReduceLogSum", pos), ("ReduceLogSumExp", x)):
        cases += [
            single(f"{op}-13-attr", op, [feed("x", data)], opset=13, axes=[1]),
            single(f"{op}-11-nokeep", op, [feed("x", data)], opset=11, axes=[-1, 0], keepdims=0),
            single(f"{op}-13-all", op, [feed("x", data)], opset=13),
            single(f"{op}-18-input", op, [feed("x", data), axes(0, 2)], opset=18),
            single(f"{op}-18-none", op, [feed("x", data)], opset=18, keepdims=0),
        ]
    cases += [
        single("ReduceMin-18-noop", "ReduceMin", [feed("x", x)], opset=18, noop_with_empty_axes=1),
        single("ReduceMin-18-int64", "ReduceMin", [feed("x", r.integers(-9, 9, (3, 4))), axes(1)], opset=18),
        single("ReduceProd-18-runtime-axes", "ReduceProd", [feed("x", pos), feed("axes", np.array([1], I64))],
               opset=18),
    ]
    ties = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, -1.0, -1.0]], F32)
    for op in ("ArgMax", "ArgMin"):
        cases += [
            single(f"{op}-11", op, [feed("x", x)], opset=11, axis=1),
            single(f"{op}-13-nokeep-neg", op, [feed("x", x)], opset=13, axis=-1, keepdims=0),
            single(f"{op}-13-default", op, [feed("x", x)], opset=13),
            single(f"{op}-12-ties-first", op, [feed("x", ties)], opset=12, axis=1),
            single(f"{op}-12-ties-last", op, [feed("x", ties)], opset=12, axis=1, select_last_index=1),
        ]
    return cases


def _movement(r) -> list[OpCase]:
    x = rnd(r, 2, 3, 4)
    scalar = lambda name, v: const(name, np.array(v, I64))  # noqa: E731
    cases = [
        single("CumSum", "CumSum", [feed("x", x), scalar("axis", 1)], opset=11),
        single("CumSum-neg-axis", "CumSum", [feed("x", x), scalar("axis", -1)], opset=14),
        single("CumSum-exclusive", "CumSum", [feed("x", x), scalar("axis", 2)], exclusive=1),
        single("CumSum-reverse", "CumSum", [feed("x", x), scalar("axis", 0)], reverse=1),
        single("CumSum-exclusive-reverse", "CumSum", [feed("x", x), scalar("axis", 1)], exclusive=1, reverse=1),
        single("CumSum-int64", "CumSum", [feed("x", r.integers(-5, 5, (3, 4))), scalar("axis", 1)]),
        single("CumSum-runtime-axis", "CumSum", [feed("x", x), feed("axis", np.array(1, I64))]),
        single("TopK-10", "TopK", [feed("x", x), const("k", np.array([2], I64))], opset=10, n_out=2),
        single("TopK-11-smallest-axis1", "TopK", [feed("x", x), const("k", np.array([2], I64))], opset=11,
               n_out=2, axis=1, largest=0),
        single("TopK-11-ties", "TopK", [feed("x", np.array([[3, 1, 3, 2, 1, 3]], I64)), const("k", np.array([4], I64))],
               opset=11, n_out=2),
        single("TopK-11-ties-smallest", "TopK", [feed("x", np.array([[3, 1, 3, 2, 1, 3]], F32)),
                                                 const("k", np.array([3], I64))], opset=11, n_out=2, largest=0),
        single("TopK-11-runtime-k", "TopK", [feed("x", x), feed("k", np.array([3], I64))], opset=11, n_out=2),
        single("Tile", "Tile", [feed("x", x), const("r", np.array([2, 1, 3], I64))]),
        single("Tile-runtime", "Tile", [feed("x", x), feed("r", np.array([1, 2, 1], I64))]),
        single("Tile-int64", "Tile", [feed("x", r.integers(0, 9, (2, 3))), const("r", np.array([3, 2], I64))]),
        single("Trilu-upper", "Trilu", [feed("x", rnd(r, 2, 4, 5))], opset=14),
        single("Trilu-lower-k", "Trilu", [feed("x", rnd(r, 4, 5)), scalar("k", -1)], opset=14, upper=0),
        single("Trilu-upper-k2", "Trilu", [feed("x", rnd(r, 4, 5)), scalar("k", 2)], opset=14),
        single("Trilu-runtime-k", "Trilu", [feed("x", rnd(r, 4, 5)), feed("k", np.array(1, I64))], opset=14, upper=0),
    ]
    y = rnd(r, 2, 8, 3, 4)
    cases += [
        single("DepthToSpace-DCR", "DepthToSpace", [feed("x", y)], opset=13, blocksize=2),
        single("DepthToSpace-CRD", "DepthToSpace", [feed("x", y)], opset=13, blocksize=2, mode="CRD"),
        single("DepthToSpace-11-default", "DepthToSpace", [feed("x", y)], opset=11, blocksize=2),
        single("SpaceToDepth", "SpaceToDepth", [feed("x", rnd(r, 2, 3, 4, 6))], blocksize=2),
    ]
    return cases


def _indexing(r) -> list[OpCase]:
    x = rnd(r, 3, 4, 5)
    idx = r.integers(-4, 4, (3, 2, 5))
    return [
        single("GatherElements-axis1-neg-indices", "GatherElements", [feed("x", x), const("i", idx)], opset=11, axis=1),
        single("GatherElements-runtime", "GatherElements", [feed("x", x), feed("i", r.integers(0, 5, (3, 4, 2)))],
               axis=-1),
        single("GatherND-11", "GatherND", [feed("x", x), const("i", np.array([[0, 1], [2, -1]], I64))], opset=11),
        single("GatherND-12-batch", "GatherND", [feed("x", x), const("i", np.array([[1], [0], [3]], I64))],
               opset=12, batch_dims=1),
        single("GatherND-full", "GatherND", [feed("x", x), const("i", np.array([[0, 1, 2], [2, 3, 4]], I64))]),
        single("ScatterND", "ScatterND",
               [feed("x", x), const("i", np.array([[1], [0]], I64)), feed("u", rnd(r, 2, 4, 5))], opset=11),
        single("ScatterND-16-add", "ScatterND", [feed("x", x), const("i", np.array([[1, 2], [1, 2]], I64)),
                                                 feed("u", rnd(r, 2, 5))], opset=16, reduction="add"),
        single("ScatterND-18-max", "ScatterND", [feed("x", x), const("i", np.array([[0, 0], [2, 1]], I64)),
                                                 feed("u", rnd(r, 2, 5))], opset=18, reduction="max"),
        single("ScatterElements", "ScatterElements", [feed("x", x), const("i", np.array([[[1, 0, 3, -1, 2]]], I64)),
                                                      feed("u", rnd(r, 1, 1, 5))], opset=11, axis=1),
        single("ScatterElements-16-mul", "ScatterElements", [feed("x", x), const("i", np.array([[[4, 4]]], I64)),
                                                             feed("u", rnd(r, 1, 1, 2))],
               opset=16, axis=2, reduction="mul"),
    ]


def _sampling(r) -> list[OpCase]:
    x = rnd(r, 1, 2, 4, 5)
    grid = rnd(r, 1, 3, 6, 2, lo=-1.2, hi=1.2)
    ia, ib = r.integers(0, 64, (3, 4)), np.array([5, 12, 3, 255], I64)
    ids = np.array([[0, 3, -1], [7, 2, 1]], I64)
    on_off = const("v", np.array([0.5, 2.0], F32))
    cases = [
        single("GridSample-16", "GridSample", [feed("x", x), feed("g", grid)], opset=16),
        single("GridSample-16-nearest-border-ac", "GridSample", [feed("x", x), feed("g", grid)], opset=16,
               mode="nearest", padding_mode="border", align_corners=1),
        single("GridSample-16-bicubic-reflection", "GridSample", [feed("x", x), feed("g", grid)], opset=16,
               mode="bicubic", padding_mode="reflection"),
        single("GridSample-20-linear", "GridSample", [feed("x", x), feed("g", grid)], opset=20, mode="linear"),
        single("OneHot", "OneHot", [feed("i", ids), const("d", np.array(5, I64)), on_off]),
        single("OneHot-axis0", "OneHot", [feed("i", ids), const("d", np.array([4.0], F32)), on_off], opset=11, axis=0),
        single("OneHot-9", "OneHot", [feed("i", np.abs(ids)), const("d", np.array([8], I64)), on_off], opset=9),
        single("OneHot-runtime-depth", "OneHot", [feed("i", ids), feed("d", np.array(6, I64)),
                                                  const("v", np.array([0, 1], I64))], axis=1),
        single("EyeLike", "EyeLike", [feed("x", rnd(r, 3, 5))]),
        single("EyeLike-k-dtype", "EyeLike", [feed("x", rnd(r, 4, 3))], k=-1, dtype=7),
        single("BitwiseAnd", "BitwiseAnd", [feed("a", ia), const("b", ib)], opset=18),
        single("BitwiseOr", "BitwiseOr", [feed("a", ia), const("b", ib)], opset=18),
        single("BitwiseXor", "BitwiseXor", [feed("a", ia), feed("b", ib)], opset=18),
        single("BitwiseNot", "BitwiseNot", [feed("a", ia)], opset=18),
    ]
    for c in cases[:4]:
        c.rtol, c.atol = 1e-4, 1e-5
    return cases


def _recurrent(r) -> list[OpCase]:
    seq, batch, inp, hid = 4, 3, 5, 6
    x = rnd(r, seq, batch, inp)
    lens = feed("lens", np.array([4, 2, 3], np.int32))

    def weights(gates: int, dirs: int) -> list:
        return [const("W", rnd(r, dirs, gates * hid, inp, lo=-0.5, hi=0.5)),
                const("R", rnd(r, dirs, gates * hid, hid, lo=-0.5, hi=0.5)),
                const("B", rnd(r, dirs, 2 * gates * hid, lo=-0.5, hi=0.5))]

    def h0(dirs: int, name: str = "h0") -> object:
        return feed(name, rnd(r, dirs, batch, hid))

    cases = [
        single("LSTM-forward-fused", "LSTM", [feed("x", x), *weights(4, 1)], n_out=3, hidden_size=hid),
        single("LSTM-bidirectional-lens-init", "LSTM", [feed("x", x), *weights(4, 2), lens, h0(2), h0(2, "c0")],
               n_out=3, hidden_size=hid, direction="bidirectional"),
        single("LSTM-reverse-peepholes-clip", "LSTM", [feed("x", x), *weights(4, 1), None, None, None,
                                                       const("P", rnd(r, 1, 3 * hid))],
               n_out=3, hidden_size=hid, direction="reverse", clip=1.5),
        single("LSTM-input-forget-activations", "LSTM", [feed("x", x), *weights(4, 1)], n_out=3, hidden_size=hid,
               input_forget=1, activations=["HardSigmoid", "LeakyRelu", "Softsign"], activation_alpha=[0.3, 0.1],
               activation_beta=[0.6]),
        single("LSTM-bidirectional-init-fused", "LSTM", [feed("x", x), *weights(4, 2), None, h0(2), h0(2, "c0")],
               n_out=3, hidden_size=hid, direction="bidirectional"),
        single("LSTM-reverse-no-bias-fused", "LSTM", [feed("x", x), *weights(4, 1)[:2]], n_out=3, hidden_size=hid,
               direction="reverse"),
        single("GRU-linear-before-reset-reverse-fused", "GRU", [feed("x", x), *weights(3, 1)], n_out=2,
               hidden_size=hid, direction="reverse", linear_before_reset=1),
        single("GRU-forward", "GRU", [feed("x", x), *weights(3, 1)], n_out=2, hidden_size=hid),
        single("GRU-linear-before-reset-bidirectional-fused", "GRU", [feed("x", x), *weights(3, 2), None, h0(2)],
               n_out=2, hidden_size=hid, direction="bidirectional", linear_before_reset=1),
        single("GRU-reverse-lens", "GRU", [feed("x", x), *weights(3, 1), lens], n_out=2, hidden_size=hid,
               direction="reverse"),
        single("RNN-tanh", "RNN", [feed("x", x), *weights(1, 1), None, h0(1)], n_out=2, hidden_size=hid),
        single("RNN-relu-bidirectional", "RNN", [feed("x", x), *weights(1, 2)], n_out=2, hidden_size=hid,
               direction="bidirectional", activations=["Relu", "Tanh"]),
        single("RNN-Y-only", "RNN", [feed("x", x), *weights(1, 1)], hidden_size=hid),
    ]
    for c in cases:
        c.rtol, c.atol = 1e-4, 1e-5
    return cases


def _composite(r) -> list[OpCase]:
    x, y = rnd(r, 2, 3, 4), rnd(r, 3, 1)
    img = rnd(r, 2, 3, 4, 5)
    return [
        single("CastLike", "CastLike", [feed("x", x * 5), feed("like", np.array([1], I64))], opset=15),
        single("CastLike-to-float", "CastLike", [feed("x", r.integers(-5, 5, (3,))), const("like", np.zeros(1, F32))],
               opset=19),
        single("Size", "Size", [feed("x", x)]),
        single("Sum-3", "Sum", [feed("a", x), feed("b", y), const("c", rnd(r, 4))]),
        single("Sum-1", "Sum", [feed("a", x)]),
        single("Mean-2", "Mean", [feed("a", x), feed("b", y)], opset=13),
        single("GlobalMaxPool", "GlobalMaxPool", [feed("x", img)]),
        single("GlobalMaxPool-1d", "GlobalMaxPool", [feed("x", x)]),
        single("LpNormalization-p2", "LpNormalization", [feed("x", x)]),
        single("LpNormalization-p1-axis0", "LpNormalization", [feed("x", x)], axis=0, p=1),
        single("Shrink", "Shrink", [feed("x", x)], lambd=0.6, bias=0.2),
        single("Shrink-default", "Shrink", [feed("x", x)]),
    ]


def _norm_einsum(r) -> list[OpCase]:
    x = rnd(r, 2, 4, 3, 5)
    cases = [
        single("InstanceNormalization", "InstanceNormalization",
               [feed("x", x), const("s", rnd(r, 4)), const("b", rnd(r, 4))], epsilon=1e-3),
        single("InstanceNormalization-1d", "InstanceNormalization",
               [feed("x", rnd(r, 2, 3, 7)), const("s", rnd(r, 3)), const("b", rnd(r, 3))], opset=11),
        single("GroupNormalization-21", "GroupNormalization",
               [feed("x", x), const("s", rnd(r, 4)), const("b", rnd(r, 4))], opset=21, num_groups=2),
        single("GroupNormalization-18-per-group", "GroupNormalization",
               [feed("x", x), const("s", rnd(r, 2)), const("b", rnd(r, 2))], opset=18, num_groups=2, epsilon=1e-3),
    ]
    for c in cases:
        c.rtol, c.atol = 1e-4, 1e-4
    a, b = rnd(r, 2, 3, 4), rnd(r, 2, 4, 5)
    cases += [
        single("Einsum-bmm", "Einsum", [feed("a", a), feed("b", b)], opset=12, equation="bij,bjk->bik"),
        single("Einsum-implicit", "Einsum", [feed("a", rnd(r, 3, 4)), feed("b", rnd(r, 4, 5))], equation="ij,jk"),
        single("Einsum-ellipsis", "Einsum", [feed("a", rnd(r, 2, 2, 3, 4)), feed("b", rnd(r, 4, 5))],
               equation="...ij, jk -> ...ik"),
        single("Einsum-transpose-sum", "Einsum", [feed("a", a)], equation="bij->jb"),
        single("Einsum-outer", "Einsum", [feed("a", rnd(r, 3)), feed("b", rnd(r, 4))], equation="i,j->ij"),
    ]
    return cases


def extra_cases() -> list[OpCase]:
    """Every case for the ops beyond the core families."""
    r = _rng("extra")
    return (_unary(r) + _binary(r) + _reductions(r) + _movement(r) + _indexing(r) + _sampling(r) + _recurrent(r)
            + _composite(r) + _norm_einsum(r))

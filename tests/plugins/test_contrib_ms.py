"""The com.microsoft pack against ONNX Runtime's own kernels, op by op, on small graphs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import ember
from ember.errors import UnsupportedOpError
from tests.plugins.ort_helpers import MS, assert_matches_ort, model, run_ember, run_ort

RNG = np.random.default_rng(0)
B, S, H, N = 2, 5, 16, 4


def r(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


X, SKIP = r(B, S, H), r(B, S, H)
GAMMA, BETA, BIAS = r(H), r(H), r(H)


def node(op: str, inputs: list[str], outputs: list[str], domain: str = MS, **attrs) -> object:
    return helper.make_node(op, inputs, outputs, domain=domain, **attrs)


# ---- activations ----------------------------------------------------------------------------

@pytest.mark.parametrize("op, inputs, attrs", [
    ("Gelu", ["x"], {}), ("FastGelu", ["x"], {}), ("FastGelu", ["x", "b"], {}), ("BiasGelu", ["x", "b"], {}),
    ("QuickGelu", ["x"], {}), ("QuickGelu", ["x"], {"alpha": 1.5}),
])
def test_activations(op, inputs, attrs):
    m = model([node(op, inputs, ["y"], **attrs)], {"x": X}, ["y"], {"b": BIAS} if "b" in inputs else None)
    assert_matches_ort(m, {"x": X})


def test_bias_add():
    """BiasAdd has no CPU kernel in ONNX Runtime; X + bias + skip by its definition."""
    m = model([node("BiasAdd", ["x", "b", "s"], ["y"])], {"x": X, "s": SKIP}, ["y"], {"b": BIAS})
    np.testing.assert_allclose(run_ember(m, {"x": X, "s": SKIP})["y"], X + BIAS + SKIP, rtol=1e-6)


# ---- normalizations ---------------------------------------------------------------------------

@pytest.mark.parametrize("inputs, outputs", [
    (["x", "s", "g"], ["y"]),
    (["x", "s", "g", "be", "b"], ["y", "mean", "istd", "sum"]),
    (["x", "s", "g", "", "b"], ["y", "", "", "sum"]),
])
def test_skip_layer_norm(inputs, outputs):
    m = model([node("SkipLayerNormalization", inputs, outputs, epsilon=1e-5)], {"x": X, "s": SKIP},
              [o for o in outputs if o], {"g": GAMMA, "be": BETA, "b": BIAS})
    assert_matches_ort(m, {"x": X, "s": SKIP})


def test_skip_layer_norm_broadcast_skip_and_default_epsilon():
    skip = r(S, H)
    m = model([node("SkipLayerNormalization", ["x", "s", "g", "be"], ["y"])], {"x": X}, ["y"],
              {"s": skip, "g": GAMMA, "be": BETA})
    assert_matches_ort(m, {"x": X})


def test_skip_simplified_layer_norm():
    m = model([node("SkipSimplifiedLayerNormalization", ["x", "s", "g", "b"], ["y", "", "istd", "sum"],
                    epsilon=1e-5)], {"x": X, "s": SKIP}, ["y", "istd", "sum"], {"g": GAMMA, "b": BIAS})
    assert_matches_ort(m, {"x": X, "s": SKIP})


@pytest.mark.parametrize("axis", [-1, 1])
def test_default_domain_layer_norms_of_onnx_runtime_before_opset_17(axis):
    scale = r(*X.shape[axis:])
    ln = model([node("LayerNormalization", ["x", "g", "be"], ["y", "mean", "istd"], domain="", axis=axis,
                     epsilon=1e-5)], {"x": X}, ["y", "mean", "istd"], {"g": scale, "be": -scale}, opset=14)
    assert_matches_ort(ln, {"x": X})
    rms = model([node("SimplifiedLayerNormalization", ["x", "g"], ["y", "istd"], domain="", axis=axis)],
                {"x": X}, ["y", "istd"], {"g": scale}, opset=14)
    assert_matches_ort(rms, {"x": X})


def _embed_weights() -> dict[str, np.ndarray]:
    return {"we": r(30, H), "pe": r(20, H), "se": r(2, H), "g": GAMMA, "b": BETA}


IDS = RNG.integers(0, 30, (B, S)).astype(np.int32)
SEGMENTS = RNG.integers(0, 2, (B, S)).astype(np.int32)
MASK = np.ones((B, S), np.int32)
MASK[1, 3:] = 0


def test_embed_layer_norm_with_segments_mask_and_sum():
    m = model([node("EmbedLayerNormalization", ["ids", "seg", "we", "pe", "se", "g", "b", "mask"],
                    ["y", "mask_index", "sum"], epsilon=1e-5)],
              {"ids": IDS, "seg": SEGMENTS, "mask": MASK}, ["y", "mask_index", "sum"], _embed_weights())
    got = assert_matches_ort(m, {"ids": IDS, "seg": SEGMENTS, "mask": MASK})
    np.testing.assert_array_equal(got["mask_index"], [5, 3])


def test_embed_layer_norm_position_ids_and_no_mask():
    pos = np.array([[4, 3, 2, 1, 0]], np.int32)
    m = model([node("EmbedLayerNormalization", ["ids", "", "we", "pe", "", "g", "b", "", "pos"],
                    ["y", "mask_index"])], {"ids": IDS, "pos": pos}, ["y", "mask_index"], _embed_weights())
    assert_matches_ort(m, {"ids": IDS, "pos": pos})


def test_embed_layer_norm_with_a_symbolic_sequence():
    m = model([node("EmbedLayerNormalization", ["ids", "seg", "we", "pe", "se", "g", "b"], ["y", "mask_index"])],
              {"ids": IDS, "seg": SEGMENTS}, ["y", "mask_index"], _embed_weights())
    for vi in m.graph.input:
        vi.type.tensor_type.shape.dim[1].dim_param = "seq"
    assert_matches_ort(m, {"ids": IDS, "seg": SEGMENTS})
    assert_matches_ort(m, {"ids": IDS[:, :3], "seg": SEGMENTS[:, :3]})


# ---- attention ---------------------------------------------------------------------------------

W_QKV, B_QKV = r(H, 3 * H) * 0.3, r(3 * H)


@pytest.mark.parametrize("mask, attrs", [
    (None, {}),
    (MASK, {}),
    (np.array([5, 3], np.int32), {}),
    (np.array([5, 4, 0, 1], np.int32), {}),  # end positions, then start positions
    (RNG.integers(0, 2, (B, S, S)).astype(np.int32), {}),
    (None, {"unidirectional": 1}),
    (MASK, {"unidirectional": 1}),
    (MASK, {"scale": 0.3, "mask_filter_value": -1000.0}),
], ids=["none", "2d", "lengths", "end-start", "3d", "causal", "causal-2d", "scale-filter"])
def test_attention(mask, attrs):
    inputs = ["x", "w", "bias"] + (["m"] if mask is not None else [])
    feeds = {"x": X, **({"m": mask} if mask is not None else {})}
    m = model([node("Attention", inputs, ["y"], num_heads=N, **attrs)], feeds, ["y"], {"w": W_QKV, "bias": B_QKV})
    assert_matches_ort(m, feeds)


def test_attention_with_past_and_present():
    past = r(2, B, N, 3, H // N)
    feeds = {"x": X, "m": np.ones((B, S + 3), np.int32), "past": past}
    m = model([node("Attention", ["x", "w", "bias", "m", "past"], ["y", "present"], num_heads=N, unidirectional=1)],
              feeds, ["y", "present"], {"w": W_QKV, "bias": B_QKV})
    assert_matches_ort(m, feeds)


def test_attention_qkv_hidden_sizes_and_attention_bias():
    feeds = {"x": X, "ab": r(1, N, S, S)}
    m = model([node("Attention", ["x", "w", "", "", "", "ab"], ["y"], num_heads=N, qkv_hidden_sizes=[H, H, 8])],
              feeds, ["y"], {"w": r(H, 2 * H + 8)})
    assert_matches_ort(m, feeds)


def test_attention_lowering_becomes_fused_attention():
    m = model([node("Attention", ["x", "w", "bias", "m"], ["y"], num_heads=N)], {"x": X, "m": MASK}, ["y"],
              {"w": W_QKV, "bias": B_QKV})
    kinds = [layer.kind for layer in ember.build(m, ember.BuildConfig(device="cpu")).plan.layers]
    assert kinds.count("FusedAttention") == 1 and "Softmax" not in kinds


Q, K, V = r(B, S, H), r(B, 7, H), r(B, 7, H)


@pytest.mark.parametrize("feeds, inputs, weights", [
    ({"q": Q, "k": K, "v": V}, ["q", "k", "v"], None),
    ({"q": Q, "k": K, "v": V, "m": np.ones((B, 7), np.int32)}, ["q", "k", "v", "bias", "m"], {"bias": r(3 * H)}),
    ({"q": Q, "k": K, "v": V, "m": np.array([7, 4], np.int32)}, ["q", "k", "v", "", "m"], None),
    ({"q": Q, "k": K, "v": V, "ab": r(B, N, S, 7)}, ["q", "k", "v", "", "", "ab"], None),
    ({"q": Q, "k": r(B, N, 7, H // N), "v": r(B, N, 7, H // N)}, ["q", "k", "v"], None),
], ids=["cross", "bias-mask", "lengths", "attention-bias", "bnsh-kv"])
def test_multi_head_attention(feeds, inputs, weights):
    m = model([node("MultiHeadAttention", inputs, ["y"], num_heads=N)], feeds, ["y"], weights)
    assert_matches_ort(m, feeds)


def test_multi_head_attention_causal_with_past():
    feeds = {"q": Q, "k": r(B, S, H), "v": r(B, S, H), "pk": r(B, N, 3, H // N), "pv": r(B, N, 3, H // N)}
    m = model([node("MultiHeadAttention", ["q", "k", "v", "", "", "", "pk", "pv"], ["y", "pk_out", "pv_out"],
                    num_heads=N, unidirectional=1)], feeds, ["y", "pk_out", "pv_out"])
    assert_matches_ort(m, feeds)


def test_multi_head_attention_packed_forms_equal_the_unpacked_one():
    """ONNX Runtime's CPU kernel refuses packed QKV / KV; Ember's result must equal ORT's on the
    same values unpacked."""
    qkv = r(B, S, N, 3, H // N)
    q, k, v = (qkv[:, :, :, i].reshape(B, S, H) for i in range(3))
    ref = run_ort(model([node("MultiHeadAttention", ["q", "k", "v"], ["y"], num_heads=N)],
                        {"q": q, "k": k, "v": v}, ["y"]), {"q": q, "k": k, "v": v})["y"]
    got = run_ember(model([node("MultiHeadAttention", ["qkv"], ["y"], num_heads=N)], {"qkv": qkv}, ["y"]),
                    {"qkv": qkv})["y"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    got_kv = run_ember(model([node("MultiHeadAttention", ["q", "kv"], ["y"], num_heads=N)],
                             {"q": q, "kv": qkv[:, :, :, 1:]}, ["y"]), {"q": q, "kv": qkv[:, :, :, 1:]})["y"]
    np.testing.assert_allclose(got_kv, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op, attrs, reason", [
    ("Attention", {"do_rotary": 1}, "do_rotary=1 is not supported"),
    ("Attention", {"past_present_share_buffer": 1}, "past_present_share_buffer=1 is not supported"),
    ("Attention", {}, "num_heads is missing"),
])
def test_unsupported_attention_forms_are_refused_by_name(op, attrs, reason):
    attrs = {"num_heads": N, **attrs} if "num_heads" not in reason else attrs
    m = model([helper.make_node(op, ["x", "w"], ["y"], name="att", domain=MS, **attrs)], {"x": X}, ["y"],
              {"w": W_QKV})
    with pytest.raises(UnsupportedOpError) as e:
        ember.build(m, ember.BuildConfig(device="cpu"))
    assert "Attention (domain com.microsoft, opset 1): node 'att'" in str(e.value)
    assert reason in str(e.value)


# ---- matrix products and convolution ------------------------------------------------------

@pytest.mark.parametrize("sa, sb, attrs", [
    ((3, 4), (4, 5), {}),
    ((2, 3, 4), (2, 5, 4), {"transB": 1, "alpha": 0.5}),
    ((2, 4, 3), (4, 5), {"transA": 1}),
    ((3, 2, 4), (2, 4, 5), {"transBatchA": 1}),
    ((2, 3, 4), (4, 2, 5), {"transBatchB": 1}),
    ((4, 2, 3), (2, 4, 5), {"transBatchA": 1, "transA": 1}),
    ((3, 2, 4, 6), (5, 3, 2, 6), {"transBatchB": 1, "transB": 1}),
])
def test_fused_matmul(sa, sb, attrs):
    a, b = r(*sa), r(*sb)
    assert_matches_ort(model([node("FusedMatMul", ["a", "b"], ["y"], **attrs)], {"a": a, "b": b}, ["y"]),
                       {"a": a, "b": b})


CX, CW, CB, CZ = r(1, 3, 8, 8), r(4, 3, 3, 3), r(4), r(1, 4, 8, 8)


@pytest.mark.parametrize("activation, params", [
    ("", None), ("Relu", None), ("Tanh", None), ("Sigmoid", None), ("LeakyRelu", [0.2]),
    ("Clip", [-0.5, 0.5]), ("HardSigmoid", [0.3, 0.4]),
])
@pytest.mark.parametrize("with_z", [False, True])
def test_fused_conv(activation, params, with_z):
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    if activation:
        attrs["activation"] = activation
    if params:
        attrs["activation_params"] = params
    feeds = {"x": CX, **({"z": CZ} if with_z else {})}
    m = model([node("FusedConv", ["x", "w", "b"] + (["z"] if with_z else []), ["y"], **attrs)], feeds, ["y"],
              {"w": CW, "b": CB})
    assert_matches_ort(m, feeds)


def test_fused_conv_auto_pad_and_stride_becomes_ember_fused_conv():
    m = model([node("FusedConv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], activation="Relu")],
              {"x": CX}, ["y"], {"w": CW})
    assert_matches_ort(m, {"x": CX})
    kinds = [layer.kind for layer in ember.build(m, ember.BuildConfig(device="cpu")).plan.layers]
    assert kinds == ["FusedConv"]


A_U8 = RNG.integers(0, 255, (2, 3, 8)).astype(np.uint8)
B_I8 = RNG.integers(-128, 127, (8, 6)).astype(np.int8)


def _scale(per_column: bool) -> np.ndarray:
    return (r(6) ** 2 + 0.01).astype(np.float32) if per_column else np.array(0.05, np.float32)


@pytest.mark.parametrize("per_column, zero_points, bias, a_int8", [
    (False, True, True, False), (True, True, True, False), (False, False, False, False), (False, True, True, True),
])
def test_matmul_integer_to_float(per_column, zero_points, bias, a_int8):
    a = RNG.integers(-100, 100, (2, 3, 8)).astype(np.int8) if a_int8 else A_U8
    w = {"b": B_I8, "as": np.array(0.02, np.float32), "bs": _scale(per_column)}
    inputs = ["a", "b", "as", "bs"]
    if zero_points:
        w["azp"] = np.array(3 if a_int8 else 128, a.dtype)
        w["bzp"] = RNG.integers(-3, 3, 6).astype(np.int8) if per_column else np.array(1, np.int8)
        inputs += ["azp", "bzp"]
    else:
        inputs += ["", ""]
    if bias:
        w["bias"] = r(6)
        inputs.append("bias")
    assert_matches_ort(model([node("MatMulIntegerToFloat", inputs, ["y"])], {"a": a}, ["y"], w), {"a": a})


@pytest.mark.parametrize("per_column, uint8_weights", [(False, False), (True, False), (False, True)])
def test_dynamic_quantize_matmul(per_column, uint8_weights):
    a = r(2, 3, 8)
    b = RNG.integers(0, 255, (8, 6)).astype(np.uint8) if uint8_weights else B_I8
    zp = RNG.integers(0, 5, 6).astype(b.dtype) if per_column else np.array(120 if uint8_weights else 2, b.dtype)
    m = model([node("DynamicQuantizeMatMul", ["a", "b", "bs", "bzp", "bias"], ["y"])], {"a": a}, ["y"],
              {"b": b, "bs": _scale(per_column), "bzp": zp, "bias": r(6)})
    assert_matches_ort(m, {"a": a}, rtol=1e-5)


@pytest.mark.parametrize("trans_a, trans_b, with_c, quantized_out, alpha, per_column", [
    (0, 0, True, False, 1.0, False), (1, 1, True, False, 0.5, False), (0, 0, False, False, 1.0, True),
    (0, 1, True, True, 1.0, False),
])
def test_qgemm(trans_a, trans_b, with_c, quantized_out, alpha, per_column):
    a = RNG.integers(0, 255, (8, 4) if trans_a else (4, 8)).astype(np.uint8)
    b = RNG.integers(-128, 127, (6, 8) if trans_b else (8, 6)).astype(np.int8)
    w = {"as": np.array(0.02, np.float32), "azp": np.array(128, np.uint8), "b": b, "bs": _scale(per_column),
         "bzp": np.zeros(6, np.int8) if per_column else np.array(0, np.int8)}
    inputs = ["a", "as", "azp", "b", "bs", "bzp"]
    if with_c:
        w["c"] = RNG.integers(-1000, 1000, (6,)).astype(np.int32)
    inputs.append("c" if with_c else "")
    if quantized_out:
        w.update(ys=np.array(0.5, np.float32), yzp=np.array(128, np.uint8))
        inputs += ["ys", "yzp"]
    m = model([node("QGemm", inputs, ["y"], transA=trans_a, transB=trans_b, alpha=alpha)], {"a": a}, ["y"], w)
    if quantized_out:  # both round half to even; the float products may differ in the last bit
        got, ref = run_ember(m, {"a": a})["y"], run_ort(m, {"a": a})["y"]
        assert got.dtype == ref.dtype == np.uint8
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    else:
        assert_matches_ort(m, {"a": a}, rtol=1e-5)


# ---- recurrent --------------------------------------------------------------------------------

@pytest.mark.parametrize("direction, per_channel", [("forward", False), ("bidirectional", True)])
def test_dynamic_quantize_lstm(direction, per_channel):
    """ONNX Runtime quantizes X and h on the fly; Ember runs the dequantized float LSTM: agreement
    to the quantization step."""
    dirs, hidden, inp, seq, batch = (2 if direction == "bidirectional" else 1), 8, 6, 4, 2
    x = r(seq, batch, inp)
    wq = RNG.integers(-100, 100, (dirs, inp, 4 * hidden)).astype(np.int8)
    rq = RNG.integers(-100, 100, (dirs, hidden, 4 * hidden)).astype(np.int8)
    shape = (dirs, 4 * hidden) if per_channel else (dirs,)
    ws = (np.abs(RNG.standard_normal(shape)) * 0.005 + 0.002).astype(np.float32)
    rs = (np.abs(RNG.standard_normal(shape)) * 0.005 + 0.002).astype(np.float32)
    zeros = np.zeros(shape, np.int8)
    weights = {"w": wq, "r": rq, "b": r(dirs, 8 * hidden) * 0.1, "ws": ws, "wz": zeros, "rs": rs, "rz": zeros}
    m = model([node("DynamicQuantizeLSTM", ["x", "w", "r", "b", "", "", "", "", "ws", "wz", "rs", "rz"],
                    ["y", "yh", "yc"], hidden_size=hidden, direction=direction)], {"x": x}, ["y", "yh", "yc"], weights)
    assert_matches_ort(m, {"x": x}, rtol=6e-2)
    # exactly ONNX Runtime's float LSTM on the dequantized weights (ONNX's [D, 4H, in] layout)
    scale = (lambda s: s[:, None, :]) if per_channel else (lambda s: s[:, None, None])
    float_w = {"w": (wq * scale(ws)).transpose(0, 2, 1), "r": (rq * scale(rs)).transpose(0, 2, 1), "b": weights["b"]}
    reference = model([node("LSTM", ["x", "w", "r", "b"], ["y", "yh", "yc"], domain="", hidden_size=hidden,
                            direction=direction)], {"x": x}, ["y", "yh", "yc"], float_w)
    ours, ref = run_ember(m, {"x": x}), run_ort(reference, {"x": x})
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6)

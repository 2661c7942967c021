"""Recurrent ops with ``layout=1`` (batch first), which ONNX Runtime's CPU provider refuses:
checked against the same model with ``layout=0`` and transposed inputs/outputs instead."""
from __future__ import annotations

import numpy as np
import pytest

import ember
from tests.conformance.op_models import _rng, const, feed, rnd, single


@pytest.mark.parametrize("with_lens", [True, False], ids=["step-loop", "fused-when-possible"])
@pytest.mark.parametrize("op, gates, n_out", [("LSTM", 4, 3), ("GRU", 3, 2), ("RNN", 1, 2)])
def test_batch_first_layout_matches_sequence_first(op: str, gates: int, n_out: int, with_lens: bool) -> None:
    r = _rng(f"layout-{op}")
    seq, batch, inp, hid = 5, 2, 3, 4
    x = rnd(r, seq, batch, inp)
    h0 = rnd(r, 2, batch, hid)
    w = [const("W", rnd(r, 2, gates * hid, inp)), const("R", rnd(r, 2, gates * hid, hid)),
         const("B", rnd(r, 2, 2 * gates * hid))]
    lens = np.array([5, 3], np.int32)
    outs = {}
    for layout in (0, 1):
        xl = x if layout == 0 else x.transpose(1, 0, 2).copy()
        hl = h0 if layout == 0 else h0.transpose(1, 0, 2).copy()
        lens_in = feed("lens", lens) if with_lens else None
        extra = {"linear_before_reset": 1} if op == "GRU" else {}
        case = single(f"{op}-layout{layout}", op, [feed("x", xl), *w, lens_in, feed("h0", hl)],
                      opset=14, n_out=n_out, hidden_size=hid, direction="bidirectional", layout=layout, **extra)
        engine = ember.build(case.model, ember.BuildConfig(device="cpu"))
        with engine.create_context() as ctx:
            outs[layout] = list(ctx.infer(dict(case.inputs)).values())
    y0, y1 = outs[0][0], outs[1][0]
    np.testing.assert_allclose(y1, y0.transpose(2, 0, 1, 3), rtol=1e-5, atol=1e-6)
    for s0, s1 in zip(outs[0][1:], outs[1][1:]):
        np.testing.assert_allclose(s1, s0.transpose(1, 0, 2), rtol=1e-5, atol=1e-6)
    if with_lens:
        assert not np.any(y0[3:, :, 1]), "steps past a sequence's length must output zeros"


def test_fused_path_is_chosen_only_for_the_forms_torch_computes() -> None:
    """The ``-fused`` conformance cases take torch.lstm/gru; peepholes, clip, lens, activations,
    input_forget and GRU without linear_before_reset take the step loop."""
    from ember.backends.cpu.kernels.recurrent import fused_applies
    from ember.frontends.onnx import import_onnx
    from tests.conformance.op_models import FAMILIES

    cases = [c for c in FAMILIES["extra"]() if c.name.startswith(("LSTM", "GRU"))]
    assert len(cases) >= 8
    for case in cases:
        node = import_onnx(case.model).nodes[0]
        assert fused_applies(node) == case.name.endswith("-fused"), case.name

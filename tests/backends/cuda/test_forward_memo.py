"""The CUDA program's per-forward memo (``ember.backends.cuda.device.forward_scope`` /
``per_forward``): what every attention layer derives from the shared mask is derived once per
forward. The logic is device-independent, so it runs here on CPU tensors; the CUDA program and the
tactic timer open the scope (checked on a GPU by the ``cuda`` tests of the engine)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from ember.backends.base import CompileContext
from ember.backends.cuda import device
from ember.backends.cuda.kernels import attention
from ember.ir.graph import Graph, Node
from ember.ir.optype import OpType
from ember.ops.attrs import FusedAttentionAttrs
from ember.plan.config import Precision


def _counting(calls: list[int]) -> Any:
    def fn(t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return t * 2

    return fn


def test_outside_a_forward_every_call_computes() -> None:
    calls: list[int] = []
    t = torch.ones(3)
    for _ in range(3):
        assert torch.equal(device.per_forward(t, "x", _counting(calls)), torch.full((3,), 2.0))
    assert len(calls) == 3


def test_inside_a_forward_once_per_tensor_object_and_tag() -> None:
    calls: list[int] = []
    t, same_values = torch.ones(3), torch.ones(3)
    with device.forward_scope():
        first = device.per_forward(t, "x", _counting(calls))
        assert device.per_forward(t, "x", _counting(calls)) is first
        assert len(calls) == 1
        device.per_forward(same_values, "x", _counting(calls))  # another tensor: its own
        device.per_forward(t, "y", _counting(calls))  # another tag: its own
        assert len(calls) == 3
    with device.forward_scope():  # the next forward derives afresh (new values may sit in t)
        t.fill_(5.0)
        assert torch.equal(device.per_forward(t, "x", _counting(calls)), torch.full((3,), 10.0))
    assert len(calls) == 4
    device.per_forward(t, "x", _counting(calls))  # the scope is gone
    assert len(calls) == 5


def test_scopes_nest_and_restore() -> None:
    calls: list[int] = []
    t = torch.ones(2)
    with device.forward_scope():
        device.per_forward(t, "x", _counting(calls))
        with device.forward_scope(per_stream=True):  # e.g. the tactic timer inside a build
            device.per_forward(t, "x", _counting(calls))
        device.per_forward(t, "x", _counting(calls))  # the outer memo again
    assert len(calls) == 2


def test_attention_mask_prepared_once_per_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twelve layers reading one mask in one forward prepare it once; a forward later, again."""
    calls: list[int] = []
    real = attention.nan_in_hidden_rows

    def spy(m: torch.Tensor | None) -> torch.Tensor | None:
        calls.append(1)
        return real(m)

    monkeypatch.setattr(attention, "nan_in_hidden_rows", spy)
    mask = torch.zeros(2, 1, 1, 8)
    mask[1, ..., 5:] = float("-inf")
    with device.forward_scope():
        outs = [attention._mask(mask, torch.float16) for _ in range(12)]
    first = outs[0]
    assert len(calls) == 1 and first is not None and all(o is first for o in outs)
    assert first.dtype == torch.float16 and float(first[1, 0, 0, 6]) == torch.finfo(torch.float16).min
    with device.forward_scope():
        attention._mask(mask, torch.float16)
        attention._mask(mask, torch.float32)  # another dtype: its own
    assert len(calls) == 3


def _explicit(scale: float) -> Any:
    """The ``explicit`` attention kernel of an fp16 layer, compiled for CPU tensors."""
    node = Node("att", OpType.FUSED_ATTENTION, ("q", "k", "v", "m"), ("y",), FusedAttentionAttrs(scale=scale))
    ctx = CompileContext(Graph("g", [node], ["q", "k", "v", "m"], ["y"], {}), {}, torch.device("cpu"), "explicit",
                         Precision.FP16)
    return attention.attention_explicit(node, ctx)


def test_explicit_attention_converts_a_half_mask_once_per_forward() -> None:
    """The ``explicit`` tactic adds the mask in float32: converted once per forward, same result."""
    kernel = _explicit(0.25)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g).half() for _ in range(3))
    mask = torch.zeros(1, 1, 1, 4, dtype=torch.float16)
    mask[..., 3] = -1000.0
    converted: list[int] = []
    real = torch.Tensor.float

    def spy(self: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        if self is mask:
            converted.append(1)
        return real(self, *a, **kw)

    outside = kernel([q, k, v, mask])[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "float", spy)
        with device.forward_scope():
            inside = [kernel([q, k, v, mask])[0] for _ in range(3)]
    assert len(converted) == 1
    for y in inside:
        torch.testing.assert_close(y, outside)
    ref = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * 0.25 + mask.float(), -1) @ v.float()
    torch.testing.assert_close(outside.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("kind", ["2d float", "bool", "none", "float32 4d"])
def test_explicit_attention_masks_match_the_written_out_formula(kind: str) -> None:
    """``explicit`` folds an additive mask and the scale into one float32 pass (``mask + scale *
    s``); boolean masks and no mask keep the separate steps. All against softmax(q k^T * scale +
    mask) v in float32 (CPU tensors)."""
    kernel = _explicit(0.125)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g).half() for _ in range(3))
    add = torch.zeros(5, 5)
    add[:, 4] = float("-inf")
    masks = {"2d float": add.half(), "bool": add == 0, "none": None, "float32 4d": add.reshape(1, 1, 5, 5)}
    mask = masks[kind]
    got = kernel([q, k, v, mask])[0]
    s = (q.float() @ k.float().transpose(-1, -2)) * 0.125
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    want = torch.softmax(s, -1) @ v.float()
    assert got.dtype == torch.float16 and got.shape == want.shape
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)

"""The cuDNN-graph wrapper's logic with a fake ``cudnn`` module (CPU): operands and operations
as described, the fastest plan that gives the right answer kept, failing or wrong plans skipped,
one build per geometry, no build during CUDA-graph capture."""
from __future__ import annotations

import contextlib
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from ember.backends.cuda.libs import cudnn_graph as cg
from ember.errors import BuildError


@contextlib.contextmanager
def warnings_none():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


PLAN_MS = [5.0, 1.0, 2.0, 0.5]   # plan 3 is fastest but gives a wrong result; plan 1 is next
WRONG, FAILS = {3}, {2}
COMPILED: set = set()            # plans with the runtime-compilation behaviour note


class _Tensor:
    def __init__(self, name, dim=None, stride=None):
        self.name, self.dim, self.stride = name, dim, stride

    def set_output(self, flag):
        return self

    def set_data_type(self, dt):
        return self

    def set_dim(self, d):
        self.dim = d
        return self

    def set_stride(self, s):
        self.stride = s
        return self


class _Graph:
    built: list = []

    def __init__(self, **kw):
        self.ops, self.tensors, self.current = [], {}, None
        _Graph.built.append(self)

    def tensor(self, name, dim, stride, data_type):
        t = self.tensors[name] = _Tensor(name, dim, stride)
        return t

    def _op(self, kind, *ins, **kw):
        self.ops.append(kind)
        t = _Tensor(kind)
        t.result = True
        return t

    def conv_fprop(self, image, weight, padding, stride, dilation, compute_data_type, name):
        self.conv = (padding, stride, dilation)
        return self._op("conv")

    def bias(self, input, bias, name):
        return self._op("bias")

    def add(self, a, b, name):
        return self._op("add")

    def relu(self, input, name, **kw):
        self.clip = kw
        return self._op(name)

    def sdpa(self, **kw):
        self.sdpa_kw = kw
        return self._op("sdpa"), None

    validate = build_operation_graph = check_support = lambda self: None

    def create_execution_plans(self, modes):
        pass

    def get_execution_plan_count(self):
        return len(PLAN_MS)

    def build_plan_at_index(self, i):
        if i in FAILS:
            raise RuntimeError("no kernel")

    def get_workspace_size_plan_at_index(self, i):
        return 16 * i

    def get_plan_name_at_index(self, i):
        return f"eng{i}"

    def get_behavior_notes_for_plan_at_index(self, i):
        return ["behavior_note.RUNTIME_COMPILATION"] if i in COMPILED else []

    def execute_plan_at_index(self, pack, ws, i, handle=None):
        self.last = i
        out = next(v for k, v in pack.items() if getattr(k, "result", False))
        out.copy_(self.reference * (2.0 if i in WRONG else 1.0))


@pytest.fixture
def fake(monkeypatch, tmp_path):
    dt = types.SimpleNamespace(HALF="h", BFLOAT16="b", FLOAT="f", INT8="i8", INT32="i32")
    mod = types.SimpleNamespace(data_type=dt, pygraph=_Graph, heur_mode=types.SimpleNamespace(A=0, FALLBACK=1),
                                backend_version=lambda: 91900)
    monkeypatch.setattr(cg, "PLAN_CHOICES", cg.PlanChoices(tmp_path / "cudnn-plans.json"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Fake GPU")
    monkeypatch.setitem(sys.modules, "cudnn", mod)
    monkeypatch.setattr(cg, "_handle", lambda: "handle")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    timed = []

    def measure(fn):
        fn()
        ms = PLAN_MS[_Graph.built[-1].last]
        timed.append(ms)
        return ms

    monkeypatch.setattr(cg, "_MEASURE", measure)
    monkeypatch.setattr(cg, "_CACHE", {})
    _Graph.built = []
    return timed


def _conv_case(z: bool = True):
    x, w = torch.randn(2, 8, 5, 5), torch.randn(4, 8, 3, 3)
    b = torch.randn(1, 4, 1, 1)
    res = torch.randn(2, 4, 5, 5) if z else None
    ref = F.conv2d(x, w, b.view(-1), 1, 1) + (res if z else 0)
    return x, w, b, res, ref.relu()


def test_the_fastest_right_plan_is_kept_and_cached(fake):
    x, w, b, z, ref = _conv_case()
    out = torch.empty_like(ref)

    def check(o):
        _Graph.reference = ref
        return ref

    built = cg.conv_graph(x, w, b, None, out, [1, 1], [1, 1], [1, 1], "relu", check=check)
    assert (built.plan, built.plan_name, built.workspace) == (1, "eng1", 16)  # 3 is wrong, 2 fails
    assert _Graph.built[-1].ops == ["conv", "bias", "relu"]
    built = cg.conv_graph(x, w, b, z, out, [1, 1], [1, 1], [1, 1], "relu", check=check)
    # bias and residual: both orders are described and timed; a tie keeps the first
    assert [g.ops for g in _Graph.built[1:]] == [["conv", "add", "bias", "relu"], ["conv", "bias", "add", "relu"]]
    assert (built.plan, built.plan_name) == (1, "residual-first:eng1")
    g0 = _Graph.built[1]
    assert set(g0.tensors) == {"x", "w", "bias", "z"} and g0.conv == ([1, 1], [1, 1], [1, 1])
    out.zero_()
    built.run({"x": x, "w": w, "bias": b, "z": z, "out": out})
    assert g0.last == 1 and torch.equal(out, ref)  # runs the kept plan on the given tensors
    assert cg.conv_graph(x, w, b, z, out, [1, 1], [1, 1], [1, 1], "relu", check=check) is built
    assert len(_Graph.built) == 3  # one build per geometry
    other = torch.empty_strided(ref.shape, (400, 1, 20, 4))  # channels-last: another geometry
    cg.conv_graph(x, w, b, z, other, [1, 1], [1, 1], [1, 1], "relu", check=check)
    assert len(_Graph.built) == 5


def test_the_faster_order_wins_and_compiled_plans_are_few(fake, monkeypatch):
    x, w, b, z, ref = _conv_case()
    _Graph.reference = ref
    times = {}

    def measure(fn):  # the bias-first graph (built second) is twice as fast
        fn()
        g = _Graph.built[-1]
        ms = PLAN_MS[g.last] * (0.5 if g.ops[1] == "bias" else 1.0)
        times.setdefault(len(_Graph.built), []).append(g.last)
        return ms

    monkeypatch.setattr(cg, "_MEASURE", measure)
    monkeypatch.setattr(sys.modules[__name__], "PLAN_MS", [5.0, 1.0, 2.0, 0.5, 3.0, 4.0, 6.0, 7.0])
    monkeypatch.setattr(sys.modules[__name__], "COMPILED", {0, 1, 4, 5, 6})
    monkeypatch.setattr(cg, "MAX_PLANS", 2)
    monkeypatch.setattr(cg, "MAX_COMPILED_PLANS", 3)
    built = cg.conv_graph(x, w, b, z, torch.empty_like(ref), [1, 1], [1, 1], [1, 1], "relu",
                          check=lambda o: ref)
    # per graph: compiled plans 0, 1, 4 (not 5, 6: budget 3); pre-compiled 2 (fails) and 3
    # (wrong) use that budget (2), so 7 is not tried
    assert times == {1: [0, 1, 4], 2: [0, 1, 4]}
    assert (built.plan_name, built.plan, built.graph) == ("bias-first:eng1", 1, _Graph.built[-1])


def test_clip_none_and_sdpa_operations(fake):
    x, w, b, _, ref = _conv_case(z=False)
    out = torch.empty_like(ref)
    _Graph.reference = ref
    cg.conv_graph(x, w, None, None, out, [1, 1], [1, 1], [1, 1], "clip", (0.0, 6.0))
    g = _Graph.built[-1]
    assert g.ops == ["conv", "clip"] and g.clip == {"lower_clip": 0.0, "upper_clip": 6.0}
    assert set(g.tensors) == {"x", "w"}
    cg.conv_graph(x, w, b, None, out, [1, 1], [1, 1], [1, 1], "none")
    assert _Graph.built[-1].ops == ["conv", "bias"]
    with pytest.raises(BuildError, match="gelu"):
        cg.conv_graph(x, w, b, None, out, [1, 1], [1, 1], [1, 1], "gelu")
    q = torch.randn(2, 3, 4, 8)
    o = torch.empty(2, 4, 3, 8).transpose(1, 2)
    _Graph.reference = torch.zeros_like(o)
    cg.sdpa_graph(q, q, q, None, o, 0.125)
    g = _Graph.built[-1]
    assert g.ops == ["sdpa"] and g.sdpa_kw["attn_scale"] == 0.125 and g.sdpa_kw["bias"] is None
    assert g.tensors.keys() == {"q", "k", "v"}


def test_no_plan_that_works_is_an_error_and_capture_never_builds(fake, monkeypatch):
    x, w, b, z, ref = _conv_case()
    out = torch.empty_like(ref)
    _Graph.reference = ref * 3  # every plan's result is wrong against the check
    with pytest.raises(BuildError, match="no cuDNN execution plan"):
        cg.conv_graph(x, w, b, z, out, [1, 1], [1, 1], [1, 1], "relu", check=lambda o: ref)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="before CUDA-graph capture"):
        cg.conv_graph(x, w, b, None, out, [1, 1], [1, 1], [1, 1], "relu")


def test_a_new_process_reuses_the_chosen_plan_without_timing(fake, monkeypatch, tmp_path):
    x, w, b, z, ref = _conv_case()
    out = torch.empty_like(ref)
    _Graph.reference = ref
    first = cg.conv_graph(x, w, b, z, out, [1, 1], [1, 1], [1, 1], "relu", check=lambda o: ref)
    assert first.plan == 1 and len(fake) == 4  # per order, plans 0 and 1 timed (2 fails, 3 is wrong)
    saved = (tmp_path / "cudnn-plans.json").read_text()
    assert "residual-first:eng1" in saved and "Fake GPU" in saved and "91900" in saved
    # a new process: empty in-memory caches, the same file
    monkeypatch.setattr(cg, "_CACHE", {})
    monkeypatch.setattr(cg, "PLAN_CHOICES", cg.PlanChoices(tmp_path / "cudnn-plans.json"))
    built = len(_Graph.built)
    again = cg.conv_graph(x, w, b, z, out, [1, 1], [1, 1], [1, 1], "relu", check=lambda o: ref)
    assert again.plan == 1 and len(fake) == 4  # built and checked, not timed
    assert len(_Graph.built) == built + 1 and _Graph.built[-1].ops[1] == "add"  # only the saved order
    # a saved choice that gives a wrong result now is dropped: the plans are timed again
    monkeypatch.setattr(cg, "_CACHE", {})
    monkeypatch.setattr(cg, "PLAN_CHOICES", cg.PlanChoices(tmp_path / "cudnn-plans.json"))
    monkeypatch.setattr(sys.modules[__name__], "WRONG", {1, 3})
    third = cg.conv_graph(x, w, b, z, out, [1, 1], [1, 1], [1, 1], "relu", check=lambda o: ref)
    assert third.plan == 0 and len(fake) == 6
    assert "residual-first:eng0" in (tmp_path / "cudnn-plans.json").read_text()


def test_an_unwritable_plan_file_warns_once(fake, monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(cg, "PLAN_CHOICES", cg.PlanChoices(blocker / "cudnn-plans.json"))
    x, w, b, z, ref = _conv_case()
    _Graph.reference = ref
    with pytest.warns(UserWarning, match="EMBER_CACHE"):
        cg.conv_graph(x, w, b, z, torch.empty_like(ref), [1, 1], [1, 1], [1, 1], "relu")
    with warnings_none():
        cg.conv_graph(x, w, None, z, torch.empty_like(ref), [1, 1], [1, 1], [1, 1], "relu")


def test_a_saved_choice_of_an_order_that_is_not_offered_is_timed_again(fake, tmp_path):
    x, w, b, z, ref = _conv_case()
    _Graph.reference = ref
    key_args = (x, w, b, z, torch.empty_like(ref), [1, 1], [1, 1], [1, 1], "relu")
    cg.conv_graph(*key_args, check=lambda o: ref)
    path = tmp_path / "cudnn-plans.json"
    path.write_text(path.read_text().replace("residual-first:eng1", "eng1"))  # a choice without its order
    cg._CACHE.clear()
    cg.PLAN_CHOICES._entries = None
    timed = len(fake)
    again = cg.conv_graph(*key_args, check=lambda o: ref)
    assert len(fake) > timed and again.plan_name == "residual-first:eng1"

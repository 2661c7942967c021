"""@ember.plugin: shape functions, kernels and tactics, the ONNX / network / Caffe ways in,
the engine file's plugin record, and the errors a bad plugin gets."""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import ember
from ember.errors import BuildError, EngineFileError, GraphError, ShapeError, UnsupportedOpError
from ember.frontends.plugins import caffe_plugin, find_plugin
from ember.ir import DType, OpType, TensorType
from ember.ops.plugin import PluginAttrs, unregister_plugin

DOMAIN = "com.example.tests"


@pytest.fixture
def relu_n():
    """A plugin ``ReluN``: clamp(x, 0, limit), with a CPU default and a second (slow) CPU
    tactic, both device-agnostic torch."""

    @ember.plugin("ReluN", domain=DOMAIN, version=1)
    class ReluN:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel(device="any")
        def clamp(self, inputs, attrs):
            return [inputs[0].clamp(0.0, float(attrs.get("limit", 6.0)))]

        @ember.kernel(device="cpu", tactic="slow")
        def slow(self, inputs, attrs):
            time.sleep(0.02)
            return torch.minimum(torch.relu(inputs[0]), torch.tensor(float(attrs.get("limit", 6.0))))

    yield ReluN
    unregister_plugin(DOMAIN, "ReluN")


def _onnx_model(op: str = "ReluN", domain: str = DOMAIN, version: int = 1, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], name="custom", domain=domain, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(domain, version)])


X = np.linspace(-8, 8, 16, dtype=np.float32).reshape(2, 8)


def _run(engine: ember.runtime.engine.Engine, feeds: dict) -> dict:
    with engine.create_context() as ctx:
        return ctx.infer(feeds)


def test_onnx_node_of_a_custom_domain_runs_the_plugin(relu_n):
    engine = ember.build(_onnx_model(limit=3.0), ember.BuildConfig(device="cpu"))
    (layer,) = engine.plan.layers
    assert layer.kind == "Plugin" and layer.name == "custom" and layer.tactic == "aten"
    np.testing.assert_array_equal(_run(engine, {"x": X})["y"], np.clip(X, 0, 3))


def test_network_api_plugin_call(relu_n):
    net = ember.Network("n")
    x = net.input("x", (2, 8))
    (y,) = net.plugin("ReluN", [x * 2.0], {"limit": 4.0}, domain=DOMAIN)
    assert y.shape == (2, 8) and y.dtype is DType.FLOAT32
    net.output(y, "y")
    engine = ember.build(net, ember.BuildConfig(device="cpu"))
    np.testing.assert_array_equal(_run(engine, {"x": X})["y"], np.clip(2 * X, 0, 4))


def test_tactic_timing_chooses_between_a_plugins_kernels(relu_n):
    config = ember.BuildConfig(device="cpu", tactic_tuning=True, tune_cpu=True)
    engine = ember.build(_onnx_model(), config)
    (layer,) = engine.plan.layers
    slow = f"{DOMAIN}::ReluN@1/slow"
    assert set(layer.timings) == {"aten", slow}
    assert layer.timings[slow] >= 20.0 > layer.timings["aten"]
    assert layer.tactic == "aten"
    np.testing.assert_array_equal(_run(engine, {"x": X})["y"], np.clip(X, 0, 6))


def test_the_slow_tactic_runs_when_it_is_the_faster_one():
    calls = []

    @ember.plugin("Twice", domain=DOMAIN)
    class Twice:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel(device="cpu")
        def sleepy(self, inputs, attrs):
            time.sleep(0.02)
            calls.append("sleepy")
            return [inputs[0] * 2]

        @ember.kernel(device="cpu")
        def quick(self, inputs, attrs):
            calls.append("quick")
            return [inputs[0] + inputs[0]]

    try:
        config = ember.BuildConfig(device="cpu", tactic_tuning=True, tune_cpu=True)
        engine = ember.build(_onnx_model("Twice"), config)
        assert engine.plan.layers[0].tactic == f"{DOMAIN}::Twice@1/quick"
        calls.clear()
        np.testing.assert_array_equal(_run(engine, {"x": X})["y"], 2 * X)
        assert calls == ["quick"]
    finally:
        unregister_plugin(DOMAIN, "Twice")


def test_prepare_kernels_see_constant_inputs_once():
    prepared = []

    @ember.plugin("ScaleBy", domain=DOMAIN)
    class ScaleBy:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel(device="any", prepare=True)
        def scaled(self, attrs, constants):
            w = constants[1] * 2  # the constant weight, repacked once
            prepared.append(w)
            return lambda inputs: [inputs[0] * w]

    try:
        net = ember.Network()
        x = net.input("x", (2, 8))
        net.output(net.plugin("ScaleBy", [x, np.full(8, 0.5, np.float32)], domain=DOMAIN)[0], "y")
        engine = ember.build(net, ember.BuildConfig(device="cpu"))
        np.testing.assert_allclose(_run(engine, {"x": X})["y"], X)
        assert len(prepared) == 1
    finally:
        unregister_plugin(DOMAIN, "ScaleBy")


def test_a_lowering_plugin_writes_built_in_ops():
    @ember.plugin("Swish2", domain=DOMAIN)
    class Swish2:
        def lower(self, lo, attrs):
            x = lo.input(0)
            (gate,) = lo.op(OpType.SIGMOID, [x], suffix="gate")
            lo.op(OpType.MUL, [x, gate], outputs=[lo.outputs[0]], suffix="mul")

    try:
        engine = ember.build(_onnx_model("Swish2"), ember.BuildConfig(device="cpu"))
        assert "Plugin" not in {layer.kind for layer in engine.plan.layers}
        np.testing.assert_allclose(_run(engine, {"x": X})["y"], X / (1 + np.exp(-X)), rtol=1e-6)
    finally:
        unregister_plugin(DOMAIN, "Swish2")


def test_versions_follow_the_domains_opset(relu_n):
    @ember.plugin("ReluN", domain=DOMAIN, version=3)
    class ReluN3:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel(device="any")
        def negated(self, inputs, attrs):
            return [-inputs[0]]

    assert find_plugin(DOMAIN, "ReluN", 2).version == 1
    assert find_plugin(DOMAIN, "ReluN", 5).version == 3
    engine = ember.build(_onnx_model(version=4), ember.BuildConfig(device="cpu"))
    np.testing.assert_array_equal(_run(engine, {"x": X})["y"], -X)


def test_an_op_no_plugin_serves_is_listed_with_how_to_supply_one():
    with pytest.raises(UnsupportedOpError) as e:
        ember.build(_onnx_model("Nope", domain="com.example.none"), ember.BuildConfig(device="cpu"))
    msg = str(e.value)
    assert "Nope (domain com.example.none, opset 1): node 'custom'" in msg
    assert "@ember.plugin('Nope', domain='com.example.none')" in msg


def test_caffe_layers_are_looked_up_in_the_caffe_domain():
    assert caffe_plugin("MyCaffeLayer") is None

    @ember.plugin("MyCaffeLayer", domain="caffe")
    class MyCaffeLayer:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel
        def identity(self, inputs, attrs):
            return [inputs[0].clone()]

    try:
        spec = caffe_plugin("MyCaffeLayer")
        assert spec is not None and spec.domain == "caffe" and spec.module == __name__
    finally:
        unregister_plugin("caffe", "MyCaffeLayer")


# ---- errors -----------------------------------------------------------------------------

def _shape_plugin(name: str, infer):
    cls = type(name, (), {"infer": lambda self, inputs, attrs: infer(inputs),
                          "k": ember.kernel(lambda self, inputs, attrs: [inputs[0]])})
    return ember.plugin(name, domain=DOMAIN)(cls)


@pytest.mark.parametrize("infer, expected", [
    (lambda inputs: 1 / 0, "raised ZeroDivisionError: division by zero"),
    (lambda inputs: "float32[2, 8]", "returned str; it must return a list of ember.ir.TensorType"),
    (lambda inputs: [TensorType(DType.FLOAT32, (2, -8))], "returned the shape [2, -8] for output 0"),
    (lambda inputs: [], "returned 0 type(s) for 1 output(s)"),
    (lambda inputs: [(2, 8)], "returned (2, 8) for output 0; expected an ember.ir.TensorType"),
])
def test_a_bad_shape_function_is_named_with_its_node_and_inputs(infer, expected):
    _shape_plugin("BadShape", infer)
    try:
        with pytest.raises(ShapeError) as e:
            ember.build(_onnx_model("BadShape"), ember.BuildConfig(device="cpu"))
        msg = str(e.value)
        assert f"plugin {DOMAIN}::BadShape@1 (module {__name__})" in msg
        assert "node 'custom' on inputs (float32[2, 8])" in msg
        assert expected in msg
    finally:
        unregister_plugin(DOMAIN, "BadShape")


def test_a_bad_shape_function_fails_at_the_network_call():
    _shape_plugin("BadShape", lambda inputs: 1 / 0)
    try:
        net = ember.Network("n")
        x = net.input("x", (2, 8))
        with pytest.raises(ShapeError, match=r"ember.Network 'n': plugin 'BadShape' on x float32\[2, 8\]"):
            net.plugin("BadShape", [x], domain=DOMAIN)
    finally:
        unregister_plugin(DOMAIN, "BadShape")


def test_a_kernel_returning_the_wrong_shape_is_named():
    @ember.plugin("Shrinks", domain=DOMAIN)
    class Shrinks:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel(device="cpu")
        def half(self, inputs, attrs):
            return [inputs[0][:1]]

    try:
        engine = ember.build(_onnx_model("Shrinks"), ember.BuildConfig(device="cpu"))
        with pytest.raises(GraphError, match=r"node 'custom': plugin .*Shrinks@1 .*kernel 'half': output 0 "
                                             r"has shape \[1, 8\] but the plugin's shape function said "
                                             r"float32\[2, 8\]"):
            _run(engine, {"x": X})
    finally:
        unregister_plugin(DOMAIN, "Shrinks")


def test_a_plugin_without_a_cpu_kernel_says_so_on_a_cpu_build():
    @ember.plugin("GpuOnly", domain=DOMAIN)
    class GpuOnly:
        def infer(self, inputs, attrs):
            return [inputs[0]]

        @ember.kernel(device="cuda")
        def fast(self, inputs, attrs):
            return [inputs[0]]

    try:
        with pytest.raises(BuildError, match=r"has no CPU kernel \(its kernels: fast \(cuda\)\); add one "
                                             r"with @ember.kernel\(device='cpu'\)"):
            ember.build(_onnx_model("GpuOnly"), ember.BuildConfig(device="cpu"))
    finally:
        unregister_plugin(DOMAIN, "GpuOnly")


def test_declaration_errors():
    with pytest.raises(GraphError, match="has infer\\(\\) but no kernel"):
        @ember.plugin("NoKernel", domain=DOMAIN)
        class NoKernel:
            def infer(self, inputs, attrs):
                return [inputs[0]]
    with pytest.raises(GraphError, match="defines neither infer\\(\\) nor lower\\(\\)"):
        @ember.plugin("Empty", domain=DOMAIN)
        class Empty:
            pass
    with pytest.raises(ValueError, match="device='gpu'"):
        ember.kernel(device="gpu")


def test_plugin_attrs_store_and_compare_arrays():
    a = PluginAttrs.make("Op", "d", 1, {"w": np.arange(3), "k": (1, 2), "s": "x"})
    b = PluginAttrs.make("Op", "d", 1, {"s": "x", "k": [1, 2], "w": np.arange(3)})
    assert a == b and hash(a) == hash(b) and a["k"] == (1, 2)
    with pytest.raises(KeyError, match="has no attribute 'z'"):
        a["z"]
    with pytest.raises(TypeError, match="attribute 'o' has a value of type object"):
        PluginAttrs.make("Op", "d", 1, {"o": object()})


# ---- the engine file ----------------------------------------------------------------------

PLUGIN_MODULE = '''
import ember

@ember.plugin("Cube", domain="com.example.file", version=2)
class Cube:
    def infer(self, inputs, attrs):
        return [inputs[0]]

    @ember.kernel(device="any")
    def torch(self, inputs, attrs):
        return [inputs[0] ** 3]
'''


def test_the_engine_file_records_its_plugins_and_loading_needs_them(tmp_path: Path, monkeypatch):
    name = f"fp_cube_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__(name)
    try:
        engine = ember.build(_onnx_model("Cube", domain="com.example.file", version=2),
                             ember.BuildConfig(device="cpu"))
        path = tmp_path / "cube.ember"
        engine.save(path)
        from ember.runtime.engine_file import _read_members

        manifest, _ = _read_members(path)
        assert manifest["plugins"] == [{"name": "Cube", "domain": "com.example.file", "version": 2,
                                        "module": name}]
        np.testing.assert_allclose(_run(ember.load(path), {"x": X})["y"], X ** 3, rtol=1e-6)

        unregister_plugin("com.example.file", "Cube")
        del sys.modules[name]
        with pytest.raises(EngineFileError) as e:
            ember.load(path)
        assert f"com.example.file::Cube@2 (declared in module '{name}')" in str(e.value)
        assert f"Import {name} before loading" in str(e.value)
        assert "import_plugins=True" in str(e.value)

        loaded = ember.load(path, import_plugins=True)  # the user's opt-in: imports the module
        assert name in sys.modules
        np.testing.assert_allclose(_run(loaded, {"x": X})["y"], X ** 3, rtol=1e-6)
    finally:
        unregister_plugin("com.example.file", "Cube")
        sys.modules.pop(name, None)


def test_an_engine_without_plugin_layers_records_none(tmp_path: Path):
    net = ember.Network()
    net.output(net.input("x", (2, 8)).relu(), "y")
    path = tmp_path / "plain.ember"
    ember.build(net, ember.BuildConfig(device="cpu")).save(path)
    from ember.runtime.engine_file import _read_members

    assert _read_members(path)[0]["plugins"] == []


@pytest.mark.cuda
def test_plugin_kernels_on_cuda(relu_n):
    engine = ember.build(_onnx_model(limit=3.0), ember.BuildConfig(device="cuda"))
    assert engine.plan.layers[0].tactic == f"{DOMAIN}::ReluN@1/clamp"
    out = _run(engine, {"x": X})["y"]
    np.testing.assert_array_equal(out, np.clip(X, 0, 3))


def test_cuda_registry_attaches_to_plugins_declared_before_and_after(relu_n):
    """The CUDA backend attaches its registry when its kernel families load (the plugin module
    never imports it): every device-capable kernel, of plugins declared before and after, becomes
    a tactic there, and a ``needs_triton`` kernel is available only where Triton is."""
    from ember.backends import plugins
    from ember.backends.kernel_registry import KernelRegistry
    from ember.ir import Node
    from ember.ops.plugin import PluginAttrs

    fake = KernelRegistry("FAKE-CUDA", lambda: None)
    saved = dict(plugins._REGISTRIES), dict(plugins._TRITON)
    triton_here = {"on": False}
    try:
        plugins.attach_registry("cuda", fake, lambda: triton_here["on"])

        @ember.plugin("Twice", domain=DOMAIN)
        class Twice:
            def infer(self, inputs, attrs):
                return [inputs[0]]

            @ember.kernel(device="cuda", needs_triton=True)
            def tri(self, inputs, attrs):
                return [inputs[0] * 2]

        try:
            relu_key, twice_key = relu_n.ember_plugin.key, Twice.ember_plugin.key
            relu_node = Node("r", OpType.PLUGIN, ("x",), ("y",), PluginAttrs.make("ReluN", DOMAIN, 1))
            twice_node = Node("t", OpType.PLUGIN, ("x",), ("y",), PluginAttrs.make("Twice", DOMAIN, 1))
            # ReluN (declared before): its "any" kernel; its CPU-only tactic is not a CUDA one
            assert fake.candidates(relu_node, None) == [plugins.tactic_name(relu_key, "clamp")]
            assert fake.candidates(twice_node, None) == []  # no Triton here
            triton_here["on"] = True
            assert fake.candidates(twice_node, None) == [plugins.tactic_name(twice_key, "tri")]
        finally:
            unregister_plugin(DOMAIN, "Twice")
    finally:
        plugins._REGISTRIES.clear()
        plugins._REGISTRIES.update(saved[0])
        plugins._TRITON.clear()
        plugins._TRITON.update(saved[1])

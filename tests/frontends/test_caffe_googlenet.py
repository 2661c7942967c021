"""The classic GoogLeNet from Caffe files: the public bvlc_googlenet deploy.prototxt
(``data/caffe_bvlc_googlenet_deploy.prototxt``) with a caffemodel written from the zoo GoogLeNet's
weights, against the same weights exported to ONNX: both routes give the same outputs, and the
profile shows Caffe's fused layer names."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from caffe_util import GOOGLENET_DEPLOY, caffemodel, module_blobs
from onnx import helper

import ember
from ember import zoo
from ember.frontends import load
from ember.tools.profile import profile_engine

CPU = ember.BuildConfig(device="cpu", shapes={"data": (1, 3, 224, 224)})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The deploy prototxt and a caffemodel of the zoo GoogLeNet's weights (seed 0, what
    ``zoo.export_onnx`` exports)."""
    model = zoo.build_model("googlenet", seed=0)
    weights = tmp_path_factory.mktemp("caffe") / "bvlc_googlenet.caffemodel"
    weights.write_bytes(caffemodel(module_blobs(model)))
    return str(GOOGLENET_DEPLOY), str(weights)


@pytest.fixture(scope="module")
def caffe_engine(files: tuple[str, str]) -> ember.Engine:
    return ember.build(files[0], CPU, weights=files[1], progress=False)


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    return {"data": zoo.sample_inputs("googlenet", 1)["input"]}


def test_googlenet_graph_keeps_caffe_names(files: tuple[str, str]) -> None:
    g = load(files[0], weights=files[1])
    assert g.inputs == ["data"] and g.outputs == ["prob"]
    assert g.types["data"].shape == (10, 3, 224, 224)  # the prototxt's batch, until shapes say otherwise
    assert g.types["prob"].shape == (10, 1000)
    names = {n.name for n in g.nodes}
    assert {"conv1/7x7_s2", "conv1/relu_7x7", "inception_3a/1x1", "inception_3a/relu_1x1",
            "inception_5b/output", "loss3/classifier", "prob"} <= names
    assert g.source_info.format == "caffe" and g.source_info.nodes == 143


def test_googlenet_same_outputs_as_the_onnx_export(files: tuple[str, str], caffe_engine: ember.Engine,
                                                    feeds: dict[str, np.ndarray], tmp_path) -> None:
    exported = onnx.load(str(zoo.export_onnx("googlenet", batch=1)))
    logits = exported.graph.output[0].name
    exported.graph.node.append(helper.make_node("Softmax", [logits], ["prob"], name="prob", axis=1))
    del exported.graph.output[:]
    exported.graph.output.append(helper.make_tensor_value_info("prob", onnx.TensorProto.FLOAT, [1, 1000]))
    onnx_engine = ember.build(exported, ember.BuildConfig(device="cpu"), progress=False)
    with caffe_engine.create_context() as ctx:
        ours = ctx.infer(feeds)["prob"]
    with onnx_engine.create_context() as ctx:
        theirs = ctx.infer({"input": feeds["data"]})["prob"]
    assert ours.shape == (1, 1000)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert int(ours.argmax()) == int(theirs.argmax())
    layers = {lay.kind for lay in caffe_engine.plan.layers}
    assert len(caffe_engine.plan.layers) == len(onnx_engine.plan.layers), layers


def test_googlenet_profile_reads_caffe_layer_names(caffe_engine: ember.Engine,
                                                    feeds: dict[str, np.ndarray]) -> None:
    rows, _ = profile_engine(caffe_engine, feeds, iterations=1, warmup=0)
    names = [r.display_name for r in rows]
    assert "conv1/7x7_s2 + conv1/relu_7x7" in names
    assert "inception_5b/pool_proj + inception_5b/relu_pool_proj" in names
    # the optimizer runs an inception's three 1x1 convolutions as one (horizontal fusion), so
    # that row names all three with their ReLUs, Caffe's names first
    assert any(n.startswith("inception_3a/1x1 + inception_3a/relu_1x1 + inception_3a/3x3_reduce")
               for n in names)
    assert all(r.median > 0 for r in rows)


def test_cli_profile_takes_the_prototxt_and_its_weights(files: tuple[str, str], capsys) -> None:
    """`ember profile deploy.prototxt --weights model.caffemodel`: the fused-name table in Caffe's
    layer names, straight from the two Caffe files (Ember alone: no peer reads them)."""
    from ember.cli import main

    code = main(["profile", files[0], "--weights", files[1], "--device", "cpu", "--shapes",
                 "data:1x3x224x224", "--iterations", "1", "--warmup", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "conv1/7x7_s2 + conv1/relu_7x7" in out and "inception_3a/1x1 + inception_3a/relu_1x1" in out


@pytest.mark.cuda
def test_googlenet_from_caffe_files_on_cuda(files: tuple[str, str], caffe_engine: ember.Engine,
                                            feeds: dict[str, np.ndarray]) -> None:
    """The Caffe route built for CUDA: fp32 matches the CPU engine, fp16 within half precision."""
    with caffe_engine.create_context() as ctx:
        want = ctx.infer(feeds)["prob"]
    for precision, tol in (("fp32", 1e-4), ("fp16", 1e-2)):
        engine = ember.build(files[0], ember.BuildConfig(device="cuda", precision=precision,
                                                         shapes={"data": (1, 3, 224, 224)}),
                             weights=files[1], progress=False)
        with engine.create_context() as ctx:
            got = np.asarray(ctx.infer(feeds)["prob"], dtype=np.float32)
        assert np.abs(got - want).max() <= tol * np.abs(want).max(), precision

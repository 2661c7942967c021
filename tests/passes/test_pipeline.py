"""The pass manager and the pipeline: instruments, dumps, verification, keep, optimize=False."""
import pytest

from ember.errors import BuildError, GraphError
from ember.ir import Node, OpType
from ember.ops.attrs import ConvAttrs
from ember.passes.manager import PassContext, Phase, VerifyInstrument, get_pass, register_pass, run_passes
from ember.passes.pipeline import PIPELINE, pipeline_passes, run_pipeline

from passkit import assert_same_outputs, ir_graph, optimize, optimized, rng_const


def conv_relu_graph():
    nodes = [Node("conv", OpType.CONV, ("x", "w", "b"), ("c",), ConvAttrs((1, 1), (1, 1), (0, 0, 0, 0), (1, 1))),
             Node("id", OpType.IDENTITY, ("c",), ("i",)),
             Node("relu", OpType.RELU, ("i",), ("y",))]
    return ir_graph(nodes, {"x": (1, 3, 4, 4)}, ["y"], {"w": rng_const(4, 3, 1, 1), "b": rng_const(4)})


def test_pipeline_records_stats_per_pass():
    g = conv_relu_graph()
    out = optimized(g)
    stats = out.stats
    assert [s.name for s in stats] == [p.name for p in pipeline_passes(None)]
    first = stats[0]
    assert first.name == "eliminate_noops" and first.nodes_before == 3 and first.nodes_after == 2
    assert first.changed and first.fired == {"x -> noop(x) => x": 1}
    assert all(s.seconds >= 0 for s in stats)
    assert out.stats_json()[0]["name"] == "eliminate_noops"
    assert_same_outputs(g, out.graph)


def test_dump_dir_writes_graph_after_each_pass(tmp_path):
    run_pipeline(conv_relu_graph(), None, dump_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[0] == "00-input.txt"
    assert len(files) == len(pipeline_passes(None)) + 1
    text = (tmp_path / files[1]).read_text()
    assert text.startswith("# after pass eliminate_noops (cleanup): 3 -> 2 nodes")
    assert "Identity" not in text and "Relu[relu]" in text


def test_optimize_false_skips_fusion_phases():
    phases = {p.phase for p in pipeline_passes(type("C", (), {"optimize": False})())}
    assert Phase.FUSE not in phases and Phase.LAYOUT not in phases
    assert Phase.CLEANUP in phases and Phase.FOLD in phases


def test_pipeline_is_an_explicit_list_of_registered_passes():
    for name in PIPELINE:
        assert get_pass(name).name == name
    with pytest.raises(KeyError, match="no pass named"):
        get_pass("no_such_pass")


def test_verifier_names_the_pass_that_broke_the_graph():
    def breaker(graph, ctx):
        return graph.copy(nodes=graph.nodes[1:])  # drops the producer of a used tensor

    from ember.passes.manager import Pass
    p = Pass("breaker", Phase.CLEANUP, breaker)
    with pytest.raises(GraphError, match="pass 'breaker'.*invalid graph"):
        run_passes(conv_relu_graph(), [p], PassContext(), [VerifyInstrument()])


def test_keep_preserves_a_tensor_the_cleanup_would_remove():
    g = conv_relu_graph()
    out = optimize(g, keep=["i"])
    assert "i" in {o for n in out.nodes for o in n.outputs}


def test_keep_unknown_tensor_is_an_error():
    with pytest.raises(BuildError, match="no_such"):
        run_pipeline(conv_relu_graph(), None, keep=["no_such"])


def test_register_pass_twice_is_refused():
    with pytest.raises(RuntimeError, match="registered twice"):
        register_pass("dce", Phase.CLEANUP)(lambda g, c: g)

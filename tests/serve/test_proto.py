"""Our .proto against Triton's: every field we define has Triton's number, type and label, so the
bytes on the wire are what tritonclient expects; the parser rejects what it does not know."""
from __future__ import annotations

import numpy as np
import pytest

from ember.serve.proto import ProtoSyntaxError, _Builder, _Parser, file_descriptor, messages, service_methods

triton_service = pytest.importorskip("tritonclient.grpc.service_pb2")
triton_config = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _triton_descriptor(full_name: str):
    for module in (triton_service, triton_config):
        try:
            return module.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
        except KeyError:
            continue
    raise KeyError(full_name)


def _walk(desc):
    yield desc
    for nested in desc.nested_types:
        yield from _walk(nested)


def _ours():
    for top in file_descriptor().message_types_by_name.values():
        yield from _walk(top)


def test_every_field_matches_triton():
    checked = 0
    for ours in _ours():
        theirs = _triton_descriptor(ours.full_name)
        assert ours.GetOptions().map_entry == theirs.GetOptions().map_entry, ours.full_name
        for f in ours.fields:
            t = theirs.fields_by_name.get(f.name)
            assert t is not None, f"{ours.full_name}.{f.name} is not in Triton's proto"
            assert (f.number, f.type, f.is_repeated) == (t.number, t.type, t.is_repeated), \
                f"{ours.full_name}.{f.name}"
            if f.message_type is not None:
                assert f.message_type.full_name == t.message_type.full_name, f"{ours.full_name}.{f.name}"
            if f.enum_type is not None:
                assert f.enum_type.full_name == t.enum_type.full_name
                assert {v.name: v.number for v in f.enum_type.values}.items() <= \
                    {v.name: v.number for v in t.enum_type.values}.items()
            assert (f.containing_oneof is None) == (t.containing_oneof is None), f"{ours.full_name}.{f.name}"
            checked += 1
    assert checked > 100


def test_service_methods_are_triton_rpcs():
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = file_descriptor().services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for m in ours.methods:
        t = theirs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (t.input_type.full_name, t.output_type.full_name)
    assert {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
            "ModelConfig", "ModelStatistics"} <= set(service_methods())


def test_round_trip_with_tritonclient_messages():
    m = messages()
    req = m["ModelInferRequest"](model_name="simple", id="7")
    req.parameters["timeout"].int64_param = 1000
    t = req.inputs.add(name="x", datatype="FP32", shape=[2, 3])
    t.contents.fp32_contents.extend([1, 2, 3, 4, 5, 6])
    req.raw_input_contents.append(np.arange(6, dtype=np.float32).tobytes())
    theirs = triton_service.ModelInferRequest.FromString(req.SerializeToString())
    assert theirs.model_name == "simple" and theirs.parameters["timeout"].int64_param == 1000
    assert list(theirs.inputs[0].shape) == [2, 3]
    assert list(theirs.inputs[0].contents.fp32_contents) == [1, 2, 3, 4, 5, 6]
    back = m["ModelInferRequest"].FromString(theirs.SerializeToString())
    assert back == req


@pytest.mark.parametrize("text, words", [
    ('syntax = "proto2";', ["only proto3"]),
    ('syntax = "proto3"; message A { int32 x = 1 }', ["expected ';'"]),
    ('syntax = "proto3"; message A { Missing x = 1; }', ["unknown type 'Missing'"]),
    ('syntax = "proto3"; option java_package = "x";', ["unexpected 'option'"]),
    ('syntax = "proto3"; message A { int32 x = 1; } @', ["characters the proto parser does not know"]),
])
def test_parser_errors(text, words):
    with pytest.raises(ProtoSyntaxError) as info:
        _Builder(_Parser(text, "t.proto").parse(), "t.proto").build()
    for w in words:
        assert w in str(info.value)

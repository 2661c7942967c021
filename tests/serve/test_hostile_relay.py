"""The hostile gRPC requests of ``test_hostile`` and ``test_hostile_generated`` again, through a gRPC
front-end process (the relay path): the same codes, the same limits, batchmates of a bad request
unaffected, the model-control token checked."""
from __future__ import annotations

import shutil

import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from ember.serve import ServerOptions, ServerThread

from servekit import write_model

# isort: split
from test_hostile import (  # noqa: E402,F401 - the tests and fixtures run again on this module's server
    LIMITS,
    TOKEN,
    channel,
    gather_model,
    gclient,
    test_an_index_out_of_range_fails_only_its_request_over_grpc,
    test_grpc_messages_over_the_limit_are_refused,
    test_malformed_grpc_requests_are_invalid_argument,
)
from test_hostile_generated import (  # noqa: E402,F401 - the generated gRPC kinds, through a front end
    test_generated_malformed_grpc_requests_are_client_errors_and_good_ones_stay_correct,
    test_mutated_grpc_messages_are_client_errors_or_right_answers,
    test_other_rpcs_with_hostile_names_are_client_errors,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, repository, cache_dir):
    root = tmp_path_factory.mktemp("hostile-relay-repo")
    shutil.copytree(repository / "simple", root / "simple")
    write_model(root, "gather", gather_model(),
                "max_batch_size: 8\ndynamic_batching: {max_queue_delay_microseconds: 30000}\n")
    with ServerThread(ServerOptions(root, http_port=-1, grpc_port=0, metrics_port=-1, cache_dir=cache_dir,
                                    limits=LIMITS, model_control_mode="explicit", model_control_token=TOKEN,
                                    grpc_front_ends=1, grpc_staging_mb=0)) as s:
        assert s.server.front_ends is not None
        yield s


def test_the_model_control_token_is_checked_through_a_front_end(srv, gclient):  # noqa: F811
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": "Bearer"}, {"x-token": TOKEN}):
        for call in (gclient.unload_model, gclient.load_model):
            with pytest.raises(InferenceServerException) as info:
                call("simple", headers=headers)
            assert info.value.status() == "StatusCode.UNAUTHENTICATED", (headers, info.value.message())
            assert "Bearer" in info.value.message()
    assert gclient.is_model_ready("simple")
    gclient.unload_model("simple", headers={"authorization": f"Bearer {TOKEN}"})
    assert not gclient.is_model_ready("simple")
    gclient.load_model("simple", headers={"authorization": f"bearer  {TOKEN} "})
    assert gclient.is_model_ready("simple")
    assert srv.server.front_ends is not None and srv.server.front_ends.hub.connected


def test_model_control_off_answers_permission_denied_through_a_front_end(repository, cache_dir):
    with ServerThread(ServerOptions(repository, http_port=-1, grpc_port=0, metrics_port=-1, cache_dir=cache_dir,
                                    grpc_front_ends=1, grpc_staging_mb=0)) as s:
        c = tg.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
        with pytest.raises(InferenceServerException) as info:
            c.load_model("simple")
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"

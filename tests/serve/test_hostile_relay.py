"""The hostile gRPC requests of ``test_hostile`` again, through a gRPC front-end process (the
relay path): the same codes, the same limits, batchmates of a bad request unaffected."""
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


def test_a_token_cannot_be_checked_through_a_front_end(gclient):  # noqa: F811
    with pytest.raises(InferenceServerException) as info:
        gclient.unload_model("simple", headers={"authorization": f"Bearer {TOKEN}"})
    assert info.value.status() == "StatusCode.UNAUTHENTICATED" and "front ends" in info.value.message()


def test_model_control_off_answers_permission_denied_through_a_front_end(repository, cache_dir):
    with ServerThread(ServerOptions(repository, http_port=-1, grpc_port=0, metrics_port=-1, cache_dir=cache_dir,
                                    grpc_front_ends=1, grpc_staging_mb=0)) as s:
        c = tg.InferenceServerClient(f"127.0.0.1:{s.grpc_port}")
        with pytest.raises(InferenceServerException) as info:
            c.load_model("simple")
        assert info.value.status() == "StatusCode.PERMISSION_DENIED"

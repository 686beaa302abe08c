"""gRPC ``ModelReady`` for a model that is not served answers ``ready: false`` as Triton does
(not NOT_FOUND), so ``tritonclient.grpc``'s ``is_model_ready()`` returns False: a model unloaded
in explicit mode, one never loaded, an unknown name, a version not served. HTTP agrees."""

from __future__ import annotations

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from service_helpers import in_thread
from service_repository_cases import ADMIN, TOKEN, rms


def test_model_ready_is_false_for_a_model_not_loaded(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        rms(tmp_path / name, scale)
    with in_thread(grpc=True, model_repository=str(tmp_path), admin_token=TOKEN,
                   model_control_mode="explicit", load_models=("a",)) as srv:
        grpc = grpcclient.InferenceServerClient(srv.grpc_url)
        http = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
        try:
            assert grpc.is_model_ready("a") is True
            assert grpc.is_model_ready("a", "1") is True
            assert grpc.is_model_ready("b") is False  # in the repository, not loaded
            assert grpc.is_model_ready("nope") is False  # unknown
            assert grpc.is_model_ready("a", "2") is False  # a version not served
            grpc.unload_model("a", headers=ADMIN)
            assert grpc.is_model_ready("a") is False
            assert http.is_model_ready("a") is False
            assert grpc.is_server_ready()  # what is loaded (nothing) is ready
            grpc.load_model("a", headers=ADMIN)
            assert grpc.is_model_ready("a") is True
            assert http.is_model_ready("a") is True
        finally:
            grpc.close()
            http.close()

"""Stopping an in-process server (grpc/server.py): calls that outlive the grace period are
cut at its end with UNAVAILABLE, and nothing is left in flight or queued. (SIGTERM to a
real `whybert serve` process: system/test_shutdown.py.)"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from _servers import FaultyClassifier, ServerThread, registry_factory, tiny_settings
from _wait import wait_for
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc


def test_calls_that_outlive_the_grace_period_are_cut_at_its_end(
    tiny_classifier: Any, tiny_model_dir: Path
) -> None:
    faulty = FaultyClassifier(tiny_classifier)
    settings = tiny_settings(tiny_model_dir)
    with ServerThread(settings, registry_factory(faulty, settings)) as server:
        with grpc.insecure_channel(server.target, options=[("grpc.enable_retries", 0)]) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            faulty.hold()
            stuck = stub.Predict.future(
                pb.PredictRequest(texts=["a forward pass that never ends"]), timeout=60
            )
            assert faulty.entered.wait(10)
            queued = stub.Predict.future(pb.PredictRequest(texts=["waiting behind it"]), timeout=60)
            assert wait_for(lambda: server.worker.queued_rows() == 1)
            started = time.monotonic()
            threading.Timer(2.0, faulty.release).start()  # lets the worker thread end, later
            server.stop(grace=0.5)
            for call in (stuck, queued):
                with pytest.raises(grpc.RpcError) as cut:
                    call.result(timeout=10)
                assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 10
        assert server.server is not None and server.server.dataplane is not None
        assert server.server.dataplane._in_flight == 0
        assert not server.worker.healthy and server.worker.queued_rows() == 0

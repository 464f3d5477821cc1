"""PredictStream and ExplainStream over real gRPC on loopback: every text comes back once
with its index and the values unary calls give; a stream holds one request slot; a slow
reader holds the server's work back to the window; a cancelled or expired stream stops
sending rows to the model at once; bad fields are refused with their path before any
work; and the clients and the command line read the stream as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import whybert
from _servers import FaultyClassifier, ServerThread, registry_factory, tiny_settings, wait_for
from whybert import cli
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc
from whybert_service.context import RequestContext
from whybert_service.grpc import servicer

WINDOW = 4
SENTENCE = "the soup was cold but the staff were friendly and the bread was fresh while the band played"
WORDS = SENTENCE.split()


def short_text(i: int) -> str:
    return f"review {i}: the {WORDS[i % len(WORDS)]} was {['great', 'awful', 'fine'][i % 3]}"


def long_text(i: int) -> str:
    """About 110 word pieces (the tiny model reads 128): an explanation of every label of
    it is a message of a few kilobytes."""
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(100)) + f" number {i}"


def sample(server: ServerThread, name: str, **labels: str) -> float:
    assert server.server is not None
    return server.server.metrics.registry.get_sample_value(name, labels) or 0.0


def in_flight(server: ServerThread, method: str = "ExplainStream") -> float:
    return sample(server, "whybert_stream_texts_in_flight", method=method)


def sent(server: ServerThread, method: str = "ExplainStream") -> float:
    return sample(server, "whybert_stream_texts_total", method=method)


def admitted(server: ServerThread) -> int:
    assert server.server is not None
    return server.server.dataplane._in_flight


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A server whose stream limit is above its per-request limit, with a small window;
    the cache is off, so that both sides of a comparison are computed."""
    settings = tiny_settings(
        tiny_model_dir, cache_entries=0, stream_window=WINDOW, max_texts_per_request=4, max_stream_texts=300,
        max_rows_per_request=2000,
    )
    with ServerThread(settings) as running:
        yield running


@pytest.fixture
def faulty(tiny_classifier: Any) -> FaultyClassifier:
    return FaultyClassifier(tiny_classifier)


@pytest.fixture
def slow_server(faulty: FaultyClassifier, tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A server whose every forward pass is recorded (and, when a test says so, slowed)."""
    settings = tiny_settings(tiny_model_dir, cache_entries=0, stream_window=WINDOW, max_concurrent_requests=1)
    with ServerThread(settings, registry_factory(faulty, settings)) as running:
        try:
            yield running
        finally:
            faulty.delay = 0.0


# ---- every text once, as unary calls give it --------------------------------------------------


def test_every_text_comes_back_once_with_the_values_of_explain(server: ServerThread) -> None:
    """More texts than one Explain may carry (4), a duplicate among them: each index once,
    each explanation the one Explain gives (to float rounding: rows batched differently)."""
    texts = [short_text(i) for i in range(13)] + [short_text(2)]
    with whybert.Client(server.target) as client:
        streamed = list(client.explain_stream(texts, max_evals=60, targets="all", output="logit"))
        unary = [e for i in range(0, len(texts), 4) for e in client.explain(texts[i : i + 4], max_evals=60,
                                                                           targets="all", output="logit")]
    assert sorted(index for index, _ in streamed) == list(range(len(texts)))
    for index, e in streamed:
        expected = unary[index]
        assert e.text == texts[index] and e.tokens == expected.tokens and e.labels == expected.labels
        np.testing.assert_allclose(e.values, expected.values, rtol=0, atol=1e-6)
        np.testing.assert_allclose(e.base_values, expected.base_values, rtol=0, atol=1e-6)
        np.testing.assert_allclose(e.output_values, expected.output_values, rtol=0, atol=1e-6)
        assert e.model_rows == expected.model_rows and not e.cached
    assert sent(server) >= len(texts) and in_flight(server) == 0


def test_predict_stream_gives_each_text_its_prediction(server: ServerThread) -> None:
    texts = [short_text(i) for i in range(30)]
    with whybert.Client(server.target) as client:
        streamed = dict(client.predict_stream(iter(texts)))  # any iterable: a generator here
        unary = [p for i in range(0, len(texts), 4) for p in client.predict(texts[i : i + 4])]
    assert sorted(streamed) == list(range(len(texts)))
    for index, p in streamed.items():
        assert p.label == unary[index].label and p.token_count == unary[index].token_count
        assert p.scores == pytest.approx(unary[index].scores, abs=1e-6)
    assert sent(server, "PredictStream") >= len(texts)


async def test_the_async_client_streams_the_same(server: ServerThread) -> None:
    texts = [short_text(i) for i in range(9)]
    async with whybert.AsyncClient(server.target) as client:
        predictions = {i: p async for i, p in client.predict_stream(texts)}
        explanations = {i: e async for i, e in client.explain_stream(texts, max_evals=40)}
        unary = await client.explain(texts[:4], max_evals=40)
        with pytest.raises(whybert.InvalidArgumentError) as caught:
            [item async for item in client.predict_stream([*texts, " "])]
    assert caught.value.field_violations == [("texts[9]", "the text is empty or only white space")]
    assert sorted(predictions) == sorted(explanations) == list(range(9))
    for i in range(4):
        np.testing.assert_allclose(explanations[i].values, unary[i].values, rtol=0, atol=1e-6)
        assert explanations[i].prediction.label == predictions[i].label


def test_the_stream_holds_one_request_slot(slow_server: ServerThread, faulty: FaultyClassifier) -> None:
    """max_concurrent_requests=1: while a stream is open, nothing else is admitted."""
    texts = [short_text(i) for i in range(40)]
    with whybert.Client(slow_server.target, retries=0) as client:
        stream = client.explain_stream(texts, max_evals=40)
        next(stream)
        assert admitted(slow_server) == 1
        assert sample(slow_server, "whybert_requests_in_flight", method="ExplainStream") == 1
        with pytest.raises(whybert.ResourceExhaustedError, match="limit of 1 requests in progress"):
            client.predict(["refused while the stream runs"])
        stream.close()
        wait_for(lambda: admitted(slow_server) == 0, timeout=5)
        assert client.predict(["admitted again"])[0].label


def test_a_streams_default_deadline_is_the_clients_timeout_per_text(server: ServerThread) -> None:
    """Left to the client's timeout, a stream gets that timeout for each of its texts (a
    stream of thousands of texts runs far longer than one call may); a timeout given
    covers the whole stream."""
    texts = [short_text(i) for i in range(12)]
    with whybert.Client(server.target, timeout=7.0, retries=0) as client:
        sent: list[float | None] = []
        for name in ("ExplainStream", "PredictStream"):
            method = getattr(client._stub, name)

            def spy(request: Any, timeout: float | None = None, _method: Any = method, **kw: Any) -> Any:
                sent.append(timeout)
                return _method(request, timeout=timeout, **kw)

            setattr(client._stub, name, spy)
        assert len(list(client.explain_stream(texts, max_evals=40))) == len(texts)
        assert len(list(client.predict_stream(texts[:3]))) == 3
        assert len(list(client.explain_stream(texts[:2], max_evals=40, timeout=30.0))) == 2
        assert len(list(client.predict_stream(texts[:2], timeout=None))) == 2
    assert sent == [7.0 * 12, 7.0 * 3, 30.0, None]


# ---- a slow reader, a cancelled stream --------------------------------------------------------


SLOW_READER_TEXTS = 300


def stall(server: ServerThread, channel: grpc.Channel) -> tuple[Any, pb.ExplainStreamResponse]:
    """Open an ExplainStream of 300 long texts, read one message, stop reading, and wait
    until the server has stopped too: WINDOW texts explained and unsent, the transport's
    flow-control window full. Checks, at every look, that the texts explained and unsent
    never exceed the window. Returns the call and its first message."""
    request = pb.ExplainStreamRequest(
        texts=[long_text(i) for i in range(SLOW_READER_TEXTS)],
        target_mode=pb.TARGET_MODE_ALL,
        shap=pb.ShapOptions(max_evals=10),
    )
    explained_before, sent_before = explained(server), sent(server)
    ahead = []

    def stalled() -> bool:
        done, written, running = explained(server) - explained_before, sent(server) - sent_before, in_flight(server)
        ahead.append(done - written)
        return running == WINDOW and done == written + WINDOW

    call = pb_grpc.ExplainerStub(channel).ExplainStream(request, timeout=120)
    first = next(call)
    wait_for(stalled, timeout=30, message=lambda: (
        f"never stalled: explained {explained(server) - explained_before}, sent {sent(server) - sent_before}, "
        f"in flight {in_flight(server)}"
    ))
    assert max(ahead) <= WINDOW
    assert explained(server) - explained_before < SLOW_READER_TEXTS // 4, "the server ran ahead of its reader"
    return call, first


# No BDP probing: the client's flow-control window stays at its initial size, so how far the
# transport may buffer does not depend on the probe's guesses.
SLOW_READER_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.enable_retries", 0)]


def test_a_reader_that_stops_reading_holds_the_server_to_the_window(server: ServerThread) -> None:
    """The client reads one message of 300 and stops. The server fills the transport's
    flow-control window, then has at most WINDOW texts started and unsent: the texts it
    explained stay a small part of the 300, however long the reader waits. Then the reader
    reads on and gets every text."""
    with grpc.insecure_channel(server.target, options=SLOW_READER_OPTIONS) as channel:
        call, first = stall(server, channel)
        indices = [first.index, *(message.index for message in call)]
    assert sorted(indices) == list(range(SLOW_READER_TEXTS))
    assert in_flight(server) == 0


def test_a_stream_cancelled_while_its_reader_holds_it_back_ends_cancelled(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    """The server waits to write to a reader that stopped; the reader cancels. The failed
    write ends the call CANCELLED, quietly, and the texts in flight are stopped."""
    def cancelled() -> float:
        return sample(server, "grpc_server_handled_total", grpc_type="server_stream",
                      grpc_service="whybert.v1.Explainer", grpc_method="ExplainStream", grpc_code="CANCELLED")

    before = cancelled()
    with caplog.at_level(logging.ERROR), grpc.insecure_channel(server.target, options=SLOW_READER_OPTIONS) as channel:
        call, _ = stall(server, channel)
        call.cancel()
        wait_for(lambda: cancelled() == before + 1 and in_flight(server) == 0 and admitted(server) == 0, timeout=5)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def explained(server: ServerThread) -> float:
    """Texts explained by the server (each counted once, as it finishes)."""
    return sample(server, "whybert_explanations_total", model="tiny", explainer="shap-partition", outcome="ok")


MAX_EVALS = 400


def leave(target: str, texts: list[str], how: str) -> None:
    """Open an ExplainStream and leave it: break out of the loop at the first result, let
    the deadline pass, or close the async iterator at the first result."""
    if how == "break":
        with whybert.Client(target, retries=0) as client:
            for _ in client.explain_stream(texts, max_evals=MAX_EVALS):
                break
    elif how == "deadline":
        with whybert.Client(target, retries=0) as client, pytest.raises(whybert.DeadlineExceededError):
            for _ in client.explain_stream(texts, timeout=1.0, max_evals=MAX_EVALS):
                pass
    else:

        async def close_async() -> None:
            async with whybert.AsyncClient(target, retries=0) as client:
                stream = client.explain_stream(texts, max_evals=MAX_EVALS)
                async with contextlib.aclosing(stream):
                    async for _ in stream:
                        break

        asyncio.run(close_async())


@pytest.fixture
def contexts(monkeypatch: pytest.MonkeyPatch) -> list[RequestContext]:
    """Every RequestContext the servicer makes, in order (the test's window on a call)."""
    made: list[RequestContext] = []
    original = servicer.request_context

    def capture(*args: Any) -> RequestContext:
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(servicer, "request_context", capture)
    return made


@pytest.mark.parametrize("how", ["break", "deadline", "aclose"])
def test_a_stream_whose_caller_left_sends_no_more_rows_to_the_model(
    slow_server: ServerThread, faulty: FaultyClassifier, contexts: list[RequestContext], how: str
) -> None:
    """A slow device: each text needs seconds. Once the caller breaks out of the loop, its
    deadline passes or it closes the async iterator, the stream stops within a second: its
    request context is cancelled (the worker takes no more of its rows), nothing of it is
    queued or in flight, and after the batch that was running, a Predict is the only row
    the model sees."""
    faulty.delay = 0.02
    texts = [long_text(i) for i in range(40)]
    leave(slow_server.target, texts, how)
    assert faulty.seen, "the stream never reached the model"
    (stream,) = contexts

    code = "DEADLINE_EXCEEDED" if how == "deadline" else "CANCELLED"

    def handled() -> float:
        return sample(slow_server, "grpc_server_handled_total", grpc_type="server_stream",
                      grpc_service="whybert.v1.Explainer", grpc_method="ExplainStream", grpc_code=code)

    def stopped() -> bool:
        # The handler counts its status last, after its own clean-up: wait for that too.
        idle = admitted(slow_server) == 0 and in_flight(slow_server) == 0 and slow_server.worker.queued_rows() == 0
        return idle and stream.cancelled and handled() == 1

    def state() -> str:
        return (
            f"the stream's work went on after its caller left: {admitted(slow_server)} admitted, "
            f"{in_flight(slow_server)} texts in flight, {slow_server.worker.queued_rows()} rows queued, "
            f"context cancelled: {stream.cancelled}, counted {code}: {handled()}"
        )

    wait_for(stopped, timeout=1.0, message=state)
    faulty.delay = 0.0
    with whybert.Client(slow_server.target, retries=0) as client:
        client.predict(["a barrier: the batch running at the cancel is done"])
        rows = len(faulty.seen)
        client.predict(["the only row after the barrier"])
    assert len(faulty.seen) == rows + 1
    assert rows < len(texts) * MAX_EVALS // 4


# ---- limits ---------------------------------------------------------------------------------


def field_violations(call: Any) -> list[tuple[str, str]]:
    with pytest.raises(whybert.InvalidArgumentError) as caught:
        list(call)
    return caught.value.field_violations


def test_bad_fields_are_refused_with_their_path_before_any_work(server: ServerThread) -> None:
    rows_before = sample(server, "whybert_rows_total", model="tiny")
    texts = [short_text(i) for i in range(20)]
    texts[12] = "x" * 20_001
    with whybert.Client(server.target, retries=0) as client:
        assert field_violations(client.explain_stream(texts, max_evals=40)) == [
            ("texts[12]", "20001 characters; at most 20000 per text")
        ]
        texts[12] = ""
        empty = ("texts[12]", "the text is empty or only white space")
        assert field_violations(client.predict_stream(texts)) == [empty]
        many = [short_text(i) for i in range(301)]
        assert field_violations(client.predict_stream(many)) == [("texts", "301 texts given; at most 300 per stream")]
        # The row budget (2000) is per text: a text may have 2000 rows, not 2001.
        (violation,) = field_violations(client.explain_stream(["fine"], max_evals=2001))
        assert violation[0] == "shap.max_evals" and "at most 2000 per text of a stream" in violation[1]
        (violation,) = field_violations(client.explain_stream(["fine"], targets=["bogus"]))
        assert violation[0] == "target_labels"
    assert sample(server, "whybert_rows_total", model="tiny") == rows_before


def test_undecodable_bytes_are_invalid_argument(server: ServerThread) -> None:
    """Invalid UTF-8 in `texts` (field 2): the stream is refused as Predict is."""
    bad = b"\x12\x03\xff\xfe\xfd"
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_stream("/whybert.v1.Explainer/PredictStream")(bad, timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be valid UTF-8" in caught.value.details()


def test_a_request_over_the_message_limit_is_refused_clearly(tiny_model_dir: Path) -> None:
    """All a stream's texts travel in its one request: past the server's --max-message-bytes
    the client says so in words; past its own limit it refuses before sending."""
    texts = ["a text of a thousand characters " * 31] * 100  # about 100 kB
    settings = tiny_settings(tiny_model_dir, max_message_bytes=64 * 1024, max_stream_texts=1000)
    with ServerThread(settings) as small, whybert.Client(small.target, retries=0) as client:
        with pytest.raises(whybert.ResourceExhaustedError) as caught:
            list(client.predict_stream(texts))
        assert "--max-message-bytes" in caught.value.message and "100 texts" in caught.value.message
        assert sample(small, "whybert_rows_total", model="tiny") == 0
    refusal = "more than this client's message limit of 65536 bytes"
    with whybert.Client("127.0.0.1:1", max_message_bytes=64 * 1024) as client, pytest.raises(ValueError, match=refusal):
        client.explain_stream(texts)


# ---- the command line ------------------------------------------------------------------------


def test_the_command_prints_one_json_line_per_text(server: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    texts = [short_text(i) for i in range(6)]
    target = ["--target", server.target]
    assert cli.main(["predict", *texts, "--stream", *target]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(6))
    assert all(line["text"] == texts[line["index"]] for line in lines)
    assert cli.main(["explain", *texts[:3], "--stream", "--max-evals", "30", *target]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(line["index"] for line in lines) == [0, 1, 2]
    assert all(line["text"] == texts[line["index"]] and line["additivity_error"] < 1e-6 for line in lines)
    assert cli.main(["explain", "x", "--stream", "--html", "out.html", *target]) == 2
    assert "--stream" in capsys.readouterr().err

"""The parts of PredictStream and ExplainStream that need no server: the stream requests
keep the unary requests' fields, validation counts a stream's texts against the stream
limit and its budgets per text, a stream's texts share one fair share in the scheduler, and
the data plane's window starts a text only once a result has been taken back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import pytest
from google.protobuf.descriptor import Descriptor
from whybert.v1 import explainer_pb2 as pb
from whybert_service.batching.queue import RowQueue, Submission
from whybert_service.context import Priority, RequestContext
from whybert_service.dataplane import DataPlane
from whybert_service.errors import Cancelled, InvalidArgument
from whybert_service.grpc import validation
from whybert_service.metrics import Metrics
from whybert_service.registry import ModelRegistry

LIMITS = validation.Limits(
    max_texts=4, max_chars=100, max_evals=4000, max_lime_samples=10_000, max_ig_steps=512,
    max_rows=1000, max_stream_texts=20, stream_window=3,
)
LABELS = ["negative", "neutral", "positive"]


def fields(descriptor: Descriptor) -> list[tuple[object, ...]]:
    return [
        (
            f.name, f.number, f.type, f.is_repeated, f.has_presence,
            f.message_type.full_name if f.message_type else "", f.enum_type.full_name if f.enum_type else "",
        )
        for f in descriptor.fields
    ]


@pytest.mark.parametrize(
    ("unary", "stream"),
    [(pb.PredictRequest, pb.PredictStreamRequest), (pb.ExplainRequest, pb.ExplainStreamRequest)],
    ids=["predict", "explain"],
)
def test_a_stream_request_has_exactly_the_fields_of_its_unary_request(unary: type, stream: type) -> None:
    """Validation and the client fill both alike: a field added to one must be added to both."""
    assert fields(stream.DESCRIPTOR) == fields(unary.DESCRIPTOR)


def violations(call: Callable[[], object]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as caught:
        call()
    return caught.value.violations


def test_a_stream_may_carry_more_texts_than_a_request_up_to_the_stream_limit() -> None:
    texts = [f"text {i}" for i in range(20)]
    assert validation.predict_params(pb.PredictStreamRequest(texts=texts), LIMITS).texts == tuple(texts)
    assert len(validation.explain_params(pb.ExplainStreamRequest(texts=texts), LIMITS).texts) == 20
    assert violations(lambda: validation.predict_params(pb.PredictRequest(texts=texts), LIMITS)) == [
        ("texts", "20 texts given; at most 4 per request")
    ]
    too_many = [*texts, "one more"]
    refusal = [("texts", "21 texts given; at most 20 per stream")]
    assert violations(lambda: validation.predict_params(pb.PredictStreamRequest(texts=too_many), LIMITS)) == refusal
    assert violations(lambda: validation.explain_params(pb.ExplainStreamRequest(texts=too_many), LIMITS)) == refusal


def test_each_bad_text_of_a_stream_is_named_by_its_index() -> None:
    texts = ["fine"] * 15
    texts[3], texts[12] = " ", "x" * 101
    assert violations(lambda: validation.explain_params(pb.ExplainStreamRequest(texts=texts), LIMITS)) == [
        ("texts[3]", "the text is empty or only white space"),
        ("texts[12]", "101 characters; at most 100 per text"),
    ]


def test_the_row_budget_applies_to_each_text_of_a_stream() -> None:
    """20 texts × 100 rows is over the per-request budget of 1000 as a whole, not per text."""
    texts = [f"text {i}" for i in range(20)]
    shap = pb.ShapOptions(max_evals=100)
    assert validation.explain_params(pb.ExplainStreamRequest(texts=texts, shap=shap), LIMITS).shap.max_evals == 100
    assert violations(lambda: validation.explain_params(pb.ExplainRequest(texts=texts[:4], shap=pb.ShapOptions(
        max_evals=300)), LIMITS))[0][0] == "texts"
    over = pb.ExplainStreamRequest(texts=texts, explainer=pb.EXPLAINER_KIND_LIME, lime=pb.LimeOptions(num_samples=1001))
    assert violations(lambda: validation.explain_params(over, LIMITS)) == [
        ("lime.num_samples", "1001 model rows per text; at most 1000 per text of a stream")
    ]


def test_a_stream_refuses_each_text_whose_message_could_exceed_the_limit() -> None:
    """Each text's explanation is a message of its own: 40 texts whose explanations add up
    to far more than the limit fit, two that could each exceed it are named."""
    limits = validation.Limits(4, 20_000, 4000, 10_000, 512, 200_000, max_message_bytes=20_000, max_stream_texts=50)
    texts = ["a short text of about a hundred characters, far below what any message may hold; " * 1] * 40
    fitting = validation.explain_params(pb.ExplainStreamRequest(texts=texts, target_mode=pb.TARGET_MODE_ALL), limits)
    assert validation.reply_bytes_bound(fitting, LABELS, 512) > 5 * limits.max_message_bytes
    validation.check_stream_reply_sizes(fitting, LABELS, 512, limits)
    texts[7], texts[31] = "y" * 5000, "z" * 9000
    params = validation.explain_params(pb.ExplainStreamRequest(texts=texts, target_mode=pb.TARGET_MODE_ALL), limits)
    found = violations(lambda: validation.check_stream_reply_sizes(params, LABELS, 512, limits))
    assert [field for field, _ in found] == ["texts[7]", "texts[31]"]
    assert "more than the server's message limit of 20000 bytes (--max-message-bytes)" in found[0][1]


def test_a_stream_of_large_replies_works_on_fewer_texts_at_once() -> None:
    """The window counts texts, and a reader that stops leaves that many finished replies in
    memory: where the replies could be large (raw attention maps), fewer texts at once."""
    limits = validation.Limits(4, 20_000, 4000, 10_000, 512, 200_000, max_stream_texts=50,
                               stream_window=128, stream_window_bytes=4 * 1024 * 1024)  # fmt: skip
    texts = ["a short review of the food and the service"] * 10
    small = validation.explain_params(pb.ExplainStreamRequest(texts=texts), limits)
    largest = validation.check_stream_reply_sizes(small, LABELS, 512, limits)
    assert 0 < largest < 64 * 1024 and validation.stream_window(largest, limits) == 128  # as before
    attention = pb.AttentionOptions(raw=True)
    raw = pb.ExplainStreamRequest(texts=texts, explainer=pb.EXPLAINER_KIND_ATTENTION, attention=attention)
    params = validation.resolve_attention(validation.explain_params(raw, limits), 12, 12, limits)
    largest = validation.check_stream_reply_sizes(params, LABELS, 512, limits)
    window = validation.stream_window(largest, limits)
    assert largest > 1024 * 1024 and 1 <= window < 128
    assert window * largest <= limits.stream_window_bytes or window == 1
    assert validation.stream_window(10 * limits.stream_window_bytes, limits) == 1  # never none


# ---- one request, one flow ----------------------------------------------------------------


def test_a_part_has_its_own_budget_and_is_cancelled_with_its_request() -> None:
    request = RequestContext.with_timeout(Priority.EXPLAIN, 30.0, max_rows=10)
    first, second = request.part(), request.part()
    assert first.flow is request and second.flow is request
    assert first.deadline == request.deadline and first.priority is Priority.EXPLAIN
    assert first.charge(10) and not first.charge(1)
    assert second.charge(10), "each part has the whole budget"
    first.cancel()
    assert first.cancelled and not second.cancelled and not request.cancelled
    request.cancel()
    assert second.cancelled
    with pytest.raises(Cancelled):
        second.ensure_alive("now")


def submission(context: RequestContext, rows: int, seq: int) -> Submission:
    return Submission(rows=[[1, 2, 3]] * rows, context=context, future=Future(), enqueued_at=0.0, seq=seq)


def order_served(subs: list[Submission], names: dict[int, str]) -> list[str]:
    """Which request each batch of one quantum serves, in the scheduler's order."""
    queue = RowQueue(quantum=4)
    for sub in subs:
        queue.push(sub)
    served = []
    while len(queue):
        batch = queue.take_batch(max_tokens=12, now=0.0)  # 4 rows of 3 tokens: one quantum
        (request,) = {names[id(piece.submission.context.flow)] for piece in batch.slices}
        served.append(request)
    return served


def test_the_texts_of_a_stream_share_one_fair_share_with_another_request() -> None:
    """Three texts of a stream queued before a unary request's rows: the unary request is
    served second, as against any one request, not after all three texts."""
    stream = RequestContext(Priority.EXPLAIN)
    unary = RequestContext(Priority.EXPLAIN)
    names = {id(stream): "stream", id(unary): "unary"}
    subs = [submission(stream.part(), 4, i) for i in range(3)] + [submission(unary, 4, 3)]
    assert order_served(subs, names) == ["stream", "unary", "stream", "stream"]


def test_a_streams_earlier_texts_go_first_within_its_share() -> None:
    """Each text's next round arrives after the later texts' rounds (the texts advance
    together): the scheduler still takes the earliest-started text's first, so the stream's
    first results come early instead of all at the end; other requests keep their turn."""
    stream = RequestContext(Priority.EXPLAIN)
    parts = [stream.part() for _ in range(4)]
    assert [p.order for p in parts] == [1, 2, 3, 4] and stream.order == 0
    queue = RowQueue(quantum=4)
    for seq, part in enumerate(reversed(parts)):  # arrival: text 4's round first, text 1's last
        queue.push(submission(part, 4, seq))
    unary = RequestContext(Priority.EXPLAIN)
    queue.push(submission(unary, 4, 10))
    order = []
    while len(queue):
        batch = queue.take_batch(max_tokens=12, now=0.0)  # one quantum a batch
        (context,) = {piece.submission.context for piece in batch.slices}
        order.append("unary" if context is unary else parts.index(context) + 1)
    assert order == [1, "unary", 2, 3, 4]


def test_an_earlier_text_never_jumps_a_round_already_cut_into() -> None:
    stream = RequestContext(Priority.EXPLAIN)
    earlier, later = stream.part(), stream.part()
    queue = RowQueue(quantum=4)
    queue.push(submission(later, 6, 0))
    first = queue.take_batch(max_tokens=12, now=0.0)  # 4 of its 6 rows
    queue.push(submission(earlier, 4, 1))
    second = queue.take_batch(max_tokens=6, now=0.0)  # the cut round's last 2 rows first
    third = queue.take_batch(max_tokens=12, now=0.0)
    assert [(p.submission.context.order, p.start, p.stop) for b in (first, second, third) for p in b.slices] == [
        (2, 0, 4), (2, 4, 6), (1, 0, 4)
    ]  # fmt: skip


# ---- the data plane's window ---------------------------------------------------------------


@pytest.fixture
def plane() -> Iterator[DataPlane]:
    dataplane = DataPlane(ModelRegistry(), Metrics(), explain_threads=1, explainers={})
    try:
        yield dataplane
    finally:
        dataplane.close()


class Texts:
    """Stand-ins for the texts' work: each finishes when the test says so."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.finish: dict[int, asyncio.Event] = {}

    async def run(self, index: int) -> str:
        self.started.append(index)
        event = self.finish.setdefault(index, asyncio.Event())
        try:
            await event.wait()
        except asyncio.CancelledError:
            self.cancelled.append(index)
            raise
        if index == 13:
            raise RuntimeError("text 13 failed")
        return f"result {index}"

    def done(self, *indices: int) -> None:
        for i in indices:
            self.finish.setdefault(i, asyncio.Event()).set()


async def settle() -> None:
    """Let every task that can run, run (no time passes: the loop turns over)."""
    for _ in range(20):
        await asyncio.sleep(0)


def gauge(plane: DataPlane, name: str) -> float:
    value = plane.metrics.registry.get_sample_value(name, {"method": "ExplainStream"})
    return value or 0.0


async def test_the_next_text_starts_only_once_a_result_was_taken(plane: DataPlane) -> None:
    texts = Texts()
    ctx = RequestContext(Priority.EXPLAIN)
    stream = plane._stream("ExplainStream", 10, texts.run, ctx, window=3)
    async with contextlib.aclosing(stream):
        texts.done(*range(10))  # every text could finish at once: only the window may start
        first = await anext(stream)
        await settle()
        assert texts.started == [0, 1, 2]
        assert gauge(plane, "whybert_stream_texts_in_flight") == 3
        rest = [item async for item in stream]
    assert sorted([first, *rest]) == [(i, f"result {i}") for i in range(10)]
    assert gauge(plane, "whybert_stream_texts_in_flight") == 0
    assert gauge(plane, "whybert_stream_texts_total") == 10
    assert not ctx.cancelled


async def test_results_come_as_texts_finish_not_in_order(plane: DataPlane) -> None:
    texts = Texts()
    stream = plane._stream("ExplainStream", 3, texts.run, RequestContext(), window=3)
    async with contextlib.aclosing(stream):
        await settle()
        texts.done(2)
        assert await anext(stream) == (2, "result 2")
        texts.done(0, 1)
        assert [item async for item in stream] == [(0, "result 0"), (1, "result 1")]


async def test_closing_the_stream_cancels_its_request_and_the_texts_running(plane: DataPlane) -> None:
    texts = Texts()
    ctx = RequestContext(Priority.EXPLAIN)
    stream = plane._stream("ExplainStream", 100, texts.run, ctx, window=4)
    texts.done(0)
    assert await anext(stream) == (0, "result 0")
    await stream.aclose()
    await settle()
    assert ctx.cancelled
    assert sorted(texts.cancelled) == [1, 2, 3]
    assert len(texts.started) == 4  # nothing started after the close
    assert gauge(plane, "whybert_stream_texts_in_flight") == 0
    assert gauge(plane, "whybert_stream_texts_total") == 0  # the result taken was not written


async def test_a_failed_text_ends_the_stream_with_its_error_and_starts_no_more(plane: DataPlane) -> None:
    texts = Texts()  # text 13 fails
    ctx = RequestContext(Priority.EXPLAIN)
    texts.done(*range(20))
    got = []
    with pytest.raises(RuntimeError, match="text 13 failed"):
        async with contextlib.aclosing(plane._stream("ExplainStream", 20, texts.run, ctx, window=4)) as stream:
            async for index, _ in stream:
                got.append(index)
    assert ctx.cancelled
    assert sorted(got) == [i for i in range(max(texts.started) + 1) if i != 13][: len(got)]
    assert 13 in texts.started and 13 not in got
    assert max(texts.started) < 13 + 4, "no text started past the window of the failed one"
    assert gauge(plane, "whybert_stream_texts_in_flight") == 0

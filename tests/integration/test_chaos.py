"""Load and chaos on loopback: many concurrent callers with random deadlines, cancellations
and bad requests, for a bounded time. Every call ends with exactly one status from the
expected set, none hangs, every answer is the right one for its own texts, the server
returns to idle (empty queue, no request in flight) and the process's memory settles."""

from __future__ import annotations

import asyncio
import collections
import gc
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from _servers import ServerThread, reference_probabilities, tiny_settings
from _wait import wait_for
from whybert.v1 import explainer_pb2 as pb
from whybert.v1 import explainer_pb2_grpc as pb_grpc

CALLERS = 48
TEXTS = [
    "the food was great",
    "service was slow and the waiter was rude",
    "an okay place, nothing special",
    "I would come back for the desserts alone",
    "👍🏽 loved it",
    "الخدمة كانت ممتازة",
    "the soup was cold but the staff were friendly and the bread was fresh",
    "meh",
]
BAD = [
    pb.PredictRequest(texts=[""]),
    pb.PredictRequest(texts=["ok", "bad\x00"]),
    pb.PredictRequest(texts=["x" * 20_001]),
]
TIMEOUTS = [0.002, 0.02, 0.1, 0.5, 2.0, 5.0]
EXPECTED = {
    "predict": {"OK", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"},
    "explain": {"OK", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"},
    "bad": {"INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "CANCELLED"},
}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    settings = tiny_settings(
        tiny_model_dir,
        max_concurrent_requests=16,
        max_queued_rows=400,
        explain_threads=4,
        cache_entries=0,
        max_batch_tokens=1024,
    )
    with ServerThread(settings) as running:
        yield running


def rss_bytes() -> int:
    """Resident memory of this process (server and callers both live in it)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Tally:
    """Every call's outcome; failures of the promises are collected, not raised mid-load."""

    def __init__(self) -> None:
        self.codes: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.calls = 0


async def one_call(
    stub: pb_grpc.ExplainerStub, rng: random.Random, refs: dict[str, np.ndarray], tally: Tally
) -> None:
    roll = rng.random()
    timeout = rng.choice(TIMEOUTS)
    if roll < 0.55:
        kind = "predict"
        texts = rng.sample(TEXTS, rng.randint(1, 4))
        call = stub.Predict(pb.PredictRequest(texts=texts), timeout=timeout)
    elif roll < 0.85:
        kind = "explain"
        texts = [rng.choice(TEXTS)]
        budget = rng.randint(10, 120)
        call = stub.Explain(
            pb.ExplainRequest(texts=texts, shap=pb.ShapOptions(max_evals=budget)), timeout=timeout
        )
    else:
        kind, texts = "bad", []
        call = stub.Predict(rng.choice(BAD), timeout=timeout)
    canceller = None
    if rng.random() < 0.2:
        canceller = asyncio.get_running_loop().call_later(rng.uniform(0, 0.3), call.cancel)
    tally.calls += 1
    try:
        response = await asyncio.wait_for(call, timeout + 10)
        code = "OK"
    except TimeoutError:
        tally.problems.append(f"{kind} call hung past its deadline of {timeout}s")
        return
    except asyncio.CancelledError:
        code = "CANCELLED"
        response = None
    except grpc.aio.AioRpcError as exc:
        code, response = exc.code().name, None
    finally:
        if canceller is not None:
            canceller.cancel()
    final = (await call.code()).name
    if final != code:
        tally.problems.append(f"{kind}: saw {code} but the call's status is {final}")
    if code not in EXPECTED[kind]:
        tally.problems.append(f"{kind}: unexpected {code}: {await call.details()}")
    tally.codes[code] += 1
    if response is not None and kind == "predict":
        for text, prediction in zip(texts, response.predictions, strict=True):
            got = np.array([s.probability for s in prediction.scores])
            if not np.allclose(got, refs[text], rtol=1e-4, atol=1e-6):
                tally.problems.append(f"predict: wrong answer for {text!r}: {got} vs {refs[text]}")
    if response is not None and kind == "explain":
        (explanation,) = response.explanations
        if (
            not explanation.tokens
            or explanation.prediction.label
            != max(explanation.prediction.scores, key=lambda s: s.probability).label
        ):
            tally.problems.append(f"explain: malformed explanation for {texts[0]!r}")


async def load(target: str, seconds: float, seed: int, refs: dict[str, np.ndarray]) -> Tally:
    tally = Tally()
    end = time.monotonic() + seconds
    options = [("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ExplainerStub(channel)

        async def caller(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < end:  # the load itself: calls for a bounded time, not a wait
                await one_call(stub, rng, refs, tally)

        await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    return tally


def idle(server: ServerThread) -> bool:
    assert server.server is not None and server.server.dataplane is not None
    registry = server.server.metrics.registry
    in_flight = sum(
        registry.get_sample_value("whybert_requests_in_flight", {"method": m}) or 0
        for m in ("Predict", "Explain")
    )
    pool = server.server.dataplane._pool
    return (
        server.worker.queued_rows() == 0
        and (registry.get_sample_value("whybert_queue_submissions", {"model": "tiny"}) or 0) == 0
        and server.server.dataplane._in_flight == 0
        and in_flight == 0
        and pool._work_queue.empty()
    )


async def test_load_and_chaos_every_call_ends_once_and_the_server_settles(
    server: ServerThread, tiny_classifier: Any
) -> None:
    refs = {t: reference_probabilities(tiny_classifier, t) for t in TEXTS}
    started = time.monotonic()
    warm = await load(server.target, 3.0, seed=1, refs=refs)
    assert wait_for(lambda: idle(server), timeout=15)
    gc.collect()
    rss_before = rss_bytes()
    tally = await load(server.target, 8.0, seed=2, refs=refs)
    assert tally.problems == [], tally.problems[:10]
    assert wait_for(lambda: idle(server), timeout=15), "the server did not return to idle"
    gc.collect()
    growth = rss_bytes() - rss_before
    elapsed = time.monotonic() - started
    print(
        f"\nchaos: {warm.calls + tally.calls} calls in {elapsed:.1f}s; "
        f"measured round {tally.calls} calls, "
        f"statuses {dict(tally.codes)}; RSS growth {growth / 2**20:.1f} MiB"
    )
    assert warm.problems == []
    assert tally.codes["OK"] >= 20  # real work got done amid the refusals
    assert {"DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"} <= set(
        tally.codes
    )
    assert growth < 64 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB over one round of load"
    with grpc.insecure_channel(server.target) as channel:
        response = pb_grpc.ExplainerStub(channel).Predict(
            pb.PredictRequest(texts=[TEXTS[0]]), timeout=10
        )
    got = [s.probability for s in response.predictions[0].scores]
    np.testing.assert_allclose(got, refs[TEXTS[0]], rtol=1e-4, atol=1e-6)

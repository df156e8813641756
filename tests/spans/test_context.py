"""Tokens a request learns late: set or added while it runs, sent as its final counts.

A real Emitter sends to a real SocketReceiver; ``instrument()``'s emitter is
that emitter for the test (``sdk._emitter``), since the final counts go to
the process's emitter.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest
from support.waiting import collect

from infermeter.records import Span
from infermeter.spans import sdk
from infermeter.spans.context import RequestContext, final_counts_span, request
from infermeter.spans.emitter import Emitter
from infermeter.spans.receiver import SocketReceiver


@pytest.fixture
def path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="im-")
    yield os.path.join(d, "spans.sock")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def emitter(path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emitter]:
    e = Emitter(path, interval_s=0.02)
    monkeypatch.setattr(sdk, "_emitter", e)
    yield e
    e.close()


@pytest.fixture
def receiver(path: str) -> Iterator[SocketReceiver]:
    r = SocketReceiver(path)
    yield r
    r.close()


def call(model: str = "m") -> Span:
    return Span(pid=os.getpid(), model=model, t0=100.0, t1=101.0)


def test_tokens_set_after_the_calls_arrive_as_the_final_counts(
    emitter: Emitter, receiver: SocketReceiver
) -> None:
    with request(model="llm", tenant="acme", request_id="r1", tokens_in=12, team="a") as req:
        emitter.emit(call())
        assert emitter.flush()  # the call leaves before the tokens are known
        for _ in range(3):
            req.add_tokens(out=1)
        req.tokens_out = 40  # what the server counted in the end
    first, final = collect(receiver, 2)
    assert (first.request_id, first.tokens_in, first.tokens_out) == ("r1", 12, None)
    assert (final.model, final.request_id, final.tenant) == ("llm", "r1", "acme")
    assert (final.tokens_in, final.tokens_out, final.items) == (12, 40, 0)
    assert final.t0 == final.t1 and dict(final.tags) == {"team": "a"}  # draws no energy


def test_add_tokens_is_safe_across_threads_sharing_one_request(
    emitter: Emitter, receiver: SocketReceiver
) -> None:
    with request(model="llm", request_id="shared") as req:
        ctx = contextvars.copy_context()

        def decode() -> None:
            for _ in range(2000):
                ctx.run(lambda: req.add_tokens(out=1))

        threads = [threading.Thread(target=decode) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        req.add_tokens(inp=7)
        assert (req.tokens_in, req.tokens_out) == (7, 16_000)
    (final,) = collect(receiver, 1)
    assert (final.tokens_in, final.tokens_out) == (7, 16_000)


def test_a_nested_block_of_the_same_request_shares_its_counts_and_sends_none_itself(
    emitter: Emitter, receiver: SocketReceiver
) -> None:
    with request(model="llm", request_id="r") as outer:
        with request(stage="decode") as inner:
            inner.add_tokens(out=5)
            assert outer.tokens_out == 5
        with request(request_id="other", model="llm") as other:  # another request
            other.tokens_out = 1
        outer.add_tokens(out=2)
    got = collect(receiver, 2)
    assert sorted((s.request_id, s.tokens_out) for s in got) == [("other", 1), ("r", 7)]


def test_a_request_of_async_tasks_counts_each_tasks_tokens(
    emitter: Emitter, receiver: SocketReceiver
) -> None:
    async def serve(rid: str, n: int) -> None:
        with request(model="llm", request_id=rid) as req:
            for _ in range(n):
                await asyncio.sleep(0)
                req.add_tokens(out=1)

    async def main() -> None:
        await asyncio.gather(serve("a", 30), serve("b", 50))

    asyncio.run(main())
    got = {s.request_id: s.tokens_out for s in collect(receiver, 2)}
    assert got == {"a": 30, "b": 50}


def test_the_model_of_the_last_call_names_a_request_without_one(
    emitter: Emitter, receiver: SocketReceiver
) -> None:
    with request(request_id="r", tokens_in=3) as req:
        emitter.emit(call("resnet"))
        req.tokens_out = 1
    with request(request_id="silent", tokens_in=3):
        pass  # no model and no call: nothing to name the counts by, nothing sent
    with request(model="m", request_id="no-tokens"):
        pass  # nothing counted: nothing sent
    emitter.emit(call("sentinel"))  # spans arrive in order: anything sent is before it
    got = collect(receiver, 3)
    assert [(s.model, s.items, s.request_id) for s in got] == [
        ("resnet", 1, "r"), ("resnet", 0, "r"), ("sentinel", 1, None),
    ]  # fmt: skip
    assert got[1].tokens_out == 1


def test_a_count_that_is_not_one_is_ignored_and_nothing_raises() -> None:
    with request(model="m", tokens_in=4) as req:
        req.tokens_out = "many"  # type: ignore[assignment]
        req.add_tokens(out=-3)
        req.add_tokens(out=True)  # a bool is not a count
        req.tokens_in = 2**40  # beyond what the store holds
        assert (req.tokens_in, req.tokens_out) == (4, None)
        req.add_tokens(out=2**31)
        assert req.tokens_out is None  # out of range: ignored
        req.add_tokens(out=2**31 - 2)
        req.add_tokens(out=5)
        assert req.tokens_out == 2**31 - 1  # capped at the column's largest


def test_final_counts_span_needs_a_model_and_a_count() -> None:
    ctx = RequestContext("r", model=None, tokens_out=3)
    assert final_counts_span(ctx, 1, 5.0) is None
    ctx.last_model = "m"
    span = final_counts_span(ctx, 1, 5.0)
    assert span is not None and (span.model, span.t0, span.t1, span.items) == ("m", 5.0, 5.0, 0)
    assert final_counts_span(RequestContext("r", model="m"), 1, 5.0) is None

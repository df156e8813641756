"""``infermeter.step``: one engine step with a part per request, sent as one span."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from support.waiting import collect

import infermeter
from infermeter.records import SpanPart
from infermeter.spans.emitter import Emitter
from infermeter.spans.receiver import SocketReceiver
from infermeter.spans.step import step, step_spans
from infermeter.spans.wire import MAX_PARTS


@pytest.fixture
def path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="im-")
    yield os.path.join(d, "spans.sock")
    shutil.rmtree(d, ignore_errors=True)


def test_a_step_reaches_the_agent_with_its_parts(path: str) -> None:
    receiver = SocketReceiver(path)
    emitter = Emitter(path, interval_s=0.02)
    try:
        assert infermeter.step is step
        with step(model="llm", emitter=emitter, dtype="bfloat16", phase="mixed") as s:
            s.add("r1", tenant="acme", prefill=128)
            s.add("r2", decode=1)
            s.add("r3", tenant="globex", decode="one")  # type: ignore[arg-type]  # not a count: 0
        (got,) = collect(receiver, 1)
        assert got.model == "llm" and got.items == 3 and got.t1 >= got.t0
        assert got.parts == (
            SpanPart("r1", "acme", 128, 0),
            SpanPart("r2", None, 0, 1),
            SpanPart("r3", "globex", 0, 0),
        )
        assert (got.dtype, dict(got.tags)) == ("bfloat16", {"phase": "mixed"})
    finally:
        emitter.close()
        receiver.close()


def test_a_step_without_an_emitter_or_parts_sends_nothing_and_never_raises(path: str) -> None:
    with step(model="llm") as s:  # no instrument() in this process: nothing to send to
        s.add("r", prefill=1)
    receiver = SocketReceiver(path)
    emitter = Emitter(path, interval_s=0.02)
    try:
        with step(model="llm", emitter=emitter):
            pass  # no parts: no step
        # The application's own error goes through:
        with pytest.raises(KeyError), step(model="llm", emitter=emitter) as s:
            s.add("r", decode=1)
            raise KeyError("the application's")
        (got,) = collect(receiver, 1)  # the step that failed is still metered
        assert got.parts == (SpanPart("r", None, 0, 1),)
    finally:
        emitter.close()
        receiver.close()


def test_a_step_with_more_parts_than_a_span_holds_is_sent_end_to_end() -> None:
    parts = [SpanPart(f"r{i}", None, 0, 1) for i in range(2 * MAX_PARTS + 1)]
    spans = step_spans(1, "llm", 10.0, 13.0, parts)
    assert [len(s.parts) for s in spans] == [MAX_PARTS, MAX_PARTS, 1]
    assert [p for s in spans for p in s.parts] == parts
    assert spans[0].t0 == 10.0 and spans[-1].t1 == 13.0
    assert all(a.t1 == b.t0 for a, b in itertools.pairwise(spans))  # no overlap
    assert step_spans(1, "llm", 0.0, 1.0, []) == []

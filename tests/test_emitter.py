"""The in-process emitter: never blocks, never raises, and counts every span it loses."""

from __future__ import annotations

import asyncio
import contextvars
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infermeter.context import RequestContext, current_request, request
from infermeter.emitter import Emitter
from infermeter.hookspecs import SpanEmitter
from infermeter.receiver import SocketReceiver
from infermeter.records import Span
from infermeter.wire import decode_batch


@pytest.fixture
def path() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="im-")
    yield os.path.join(d, "spans.sock")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def emitter(path: str) -> Iterator[Emitter]:
    e = Emitter(path, interval_s=0.02)
    yield e
    e.close()


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def collect(receiver: SocketReceiver, n: int, timeout: float = 5.0) -> list[Span]:
    got: list[Span] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(receiver.drain())
        time.sleep(0.01)
    return got


def span(model: str = "m", **kw: object) -> Span:
    return Span(pid=os.getpid(), model=model, t0=100.0, t1=101.0, **kw)  # type: ignore[arg-type]


def test_it_is_a_span_emitter_with_a_monotonic_wall_clock(emitter: Emitter) -> None:
    assert isinstance(emitter, SpanEmitter)
    a = emitter.wall_time()
    b = emitter.wall_time()
    assert a <= b and abs(a - time.time()) < 0.5


def test_spans_reach_the_agent(emitter: Emitter, path: str) -> None:
    receiver = SocketReceiver(path)
    try:
        for i in range(1000):
            emitter.emit(span(f"m{i}"))
        got = collect(receiver, 1000)
        assert [s.model for s in got] == [f"m{i}" for i in range(1000)]
        assert {s.pid for s in got} == {os.getpid()}
        stats = emitter.stats()
        assert (stats.sent, stats.dropped) == (1000, 0)
    finally:
        receiver.close()


def test_agent_away_100k_calls_complete_and_the_agent_learns_exactly_100k(path: str) -> None:
    emitter = Emitter(path, interval_s=0.05)
    try:
        started = time.monotonic()
        for i in range(100_000):
            emitter.emit(Span(pid=os.getpid(), model="resnet", t0=float(i), t1=float(i) + 0.5))
        elapsed = time.monotonic() - started
        assert emitter.flush(timeout=5.0)
        stats = emitter.stats()
        assert (stats.sent, stats.dropped, stats.unreported) == (0, 100_000, 100_000)
        assert elapsed < 10.0  # a few microseconds a call, never a wait on the socket
        receiver = SocketReceiver(path)  # the agent comes back
        try:
            assert wait_for(lambda: receiver.sender_dropped() == {os.getpid(): 100_000})
            assert receiver.dropped() == 100_000
            assert receiver.drain() == []
            assert emitter.stats().unreported == 0
        finally:
            receiver.close()
    finally:
        emitter.close()


def test_a_full_socket_never_blocks_and_every_span_is_sent_or_counted(path: str) -> None:
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)  # an agent that is there but does not read
    emitter = Emitter(path, interval_s=0.01, send_wait_s=0.02)
    try:
        worst = 0.0
        for i in range(200_000):
            t = time.perf_counter()
            emitter.emit(Span(pid=1, model=f"m{i % 7}", t0=1.0, t1=2.0))
            worst = max(worst, time.perf_counter() - t)
        t = time.monotonic()
        assert emitter.flush(timeout=5.0)
        assert time.monotonic() - t < 2.0
        stats = emitter.stats()
        assert stats.by_reason.get("socket_full", 0) > 0
        assert stats.sent > 0
        assert stats.sent + stats.dropped == 200_000
        assert worst < 0.5  # no call waited for the socket (a GC pause is the most)
        # The agent starts reading: everything sent is there, and the drops arrive.
        sink.settimeout(0.5)
        spans = 0
        told = 0
        emitter.emit(Span(pid=1, model="last", t0=1.0, t1=2.0))
        while True:
            try:
                got, dropped = decode_batch(sink.recv(1 << 17))
            except TimeoutError:
                break
            spans += len(got)
            told += dropped
        final = emitter.stats()
        assert final.unreported == 0
        assert (spans, told) == (final.sent, final.dropped)  # the agent knows every span
        assert final.sent + final.dropped == 200_001 and final.sent > stats.sent
    finally:
        emitter.close()
        sink.close()


def test_pending_spans_get_their_end_time_later_or_are_counted(path: str) -> None:
    receiver = SocketReceiver(path)
    emitter = Emitter(path, interval_s=0.02, pending_timeout_s=0.3)
    try:
        done: list[float] = []
        emitter.emit_pending(span("gpu"), lambda: done[0] if done else None)
        emitter.emit_pending(span("never"), lambda: None)

        def broken() -> float | None:
            raise RuntimeError("device lost")

        emitter.emit_pending(span("broken"), broken)
        time.sleep(0.1)
        assert receiver.drain() == []
        done.append(123.5)
        (got,) = collect(receiver, 1)
        assert (got.model, got.t0, got.t1) == ("gpu", 100.0, 123.5)
        assert wait_for(lambda: emitter.stats().dropped == 2)
        assert emitter.stats().by_reason == {"pending_timeout": 1, "pending_error": 1}
        assert wait_for(lambda: receiver.sender_dropped() == {os.getpid(): 2})
    finally:
        emitter.close()
        receiver.close()


def test_invalid_spans_and_garbage_never_raise_and_are_counted(emitter: Emitter, path: str) -> None:
    receiver = SocketReceiver(path)
    try:
        emitter.emit(Span(pid=1, model="m", t0=2.0, t1=1.0))
        emitter.emit(object())  # type: ignore[arg-type]
        emitter.emit_pending(span("late"), "not callable")  # type: ignore[arg-type]
        emitter.emit(span("fine"))
        assert [s.model for s in collect(receiver, 1)] == ["fine"]
        assert wait_for(lambda: receiver.sender_dropped() == {os.getpid(): 3})
        assert emitter.stats().by_reason == {"invalid": 2, "pending_error": 1}
    finally:
        receiver.close()


def test_emits_after_close_are_counted(path: str) -> None:
    emitter = Emitter(path)
    emitter.close()
    emitter.emit(span())
    emitter.emit_pending(span(), lambda: 1.0)
    assert emitter.stats().by_reason == {"closed": 2}


# ----- request context ------------------------------------------------------------


def test_request_as_context_manager_tags_spans(emitter: Emitter, path: str) -> None:
    receiver = SocketReceiver(path)
    try:
        with request(tenant="acme", request_id="r1", tokens_in=12, team="vision") as ctx:
            assert current_request() == ctx
            emitter.emit(span("a"))
            with request(model="resnet-v2", stage="post"):
                emitter.emit(span("b", tenant="own", request_id="mine"))
        assert current_request() is None
        emitter.emit(span("c"))
        a, b, c = collect(receiver, 3)
        assert (a.model, a.tenant, a.request_id, a.tokens_in, dict(a.tags)) == (
            "a", "acme", "r1", 12, {"team": "vision"},
        )  # fmt: skip
        assert (b.model, b.tenant, b.request_id, dict(b.tags)) == (
            "resnet-v2", "own", "mine", {"team": "vision", "stage": "post"},
        )  # fmt: skip
        assert (c.model, c.tenant, c.request_id, dict(c.tags)) == ("c", None, None, {})
    finally:
        receiver.close()


def test_request_as_decorator_is_one_request_per_call(emitter: Emitter, path: str) -> None:
    receiver = SocketReceiver(path)
    try:

        @request(tenant="t1")
        def handle(n: int) -> int:
            emitter.emit(span(f"call{n}"))
            emitter.emit(span(f"call{n}"))
            return n * 2

        assert handle(1) == 2 and handle(2) == 4
        got = collect(receiver, 4)
        assert {s.tenant for s in got} == {"t1"}
        first, second = {s.request_id for s in got[:2]}, {s.request_id for s in got[2:]}
        assert len(first) == len(second) == 1 and first != second
        assert handle.__name__ == "handle"
    finally:
        receiver.close()


def test_request_decorates_coroutines_and_follows_tasks(emitter: Emitter, path: str) -> None:
    receiver = SocketReceiver(path)
    try:

        @request(tenant="async")
        async def handle(name: str) -> None:
            await asyncio.sleep(0.01)
            emitter.emit(span(name))

        async def main() -> None:
            await asyncio.gather(handle("x"), handle("y"))

        asyncio.run(main())
        got = collect(receiver, 2)
        assert {s.model for s in got} == {"x", "y"}
        assert {s.tenant for s in got} == {"async"}
        assert len({s.request_id for s in got}) == 2
    finally:
        receiver.close()


def test_each_thread_has_its_own_request(emitter: Emitter, path: str) -> None:
    receiver = SocketReceiver(path)
    try:
        barrier = threading.Barrier(4)

        def worker(tenant: str) -> None:
            with request(tenant=tenant, request_id=f"req-{tenant}"):
                barrier.wait()  # all four requests open at once
                for _ in range(50):
                    emitter.emit(span(tenant))
                barrier.wait()

        threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = collect(receiver, 200)
        assert len(got) == 200
        assert all(s.tenant == s.model and s.request_id == f"req-{s.model}" for s in got)
    finally:
        receiver.close()


def test_a_new_thread_starts_outside_the_request_unless_the_context_is_copied(
    emitter: Emitter, path: str
) -> None:
    receiver = SocketReceiver(path)
    try:
        with request(tenant="outer"):
            plain = threading.Thread(target=lambda: emitter.emit(span("plain")))
            ctx = contextvars.copy_context()
            copied = threading.Thread(target=lambda: ctx.run(emitter.emit, span("copied")))
            plain.start()
            plain.join()
            copied.start()
            copied.join()
        tenants = {s.model: s.tenant for s in collect(receiver, 2)}
        assert tenants == {"plain": None, "copied": "outer"}
    finally:
        receiver.close()


def test_request_context_holds_what_it_was_given() -> None:
    with request(model="m", tenant="t", request_id="r", tokens_in=1, tokens_out=2, k="v") as ctx:
        assert ctx == RequestContext("r", "m", "t", 1, 2, {"k": "v"})
    with request() as ctx:
        assert len(ctx.request_id) == 32  # a fresh random id


# ----- processes: fork, exit -----------------------------------------------------


def test_a_forked_child_starts_empty_and_sends_its_own_spans(path: str) -> None:
    receiver = SocketReceiver(path)
    emitter = Emitter(path, interval_s=3600)  # nothing leaves before the fork
    try:
        for _ in range(5):
            emitter.emit(span("parent"))
        pid = os.fork()
        if pid == 0:  # the child: its buffer must not hold the parent's five
            code = 1
            try:
                emitter.emit(Span(pid=os.getpid(), model="child", t0=1.0, t1=2.0))
                emitter.flush()
                s = emitter.stats()
                code = 0 if (s.sent, s.dropped, emitter.pid) == (1, 0, os.getpid()) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert emitter.flush()
        got = collect(receiver, 6)
        assert (
            sorted((s.model, s.pid) for s in got)
            == [("child", pid)] + [("parent", os.getpid())] * 5
        )
    finally:
        emitter.close()
        receiver.close()


def _run_python(code: str, path: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env["INFERMETER_SOCKET"] = path
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_spans_buffered_at_exit_are_flushed(path: str) -> None:
    receiver = SocketReceiver(path)
    try:
        r = _run_python(
            """
            import os
            from infermeter.emitter import Emitter
            from infermeter.records import Span
            e = Emitter(interval_s=3600)  # path from $INFERMETER_SOCKET
            for i in range(3):
                e.emit(Span(pid=os.getpid(), model=f"exit{i}", t0=1.0, t1=2.0))
            """,
            path,
        )
        assert r.returncode == 0, r.stderr
        assert [s.model for s in collect(receiver, 3)] == ["exit0", "exit1", "exit2"]
    finally:
        receiver.close()


def test_exit_is_quick_when_the_agent_is_away(path: str) -> None:
    started = time.monotonic()
    r = _run_python(
        """
        import os, threading
        from infermeter.emitter import Emitter
        from infermeter.records import Span
        e = Emitter()
        for i in range(50_000):
            e.emit(Span(pid=os.getpid(), model="m", t0=1.0, t1=2.0))
        print("done")
        """,
        path,
    )
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr
    assert time.monotonic() - started < 10.0


# ----- instrument() --------------------------------------------------------------


def test_instrument_is_idempotent_and_a_broken_plugin_never_reaches_the_app(
    tmp_path: Path, path: str
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "im_boom.py").write_text(
        "from infermeter import hookimpl\n"
        "@hookimpl\n"
        "def infermeter_instrument(emitter):\n"
        "    raise RuntimeError('boom')\n"
    )
    (site / "im_ok.py").write_text(
        "from infermeter import hookimpl\n"
        "@hookimpl\n"
        "def infermeter_instrument(emitter):\n"
        "    emitter.emit(__import__('infermeter.records').records.Span(\n"
        "        pid=1, model='patched', t0=1.0, t1=2.0))\n"
        "    return True\n"
    )
    dist = site / "im_test_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: im-test-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[infermeter]\nboom = im_boom\nok = im_ok\n")
    receiver = SocketReceiver(path)
    try:
        r = _run_python(
            f"""
            import sys
            sys.path.insert(0, {str(site)!r})
            import infermeter
            assert "infermeter.sdk" not in sys.modules  # `import infermeter` stays light
            e = infermeter.instrument()
            assert infermeter.instrument() is e
            print(" ".join(e.patched))
            """,
            path,
        )
        assert r.returncode == 0, r.stderr
        patched = r.stdout.split()
        assert "ok" in patched and "boom" not in patched
        assert "boom" not in r.stderr  # not even a traceback on the app's stderr
        assert [s.model for s in collect(receiver, 1)] == ["patched"]
    finally:
        receiver.close()

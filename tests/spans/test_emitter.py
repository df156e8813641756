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
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.waiting import collect, eventually

from infermeter.hookspecs import SpanEmitter
from infermeter.records import Span
from infermeter.spans.context import RequestContext, current_request, request
from infermeter.spans.emitter import Emitter
from infermeter.spans.receiver import SocketReceiver
from infermeter.spans.wire import decode_batch


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


def span(model: str = "m", **kw: object) -> Span:
    return Span(pid=os.getpid(), model=model, t0=100.0, t1=101.0, **kw)  # type: ignore[arg-type]


def test_it_is_a_span_emitter_with_a_monotonic_wall_clock(emitter: Emitter) -> None:
    assert isinstance(emitter, SpanEmitter)
    before = time.time()
    a = emitter.wall_time()
    b = emitter.wall_time()
    after = time.time()
    # Bracketed by the system clock read on either side (no bound on how long
    # the reads took); 1 ms covers the anchor's two reads at construction.
    assert a <= b and before - 1e-3 <= a and b <= after + 1e-3


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
        for i in range(100_000):
            emitter.emit(Span(pid=os.getpid(), model="resnet", t0=float(i), t1=float(i) + 0.5))
        assert emitter.flush(timeout=60.0)
        stats = emitter.stats()
        assert (stats.sent, stats.dropped, stats.unreported) == (0, 100_000, 100_000)
        receiver = SocketReceiver(path)  # the agent comes back
        try:
            assert eventually(lambda: receiver.sender_dropped() == {os.getpid(): 100_000})
            assert receiver.dropped() == 100_000
            assert receiver.drain() == []
            # The sender settles its count just after the datagram leaves.
            assert eventually(lambda: emitter.stats().unreported == 0)
        finally:
            receiver.close()
    finally:
        emitter.close()


def test_a_full_socket_never_blocks_and_every_span_is_sent_or_counted(path: str) -> None:
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)  # an agent that is there but does not read
    emitter = Emitter(path, interval_s=0.01, send_wait_s=0.02)
    try:
        for i in range(200_000):
            emitter.emit(Span(pid=1, model=f"m{i % 7}", t0=1.0, t1=2.0))
        # A pass gives up on a socket that stays full: flush returns, and says so.
        assert emitter.flush(timeout=60.0)
        stats = emitter.stats()
        assert stats.by_reason.get("socket_full", 0) > 0
        assert stats.sent > 0
        assert stats.sent + stats.dropped == 200_000
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


def test_emit_never_waits_for_the_sender_even_when_it_is_stuck(path: str) -> None:
    """The hot path takes no lock the sender holds across I/O, and touches no socket.

    The test holds the sender's lock, as a pass stuck on a full socket would:
    if ``emit`` waited for it, the loop below would never end (the test run's
    timeout would say so). Shown by a count, not a stopwatch: nothing can be
    sent meanwhile, so the buffer holds exactly ``max_buffer`` and every span
    beyond it is dropped as buffer_full.
    """
    receiver = SocketReceiver(path)
    emitter = Emitter(path, interval_s=0.01, max_buffer=1000)
    try:
        with emitter._send_lock:
            for i in range(5000):
                emitter.emit(Span(pid=1, model="m", t0=float(i), t1=float(i) + 1))
            stats = emitter.stats()
            assert (stats.sent, stats.by_reason) == (0, {"buffer_full": 4000})
        assert eventually(lambda: emitter.stats().sent == 1000)
        got = collect(receiver, 1000)
        assert len(got) == 1000 and got[0].t0 == 0.0  # the first ones kept, the rest counted
        assert eventually(lambda: receiver.sender_dropped() == {os.getpid(): 4000})
    finally:
        emitter.close()
        receiver.close()


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
        assert eventually(lambda: emitter.stats().dropped == 2)
        assert emitter.stats().by_reason == {"pending_timeout": 1, "pending_error": 1}
        assert eventually(lambda: receiver.sender_dropped() == {os.getpid(): 2})
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
        assert eventually(lambda: receiver.sender_dropped() == {os.getpid(): 3})
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
            from infermeter.spans.emitter import Emitter
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


def test_exit_with_the_agent_away_counts_every_span_and_says_so(path: str) -> None:
    """50,000 spans and no agent: the process exits at once, each span counted and logged.

    The subprocess's own timeout is only a generous deadline; what is checked
    is the count its exit logs (the emitter's logger, which the application
    configured): every span, none sent.
    """
    r = _run_python(
        """
        import logging, os
        logging.basicConfig(level=logging.WARNING)
        from infermeter.spans.emitter import Emitter
        from infermeter.records import Span
        e = Emitter()
        for i in range(50_000):
            e.emit(Span(pid=os.getpid(), model="m", t0=1.0, t1=2.0))
        print("done")
        """,
        path,
    )
    assert r.returncode == 0 and r.stdout.strip() == "done", r.stderr
    assert f"50000 spans dropped that the agent at {path} was not told of (0 sent;" in r.stderr


EXIT_BURST = """
import logging, os, sys, time
logging.basicConfig(level=logging.WARNING)
from infermeter.spans.emitter import Emitter
from infermeter.records import Span
n, exit_timeout_s = int(sys.argv[1]), float(sys.argv[2])
e = Emitter(interval_s=3600, exit_timeout_s=exit_timeout_s)  # only the exit sends
time.sleep(float(sys.argv[3]))  # a short-lived application's life
for i in range(n):
    e.emit(Span(pid=os.getpid(), model="burst", t0=1.0 + i, t1=1.5 + i))
print(os.getpid(), flush=True)
"""


def _run_burst(
    path: str, n: int, exit_timeout_s: float, life_s: float = 0.0
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
    env["INFERMETER_SOCKET"] = path
    return subprocess.run(
        [sys.executable, "-c", EXIT_BURST, str(n), str(exit_timeout_s), str(life_s)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_short_lived_process_hands_over_every_span_at_exit_or_counts_it(path: str) -> None:
    """A 2 s application emits 20,000 spans just before it exits.

    Nothing is sent before the exit (the sender's interval is an hour), so the
    exit's last pass does all of it: what did not fit in its 100 ms reaches
    the agent as a count. Received plus told is 20,000 exactly; on a machine
    so busy that the agent's thread could not even take the count in time,
    the application's log carries the rest (counted, still exact).
    """
    receiver = SocketReceiver(path)
    try:
        r = _run_burst(path, 20_000, 0.1, life_s=2.0)
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        untold = _untold(r.stderr)
        got: list[Span] = []

        def accounted() -> int:
            got.extend(receiver.drain())
            return len(got) + receiver.sender_dropped().get(pid, 0) + untold

        assert eventually(lambda: accounted() == 20_000), (accounted(), r.stderr)
        assert got and {s.pid for s in got} == {pid} and len({s.t0 for s in got}) == len(got)
    finally:
        receiver.close()


def _untold(stderr: str) -> int:
    """The count the exit logged as not told to the agent (0 when it logged none)."""
    lines = [line for line in stderr.splitlines() if "was not told of" in line]
    assert len(lines) <= 1, stderr
    return int(lines[0].split("infermeter: ")[1].split()[0]) if lines else 0


def test_when_no_span_fits_the_exit_the_agent_still_hears_the_count(path: str) -> None:
    """An exit bound of 0 leaves no time for spans: all 3,000 go as one count, none lost."""
    receiver = SocketReceiver(path)
    try:
        r = _run_burst(path, 3000, 0.0)
        assert r.returncode == 0, r.stderr
        pid = int(r.stdout)
        assert eventually(lambda: receiver.sender_dropped() == {pid: 3000})
        assert receiver.drain() == []
    finally:
        receiver.close()


def test_when_the_agent_cannot_even_take_the_count_the_exit_logs_it(path: str) -> None:
    """An agent that reads nothing: the spans that fit its queue, the count, and the log add up.

    The socket's queue fills (max_dgram_qlen datagrams), the rest of the spans
    and then the count cannot go; the application's log says how many. Read
    afterwards, the queue's spans plus the counts it carries plus the logged
    number make the 50,000 emitted.
    """
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    try:
        r = _run_burst(path, 50_000, 0.1)
        assert r.returncode == 0, r.stderr
        untold = _untold(r.stderr)
        (logged,) = [line for line in r.stderr.splitlines() if "was not told of" in line]
        sink.setblocking(False)
        spans = told = 0
        while True:
            try:
                batch, dropped = decode_batch(sink.recv(1 << 17))
            except BlockingIOError:
                break
            spans += len(batch)
            told += dropped
        assert spans > 0 and untold > 0
        assert spans + told + untold == 50_000
        assert f"({spans} sent;" in logged
    finally:
        sink.close()


MP_WORKER = """
import multiprocessing as mp, os, sys
from infermeter.spans.emitter import Emitter
from infermeter.records import Span
emitter = Emitter(interval_s=3600)  # made before the fork, as instrument() would be

def work(n):
    for i in range(n):
        emitter.emit(Span(pid=os.getpid(), model="worker", t0=1.0 + i, t1=1.5 + i))
    print(os.getpid(), flush=True)

if __name__ == "__main__":
    p = mp.get_context("fork").Process(target=work, args=(int(sys.argv[1]),))
    p.start()
    p.join()
    sys.exit(p.exitcode)
"""


def test_a_multiprocessing_worker_hands_over_its_spans_before_it_exits(path: str) -> None:
    """A forked worker ends with os._exit, which skips atexit: its exit hook must send."""
    receiver = SocketReceiver(path)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERMETER_")}
        env["INFERMETER_SOCKET"] = path
        r = subprocess.run(
            [sys.executable, "-c", MP_WORKER, "500"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        worker = int(r.stdout)
        got = collect(receiver, 500)
        assert len(got) == 500 and {s.pid for s in got} == {worker}
    finally:
        receiver.close()


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
            assert "infermeter.spans.sdk" not in sys.modules  # `import infermeter` stays light
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

"""The in-process end of the span pipe: the SpanEmitter the instrumentation calls.

The application's thread does as little as possible: ``emit`` reads the
request context and appends ``(span, context)`` to a deque (GIL-atomic, no
lock on the way in). Everything else happens on one daemon thread that
wakes every ``interval_s``: it polls pending spans, applies the request
contexts, encodes and sends datagrams on a non-blocking Unix datagram socket.

Nothing here blocks or raises into the application. Every span ends either
sent or dropped and counted, by reason: buffer full, agent absent (no socket,
refused), socket full (the agent is slow; the sender waits at most
``send_wait_s`` per pass on its own thread), invalid, pending too long, or
emitted after close. The count not yet told to the agent rides in the next
datagram that gets through (a datagram with no spans when there are none),
so after an outage the agent learns exactly how much it missed.

The socket is connected: a poll then says when the agent's queue has room,
and a new agent at the same path (restart) is found by reconnecting after
ECONNREFUSED. After ``os.fork`` the child starts with an empty buffer, fresh
locks and no thread (the parent's spans are the parent's to send); its
thread starts at its first emit.

At interpreter exit (``atexit``, and multiprocessing's exit hook in a worker
that ``os._exit``s without running ``atexit``) the emitter stops taking
spans and makes a last pass bounded by ``exit_timeout_s`` (100 ms) in all:
the spans get most of it, and the rest is kept to tell the agent how many
could not go (a datagram with only the count), since an application that
exits has no later datagram to carry it. Encoding stops at the bound too, so
a buffer of 100,000 spans never holds the exit up. Whatever the agent still
could not be told is logged on the ``infermeter`` logger and stays in
``stats()``.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import math
import os
import select
import socket
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from infermeter.records import Span
from infermeter.spans import context
from infermeter.spans.wire import MAX_DATAGRAM, MAX_SPANS, default_socket_path, pack, span_to_wire

log = logging.getLogger("infermeter")

Finished = Callable[[], float | None]

# Drop reasons, as stats() names them.
BUFFER_FULL = "buffer_full"
AGENT_ABSENT = "agent_absent"
SOCKET_FULL = "socket_full"
INVALID = "invalid"
PENDING_FULL = "pending_full"
PENDING_TIMEOUT = "pending_timeout"
PENDING_ERROR = "pending_error"
CLOSED = "closed"
EXIT_TIMEOUT = "exit_timeout"  # still unsent when the exit's time was up
ERROR = "error"

# Of the exit's time, the part the spans may use; the rest is for the count.
_EXIT_SPANS_SHARE = 0.7
# How much longer than the exit's bound close() waits for the thread's bookkeeping.
_JOIN_SLACK_S = 0.01

_ABSENT = {errno.ENOENT, errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE}
_FULL = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS}


@dataclass(frozen=True, slots=True)
class EmitterStats:
    """Spans sent and dropped since the emitter (or this forked child) started."""

    sent: int
    dropped: int
    unreported: int  # dropped, not yet told to the agent
    datagrams: int
    by_reason: Mapping[str, int] = field(default_factory=dict)


class Emitter:
    """SpanEmitter over a Unix datagram socket; see the module docstring."""

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        max_buffer: int = 16384,
        max_pending: int = 4096,
        interval_s: float = 0.1,
        send_wait_s: float = 0.05,
        pending_timeout_s: float = 60.0,
        exit_timeout_s: float = 0.1,
    ) -> None:
        self.path = socket_path or default_socket_path()
        self.max_buffer = max_buffer
        self.max_pending = max_pending
        self.interval_s = interval_s
        self.send_wait_s = send_wait_s
        self.pending_timeout_s = pending_timeout_s
        self.exit_timeout_s = exit_timeout_s
        self.patched: list[str] = []  # plugins whose infermeter_instrument patched something
        # Wall clock from the monotonic one: steps of the system clock (NTP,
        # an operator) never reorder or stretch spans.
        self._anchor = time.time() - time.monotonic()
        self._perf_anchor = time.time() - time.perf_counter()
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """Fresh state: at start and in a forked child (parent's locks may be held)."""
        self.pid = os.getpid()
        self._limit = self.max_buffer  # 0 once closed: every emit then drops
        self._buf: deque[tuple[Span, context.RequestContext | None]] = deque()
        # emit_call's raw fields, turned into Spans on the sending thread.
        self._calls: deque[tuple[Any, ...]] = deque()
        self._pending: deque[tuple[Span, context.RequestContext | None, Finished, float]] = deque()
        self._lock = threading.Lock()  # counters only, never held across I/O
        self._send_lock = threading.Lock()  # one pass at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._sent = 0
        self._datagrams = 0
        self._unreported = 0
        self._dropped: Counter[str] = Counter()
        # Monotonic bounds of the exit's last pass, set by close(): until then
        # infinite. Spans go until the first, the count until the second.
        self._spans_until = math.inf
        self._deadline = math.inf

    # ----- the application's side: cheap, never raises ----------------------

    def wall_time(self) -> float:
        """Now, as UTC seconds derived from the monotonic clock."""
        return self._anchor + time.monotonic()

    def emit(self, span: Span) -> None:
        try:
            if self._thread is None:
                self._start()
            buf = self._buf
            if len(buf) < self._limit:
                ctx = context.current.get()
                if ctx is not None and span.items:  # not a request's final counts
                    ctx.last_model = span.model
                buf.append((span, ctx))
            else:
                self._drop(CLOSED if self._limit == 0 else BUFFER_FULL)
        except Exception:
            self._drop(ERROR)

    def emit_call(
        self,
        model: str,
        start: float,
        end: float,
        items: int,
        tags: Mapping[str, str],
        framework: str | None,
        device: str | None,
        dtype: str | None,
        parameters: int | None,
    ) -> None:
        try:
            if self._thread is None:
                self._start()
            calls = self._calls
            if len(calls) < self._limit:
                ctx = context.current.get()
                if ctx is not None:
                    ctx.last_model = model
                calls.append(
                    (
                        model,
                        start,
                        end,
                        items,
                        tags,
                        framework,
                        device,
                        dtype,
                        parameters,
                        ctx,
                    )
                )
            else:
                self._drop(CLOSED if self._limit == 0 else BUFFER_FULL)
        except Exception:
            self._drop(ERROR)

    def _spans_of_calls(self, ready: list[tuple[Span, context.RequestContext | None]]) -> None:
        calls, anchor, pid = self._calls, self._perf_anchor, self.pid
        for _ in range(len(calls)):
            model, start, end, items, tags, fw, device, dtype, params, ctx = calls.popleft()
            try:
                span = Span(
                    pid=pid,
                    model=model,
                    t0=anchor + start,
                    t1=anchor + end,
                    items=int(items),
                    tags=tags,
                    framework=fw,
                    device=device,
                    dtype=dtype,
                    parameters=params,
                )
            except Exception:
                self._drop(INVALID)
                continue
            ready.append((span, ctx))

    def emit_pending(self, span: Span, finished: Finished) -> None:
        try:
            if self._thread is None:
                self._start()
            pending = self._pending
            if len(pending) < min(self._limit, self.max_pending):
                deadline = time.monotonic() + self.pending_timeout_s
                ctx = context.current.get()
                if ctx is not None:
                    ctx.last_model = span.model
                pending.append((span, ctx, finished, deadline))
            else:
                self._drop(CLOSED if self._limit == 0 else PENDING_FULL)
        except Exception:
            self._drop(ERROR)

    def _drop(self, reason: str, n: int = 1) -> None:
        try:
            with self._lock:
                self._dropped[reason] += n
                self._unreported += n
        except Exception:  # nothing may reach the application, not even here
            pass

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._limit == 0:
                return
            thread = threading.Thread(target=self._run, name="infermeter-emitter", daemon=True)
            self._thread = thread
        _hook_multiprocessing_exit()
        thread.start()

    # ----- the background thread ----------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._pass(final=False)
        self._pass(final=True)

    def flush(self, timeout: float = 1.0, final: bool = False) -> bool:
        """Send what is buffered now, from the caller's thread; False if a pass is busy."""
        if not self._send_lock.acquire(timeout=timeout):
            return False
        try:
            self._pass_locked(final)
        except Exception:
            self._drop(ERROR)
        finally:
            self._send_lock.release()
        return True

    def _pass(self, final: bool) -> None:
        with self._send_lock:
            try:
                self._pass_locked(final)
            except Exception:  # a bug here must not kill the thread
                self._drop(ERROR)

    def _pass_locked(self, final: bool) -> None:
        if final and self._deadline == math.inf:
            # A final pass outside close(): bounded like the exit's, from now.
            now = time.monotonic()
            self._spans_until = now + self.exit_timeout_s * _EXIT_SPANS_SHARE
            self._deadline = now + self.exit_timeout_s
            try:
                self._pass_once(final)
            finally:
                self._spans_until = self._deadline = math.inf
            return
        self._pass_once(final)

    def _pass_once(self, final: bool) -> None:
        ready: list[tuple[Span, context.RequestContext | None]] = []
        if self._pending:
            self._poll_pending(ready, final)
        buf = self._buf
        for _ in range(len(buf)):
            ready.append(buf.popleft())
        if self._calls:
            self._spans_of_calls(ready)
        with self._lock:
            unreported = self._unreported
        if not ready and not unreported:
            return
        if not self._connect():
            # The agent is away: count, and spend no time encoding for nobody.
            if ready:
                self._drop(AGENT_ABSENT, len(ready))
            return
        wait_until = min(time.monotonic() + self.send_wait_s, self._spans_until)
        self._send_all(ready, wait_until)
        if final:
            self._report(self._deadline)

    def _poll_pending(
        self, ready: list[tuple[Span, context.RequestContext | None]], final: bool
    ) -> None:
        now = time.monotonic()
        keep: deque[tuple[Span, context.RequestContext | None, Finished, float]] = deque()
        pending = self._pending
        for _ in range(len(pending)):
            item = pending.popleft()
            span, ctx, finished, deadline = item
            try:
                end = finished()
            except Exception:
                self._drop(PENDING_ERROR)
                continue
            if end is not None:
                # A device clock read a hair before the launch must not make t1 < t0.
                ready.append((replace(span, t1=max(float(end), span.t0)), ctx))
            elif final or now > deadline:
                self._drop(PENDING_TIMEOUT)
            else:
                keep.append(item)
        pending.extendleft(reversed(keep))  # ahead of any added meanwhile

    def _send_all(
        self, ready: list[tuple[Span, context.RequestContext | None]], wait_until: float
    ) -> None:
        """Datagrams until the spans are gone; each carries the drops not yet told.

        Spans are encoded a datagram's worth at a time, so a pass cut short
        (the socket full, the exit's time up) has not paid for the rest.
        """
        fragments: list[bytes] = []
        i = 0  # fragments sent
        j = 0  # spans encoded
        queued = 0  # bytes of fragments[i:]
        while True:
            if j < len(ready) and time.monotonic() > self._spans_until:
                # The application is exiting and its time is up: count the rest.
                self._drop(EXIT_TIMEOUT, len(fragments) - i + len(ready) - j)
                return
            while j < len(ready) and queued < MAX_DATAGRAM and len(fragments) - i < MAX_SPANS:
                span, ctx = ready[j]
                j += 1
                try:
                    fragment = span_to_wire(context.apply(span, ctx))
                except Exception:
                    self._drop(INVALID)
                    continue
                fragments.append(fragment)
                queued += len(fragment) + 1
            with self._lock:
                unreported = self._unreported
            if i >= len(fragments) and not unreported:
                return
            data, n = pack(fragments, unreported, i)
            reason = self._send(data, wait_until)
            if reason is not None:
                # The rest would fail the same way now: drop and count them all.
                self._drop(reason, len(fragments) - i + len(ready) - j)
                return
            with self._lock:
                self._unreported -= unreported
                self._sent += n
                self._datagrams += 1
            queued -= sum(len(f) + 1 for f in fragments[i : i + n])
            i += n

    def _report(self, deadline: float) -> None:
        """At exit, tell the agent what was dropped: a datagram with only the count.

        Waits for room in the agent's queue until ``deadline``: no later
        datagram will carry the count once the process is gone.
        """
        with self._lock:
            unreported = self._unreported
        if not unreported:
            return
        data, _ = pack([], unreported)
        if self._send(data, deadline) is None:
            with self._lock:
                self._unreported -= unreported
                self._datagrams += 1

    def _connect(self) -> bool:
        """A connected socket to the agent, made when there is none; False if it is away."""
        if self._sock is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.path)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        return True

    def _send(self, data: bytes, wait_until: float) -> str | None:
        """Send one datagram; None when sent, else why it was not.

        A connection refused may be a socket that is gone while a new one is
        at the path (the agent restarted, or bound again after its directory
        was deleted): one fresh connection is tried before giving up.
        """
        retried = False
        while True:
            sock = self._sock
            if sock is None and not self._connect():
                return AGENT_ABSENT
            assert self._sock is not None
            sock = self._sock
            try:
                sock.send(data)
                return None
            except OSError as e:
                if e.errno in _FULL:
                    left = min(wait_until, self._deadline) - time.monotonic()
                    if left > 0:
                        # The agent's queue is full: wait for room, on this thread only.
                        poller = select.poll()
                        poller.register(sock.fileno(), select.POLLOUT)
                        poller.poll(max(1, int(left * 1000)))
                        continue
                    return SOCKET_FULL
                self._disconnect()
                if e.errno in _ABSENT and not retried:
                    retried = True
                    continue
                if e.errno in _ABSENT or e.errno in (errno.EACCES, errno.EPERM):
                    return AGENT_ABSENT
                return ERROR

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    # ----- life cycle -----------------------------------------------------------

    def stats(self) -> EmitterStats:
        with self._lock:
            return EmitterStats(
                sent=self._sent,
                dropped=sum(self._dropped.values()),
                unreported=self._unreported,
                datagrams=self._datagrams,
                by_reason=dict(self._dropped),
            )

    def close(self, timeout: float | None = None) -> None:
        """Stop taking spans, make a last pass within ``timeout``, release the socket.

        ``timeout`` (default ``exit_timeout_s``) bounds the whole of it: the
        thread's pass in progress, the last pass and the count sent after it.
        """
        timeout = self.exit_timeout_s if timeout is None else max(0.0, timeout)
        now = time.monotonic()
        self._spans_until = now + timeout * _EXIT_SPANS_SHARE
        self._deadline = now + timeout
        self._limit = 0
        thread = self._thread
        self._stop.set()
        running = thread is not None and thread.is_alive()
        if running and thread is not threading.current_thread():
            assert thread is not None
            thread.join(max(0.0, self._deadline - time.monotonic()) + _JOIN_SLACK_S)
            running = thread.is_alive()
        if not running:
            # No thread (never started, or it could not start at shutdown): this one sends.
            if self._buf or self._calls or self._pending or self._unreported:
                self.flush(max(0.0, self._deadline - time.monotonic()), final=True)
            # Emitted between the last pass and the closing: counted, not lost.
            left = len(self._buf) + len(self._calls) + len(self._pending)
            if left:
                self._buf.clear()
                self._calls.clear()
                self._pending.clear()
                self._drop(CLOSED, left)
            self._disconnect()
        stats = self.stats()
        if stats.unreported and self in _live:  # said once, at the first close
            log.warning(
                "infermeter: %d spans dropped that the agent at %s was not told of "
                "(%d sent; by reason: %s)",
                stats.unreported,
                self.path,
                stats.sent,
                stats.by_reason,
            )
        _live.discard(self)


_live: weakref.WeakSet[Emitter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for emitter in list(_live):
        try:
            emitter._disconnect()
            emitter._reset()
        except Exception:
            pass


def _at_exit(timeout: float | None = None) -> None:
    """Close every emitter of this process, all of them within one exit bound."""
    emitters = list(_live)
    if not emitters:
        return
    bound = max(e.exit_timeout_s for e in emitters) if timeout is None else timeout
    deadline = time.monotonic() + bound
    for emitter in emitters:
        with contextlib.suppress(Exception):
            emitter.close(max(0.0, deadline - time.monotonic()))


_mp_hooked_pid = 0


def _hook_multiprocessing_exit() -> None:
    """In a multiprocessing worker, close at its exit too: it ends with os._exit.

    A forked worker runs multiprocessing's finalizers, not ``atexit``; without
    this its last spans would vanish uncounted. Only when multiprocessing is
    already loaded (it is, in its own workers): an application that does not
    use it does not import it for us.
    """
    global _mp_hooked_pid
    try:
        if "multiprocessing.process" not in sys.modules or _mp_hooked_pid == os.getpid():
            return
        import multiprocessing
        from multiprocessing import util

        if multiprocessing.parent_process() is None:
            return  # the main process: atexit runs
        _mp_hooked_pid = os.getpid()
        util.Finalize(None, _at_exit, exitpriority=0)
    except Exception:
        pass


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)

"""Waiting for something another process or thread does, with one generous deadline.

A test waits on a real agent, a real socket or a real subprocess, on a
machine that may be busy with other work: the deadline is there only so that
a hang ends the test, never to time what is tested, so it is long, and
reaching it is a failure that says what never came.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

from infermeter.records import Span
from infermeter.spans.receiver import SocketReceiver

WAIT_S = 90.0  # long enough for a loaded machine; only a hang reaches it


def eventually(cond: Callable[[], bool], timeout: float = WAIT_S, poll_s: float = 0.01) -> bool:
    """Whether ``cond`` came true before the deadline (for ``assert eventually(...)``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll_s)
    return cond()


def collect(receiver: SocketReceiver, n: int, timeout: float = WAIT_S) -> list[Span]:
    """The spans ``receiver`` takes until there are ``n`` (fewer if the deadline passes)."""
    got: list[Span] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.extend(receiver.drain())
        time.sleep(0.01)
    return got


def wait_until(
    cond: Callable[[], bool],
    what: str = "the condition",
    *,
    proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    log: Callable[[], str] | None = None,
    timeout: float = WAIT_S,
    poll_s: float = 0.1,
) -> None:
    """Poll ``cond`` until it holds; fail, saying ``what`` and with ``log``'s text, if not.

    ``what`` is what is awaited, as a noun phrase ("the span socket").

    With ``proc``, fail as soon as that process has exited: what it was to do
    will not come, and waiting on would only hide why.
    """
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) while waiting for {what}{_tail(log)}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}{_tail(log)}")
        time.sleep(poll_s)


def _tail(log: Callable[[], str] | None, chars: int = 6000) -> str:
    return "" if log is None else "\n" + log()[-chars:]

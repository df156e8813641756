"""`infermeter run` as a real subprocess, for the tests that drive a running agent.

Its stderr goes to a file, not a pipe: a pipe nobody reads fills up and
blocks the agent, and a file can be read while it runs (the log lines the
tests wait for). What it stored is read from the SQLite file while it writes
it, read-only, so that the test never holds a lock the agent wants.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from pathlib import Path
from types import TracebackType
from typing import Any

from support import infermeter_cmd
from support.waiting import WAIT_S, wait_until

# Only the third-party test plugin's constant-power meter: no real hardware
# read, so that what is stored can be checked against its power.
TEST_METER_ONLY = '[plugins]\ndisabled = ["core.nvml", "core.rapl", "core.cpu_estimate"]\n'


class RunningAgent:
    """`infermeter --config CONFIG [--db DB] run` with ``env``, its stderr in ``log``.

    ``db`` None leaves the store to the agent's default (its data folder).
    Usable as a context manager: leaving it stops an agent the test has not.
    """

    def __init__(self, env: Mapping[str, str], config: Path, db: str | None, log: Path) -> None:
        self.log = log
        self._err = log.open("wb")
        store = [] if db is None else ["--db", db]
        self.proc = subprocess.Popen(
            [*infermeter_cmd(), "--config", str(config), *store, "run"],
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=self._err,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        """Its log so far (a line it is still writing may end in a broken character)."""
        return self.log.read_bytes().decode(errors="replace")

    def wait_for(
        self,
        cond: Callable[[], bool],
        what: str = "the condition",
        timeout: float = WAIT_S,
        poll_s: float = 0.1,
    ) -> None:
        """Until ``cond`` holds; fail with its log if it exits first or the deadline passes."""
        wait_until(cond, what, proc=self.proc, log=self.text, timeout=timeout, poll_s=poll_s)

    def wait_for_log(self, line: str) -> None:
        self.wait_for(lambda: line in self.text(), repr(line))

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = WAIT_S) -> int:
        """Send ``sig`` unless it has exited, wait for its exit: its exit code.

        Stopping twice is harmless (a ``finally`` may stop an agent the test
        already stopped); the second returns the same code.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._err.close()
        return code

    def close(self) -> None:
        """Stop it if it still runs (SIGTERM, SIGKILL if that hangs): a test's cleanup."""
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._err.close()

    def __enter__(self) -> RunningAgent:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def sqlite_rows(db: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` in the SQLite file an agent writes; [] until it has made and migrated it."""
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]
    except sqlite3.OperationalError:
        return []  # not migrated yet

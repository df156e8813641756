"""Finding inference processes: cheap every tick, expensive once per process.

Each tick lists the pids on the host (a directory listing). Only a pid not
seen before is handed to the ``infermeter_discover`` plugins, which may read
its memory maps; the answer, target or not, is kept until the pid goes away.
A process is identified by (pid, start time): when a known target's pid now
has another start time, the old target is gone and the new process is asked
about afresh. Reading a start time costs ~40 µs, so with many targets that
check runs every ``recheck_every`` scans (a pid reused within seconds needs
the kernel to wrap its whole pid space).

Command lines are redacted here, as each process is first examined and
before any plugin, rule, target or store sees them (``infermeter.discover.redact``):
a secret passed as ``--api-key=...`` never gets further than this.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from infermeter.discover.processes import ProcessInfo, process_info
from infermeter.discover.processes import start_time as read_start_time
from infermeter.discover.redact import default_patterns, redact_cmdline
from infermeter.records import Target

log = logging.getLogger(__name__)


def list_pids() -> list[int]:
    """Every pid on the host: one directory listing (~70 µs for a hundred)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


Decide = Callable[[ProcessInfo], Target | None]


class Discovery:
    """Keeps the current targets by pid across ticks.

    ``redact_patterns`` (compiled, ``redact.patterns_for(config)``) clean every
    command line; the defaults of ``[agent] redact_patterns`` when not given.
    """

    def __init__(
        self,
        host: str,
        decide: Decide,
        list_pids: Callable[[], list[int]] = list_pids,
        inspect: Callable[[int], ProcessInfo | None] = process_info,
        start_time: Callable[[int], float | None] = read_start_time,
        recheck_every: int = 10,
        young_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        redact_patterns: Sequence[re.Pattern[str]] | None = None,
    ) -> None:
        self.host = host
        self._patterns = tuple(default_patterns() if redact_patterns is None else redact_patterns)
        self._decide = decide
        self._list_pids = list_pids
        self._inspect = inspect
        self._start_time = start_time
        self._seen: dict[int, Target | None] = {}
        self._announced: dict[int, Mapping[str, str]] = {}
        self._recheck_every = max(1, recheck_every)
        self._scans = 0
        self._young_s = young_s
        self._clock = clock
        # pid -> (start time, when to ask again, how long to wait after that):
        # young processes that were not targets yet, asked again with backoff.
        self._young: dict[int, tuple[float, float, float]] = {}

    @property
    def targets(self) -> dict[int, Target]:
        return {pid: t for pid, t in self._seen.items() if t is not None}

    def announce(self, pid: int, labels: Mapping[str, str]) -> None:
        """A process that told us itself (SDK) is a target with its labels."""
        self._announced[pid] = dict(labels)
        target = self._seen.get(pid)
        if target is not None:
            self._seen[pid] = replace(target, labels={**target.labels, **labels})
        else:
            self._seen.pop(pid, None)  # ask again on the next scan

    def scan(self) -> dict[int, Target]:
        pids = set(self._list_pids())
        for gone in [pid for pid in self._seen if pid not in pids]:
            del self._seen[gone]
            self._announced.pop(gone, None)
            self._young.pop(gone, None)
        # A Python server maps its runtime seconds after it starts: a young
        # process that was not a target yet is asked again, every second for
        # its first ten, then at doubling intervals until it is a minute old.
        now = self._clock()
        for pid, (started, due, _wait) in list(self._young.items()):
            if now - started > self._young_s or self._seen.get(pid) is not None:
                del self._young[pid]
            elif now >= due:
                self._seen.pop(pid, None)
        self._scans += 1
        if self._scans % self._recheck_every == 1 or self._recheck_every == 1:
            for pid, target in list(self._seen.items()):
                if target is not None and self._start_time(pid) != target.start_time:
                    del self._seen[pid]  # the pid was reused: a new process
        for pid in pids - self._seen.keys():
            self._seen[pid] = self._examine(pid)
        return self.targets

    def _examine(self, pid: int) -> Target | None:
        info = self._inspect(pid)
        if info is None:
            return None
        if info.cmdline:
            info = replace(info, cmdline=redact_cmdline(info.cmdline, self._patterns))
        now = self._clock()
        age = now - info.start_time
        if age <= self._young_s:
            _started, _due, wait = self._young.get(pid, (0.0, 0.0, 1.0))
            wait = 1.0 if age < 10.0 else 2 * wait
            self._young[pid] = (info.start_time, now + wait, wait)
        try:
            target = self._decide(info)
        except Exception:  # a plugin bug must not stop discovery of others
            log.exception("discovery of pid %d failed", pid)
            target = None
        labels = self._announced.get(pid)
        if labels is not None:
            if target is None:
                target = Target(
                    host=self.host,
                    pid=pid,
                    start_time=info.start_time,
                    cmdline=info.cmdline,
                    how_found="sdk",
                )
            target = replace(target, labels={**target.labels, **labels})
        if target is not None and target.host != self.host:
            target = replace(target, host=self.host)
        return target

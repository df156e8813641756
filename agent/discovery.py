"""Finding inference processes: cheap every tick, expensive once per process.

Each tick lists the pids on the host (a directory listing). Only a pid not
seen before is handed to the ``infermeter_discover`` plugins, which may read
its memory maps; the answer, target or not, is kept until the pid goes away.
A process is identified by (pid, start time): when a known target's pid now
has another start time, the old target is gone and the new process is asked
about afresh. Reading a start time costs ~40 µs, so with many targets that
check runs every ``recheck_every`` scans (a pid reused within seconds needs
the kernel to wrap its whole pid space).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import psutil

from infermeter.records import Target

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The cheap facts about a process that discovery plugins decide on."""

    pid: int
    start_time: float
    name: str
    cmdline: tuple[str, ...]
    username: str | None


def process_info(pid: int) -> ProcessInfo | None:
    """Read one process's facts, or None when it vanished or may not be read."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            start = p.create_time()
            name = p.name()
            try:
                cmdline = tuple(p.cmdline())
            except psutil.AccessDenied:
                cmdline = ()
            try:
                user: str | None = p.username()
            except (psutil.AccessDenied, KeyError):
                user = None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None
    return ProcessInfo(pid, start, name, cmdline, user)


def start_time_of(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


Decide = Callable[[ProcessInfo], Target | None]


class Discovery:
    """Keeps the current targets by pid across ticks."""

    def __init__(
        self,
        host: str,
        decide: Decide,
        list_pids: Callable[[], list[int]] = psutil.pids,
        inspect: Callable[[int], ProcessInfo | None] = process_info,
        start_time: Callable[[int], float | None] = start_time_of,
        recheck_every: int = 10,
    ) -> None:
        self.host = host
        self._decide = decide
        self._list_pids = list_pids
        self._inspect = inspect
        self._start_time = start_time
        self._seen: dict[int, Target | None] = {}
        self._announced: dict[int, Mapping[str, str]] = {}
        self._recheck_every = max(1, recheck_every)
        self._scans = 0

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

"""Who used the CPU in an interval: per-target CPU-seconds against the host's busy time.

Both CPU meters (RAPL's measured package energy and the utilisation
estimate) split their energy the same way, so the split lives here once.
Each tick it reads the host's cumulative busy seconds (summed over CPUs) and
each target's cumulative user+system seconds, and turns the differences into
``Reading.weights``: ``{pid: cpu_seconds}`` for targets and ``{-1: seconds}``
for the busy time no target explains. Attribution splits active energy in
proportion to these weights; -1 is never a target's pid, so its part goes to
``other``, never silently onto a target.

The numbers come from a *source*: ``PsutilTimes`` asks the kernel through
psutil, ``RecordedTimes`` (in ``cpu_trace``) answers from a recorded
``cpu_times.jsonl`` at the replay's ``now``. The tracker below is the same
code for both, which is what makes a replay test the live path.

Per tick this costs one ``psutil.cpu_times()`` plus one read of
/proc/PID/stat per target (``infermeter.discover.processes.cpu_seconds``, which also
tells a reused pid from the target by its start time).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from infermeter.discover import processes
from infermeter.records import Target

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
OTHER_PID = -1  # weight key for busy time that no target explains
WEIGHT_BASIS = "cpu-seconds"

ProcKey = tuple[int, float]  # (pid, start time)


@dataclass(frozen=True, slots=True)
class SystemTimes:
    """Cumulative busy CPU-seconds of the whole host, summed over its CPUs."""

    busy_s: float
    ncpu: int
    clock_s: float | None = None  # the source's own since-boot clock at this reading


class CpuTimesSource(Protocol):
    """Where CPU times come from: the kernel now, or a recording at ``now``.

    ``started_at`` turns a target's start time into the clock of
    ``SystemTimes.clock_s``, so that a process born inside an interval can be
    charged all its CPU time; a recording, which only knows when it first saw
    a process, answers None.
    """

    def system(self, now: float) -> SystemTimes | None: ...

    def started_at(self, start_time: float) -> float | None: ...

    def process(self, pid: int, start_time: float, now: float) -> float | None: ...

    def retain(self, keys: Iterable[ProcKey]) -> None: ...


def busy_seconds(t: object) -> float:
    """Busy time from a psutil ``cpu_times()`` tuple or a recorded ``system`` row.

    busy = user + nice + system + irq + softirq: everything but idle, iowait
    (a CPU waiting on disk does no work), steal (time the hypervisor gave to
    someone else) and guest/guest_nice (already counted inside user/nice).
    Fields a platform or a recording lacks count as 0.
    """
    names = ("user", "nice", "system", "irq", "softirq")
    if isinstance(t, Mapping):
        return sum(float(t.get(name, 0.0)) for name in names)
    return sum(float(getattr(t, name, 0.0)) for name in names)


class PsutilTimes:
    """The live source: the host's times from psutil, each target's from /proc."""

    def system(self, now: float) -> SystemTimes:
        import psutil  # here, not at load: most processes that load plugins never meter

        clock = time.clock_gettime(time.CLOCK_BOOTTIME)
        return SystemTimes(busy_seconds(psutil.cpu_times()), psutil.cpu_count() or 1, clock)

    def started_at(self, start_time: float) -> float:
        """Seconds since boot: the kernel's start tick, without the wall-clock ``btime``.

        Start times are ``ticks / CLK_TCK + btime`` and ``btime`` is whole
        seconds, so only the since-boot part can be compared with a clock.
        """
        import psutil

        return start_time - float(psutil.boot_time())

    def process(self, pid: int, start_time: float, now: float) -> float | None:
        return processes.cpu_seconds(pid, start_time)

    def retain(self, keys: Iterable[ProcKey]) -> None:
        pass  # nothing is kept per process


@dataclass(frozen=True, slots=True)
class CpuInterval:
    """What the CPU did over [t0, t1): busy seconds and who used them."""

    t0: float
    t1: float
    busy_s: float
    ncpu: int
    weights: Mapping[int, float] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.t1 - self.t0

    @property
    def busy_fraction(self) -> float:
        capacity = self.duration_s * self.ncpu
        return min(max(self.busy_s / capacity, 0.0), 1.0) if capacity > 0 else 0.0


class CpuWeights:
    """Turns cumulative CPU times into per-interval weights, tick after tick."""

    def __init__(self, source: CpuTimesSource) -> None:
        self.source = source
        self._t: float | None = None
        self._busy: float | None = None
        self._clock: float | None = None
        self._last: dict[ProcKey, float] = {}

    def _born_after(self, start_time: float, clock: float) -> bool:
        # Start times are whole clock ticks, truncated: one tick of slack keeps
        # a process born just after the last reading from looking older.
        started = self.source.started_at(start_time)
        return started is not None and started >= clock - 1.0 / CLK_TCK

    def update(self, now: float, targets: Mapping[int, Target]) -> CpuInterval | None:
        """The interval since the previous call; None on the first (baseline) call.

        A target seen for the first time is charged from this tick on, unless
        the source knows it started inside the interval (then from its start).
        A target that exited since the last tick loses its last partial
        interval to ``other``: the host's busy time still holds it.
        """
        system = self.source.system(now)
        t_prev, busy_prev, clock_prev = self._t, self._busy, self._clock
        current: dict[ProcKey, float] = {}
        weights: dict[int, float] = {}
        for pid, target in targets.items():
            key = (pid, target.start_time)
            cpu = self.source.process(pid, target.start_time, now)
            if cpu is None:
                continue
            current[key] = cpu
            prev = self._last.get(key)
            if prev is not None:
                used = cpu - prev
            elif clock_prev is not None and self._born_after(target.start_time, clock_prev):
                used = cpu  # born inside the interval: all its CPU time is in it
            else:
                continue
            if used > 0:
                weights[pid] = used
        self.source.retain((pid, t.start_time) for pid, t in targets.items())
        self._last = current
        if system is None:
            self._t = self._busy = self._clock = None
            return None
        self._t, self._busy, self._clock = now, system.busy_s, system.clock_s
        if t_prev is None or busy_prev is None or now <= t_prev:
            return None
        busy = max(system.busy_s - busy_prev, 0.0)
        other = busy - sum(weights.values())
        if other > 0:
            weights[OTHER_PID] = other
        return CpuInterval(t_prev, now, busy, system.ncpu, weights)

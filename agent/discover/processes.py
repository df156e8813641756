"""The process table read straight from /proc: cheap enough for every tick.

The core lists processes every tick and asks discovery plugins only about
processes it has not seen, so the per-tick part must cost little. On Linux
the cheapest complete answer is ``os.listdir('/proc')`` plus one read of
``/proc/PID/stat`` per process for its start time (field 22, in clock ticks
since boot): it gives (pid, start time) pairs, the identity that survives
pid reuse, at ~10 us a process on a small VM. Building a psutil.Process per
pid for its ``create_time()`` reads the same file and costs ~3x more;
``psutil.process_iter`` is cheaper only because it caches Process objects
and never re-reads a cached pid's start time, so it misses pid reuse
(measured in ``tests/plugins/test_procfs.py``, printed, not asserted). Cheaper
still, when the caller keeps state: list pids every tick (``os.listdir``,
~70 us) and read start times only for new pids and, now and then, targets.

Start times are computed exactly as psutil computes ``create_time()``
(``ticks / CLK_TCK + btime``, same float operations), so a key built here and
one built from psutil agree to the bit and targets do not churn.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from functools import lru_cache

PROC = "/proc"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What discovery sees of one process (hookspecs.ProcessInfo).

    Equality covers (pid, start_time), so a pid that the kernel handed to a
    new process compares unequal to the old one. ``cmdline`` is what the
    kernel shows, secrets included: ``Discovery`` redacts it
    (``infermeter.discover.redact``) before any plugin or target sees it.
    """

    pid: int
    start_time: float  # UTC seconds, as psutil.Process.create_time() gives it
    name: str = field(compare=False)
    cmdline: tuple[str, ...] = field(compare=False)
    username: str | None = field(compare=False)

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.start_time)


_BOOT_TIME: dict[str, float] = {}


def boot_time(proc: str = PROC) -> float:
    """Boot time in UTC seconds from ``/proc/stat`` (``btime``), as psutil reads it.

    Read once per /proc root: it is the anchor of every start time, and a
    wall clock stepped later must not make every process look new.
    """
    cached = _BOOT_TIME.get(proc)
    if cached is not None:
        return cached
    with open(f"{proc}/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                _BOOT_TIME[proc] = float(line.split()[1])
                return _BOOT_TIME[proc]
    raise RuntimeError(f"no btime line in {proc}/stat")


def _stat_fields(raw: bytes) -> list[bytes]:
    # comm (field 2) is in parentheses and may hold spaces or ')': split after
    # the last ')'. The list then starts at field 3 (state).
    return raw[raw.rindex(b")") + 2 :].split()


def _read_stat(pid: int, proc: str = PROC) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` from field 3 on, or None if the process is gone."""
    # os.open/os.read: half the cost of open() (no buffered file object),
    # which matters when every process is read every tick.
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        raw = os.read(fd, 4096)
    except (ProcessLookupError, PermissionError):
        return None
    finally:
        os.close(fd)
    try:
        return _stat_fields(raw)
    except ValueError:
        return None


def start_ticks(pid: int, proc: str = PROC) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it is gone."""
    fields = _read_stat(pid, proc)
    try:
        return int(fields[19]) if fields else None  # field 22 overall
    except (ValueError, IndexError):
        return None


def cpu_seconds(pid: int, start_time: float, proc: str = PROC) -> float | None:
    """User + system CPU seconds of the process that started at ``start_time``.

    None when the pid is gone or now belongs to another process (its start
    differs). One read of ``/proc/PID/stat`` (~10 µs), a third of psutil's
    ``Process.cpu_times()``; this runs for every target on every tick.
    """
    fields = _read_stat(pid, proc)
    if not fields:
        return None
    try:
        ticks, utime, stime = int(fields[19]), int(fields[11]), int(fields[12])
    except (ValueError, IndexError):
        return None
    if abs(float(ticks) / CLK_TCK + boot_time(proc) - start_time) > 0.05:
        return None
    return (utime + stime) / CLK_TCK


def start_time(pid: int, proc: str = PROC, btime: float | None = None) -> float | None:
    """Start time of ``pid`` in UTC seconds (psutil's ``create_time()``), or None."""
    ticks = start_ticks(pid, proc)
    if ticks is None:
        return None
    bt = boot_time(proc) if btime is None else btime
    return float(ticks) / CLK_TCK + bt


def list_processes(proc: str = PROC) -> dict[int, float]:
    """Every live process as ``{pid: start_time}``: one listdir, one stat read each.

    Processes that exit between the listing and the read are left out.
    """
    bt = boot_time(proc)
    out: dict[int, float] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        ticks = start_ticks(pid, proc)
        if ticks is not None:
            out[pid] = float(ticks) / CLK_TCK + bt
    return out


@lru_cache(maxsize=1024)
def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # a uid without a passwd entry (containers): keep it visible


def process_info(pid: int, proc: str = PROC) -> ProcessInfo | None:
    """Build the ProcessInfo of ``pid`` from stat, status and cmdline; None if gone.

    The name is the kernel's ``comm`` (15 characters at most), extended from
    the command line's first word when it was truncated, as psutil does. The
    user is the real uid's name. A command line the agent may not read (other
    users' processes under hardened /proc) is left empty.
    """
    st = start_time(pid, proc)
    if st is None:
        return None
    name = ""
    uid: int | None = None
    try:
        with open(f"{proc}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Name:"):
                    name = line[5:].strip().decode(errors="replace")
                elif line.startswith(b"Uid:"):
                    uid = int(line.split()[1])
                    break
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        pass
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
        cmdline = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        cmdline = ()
    if len(name) >= 15 and cmdline:
        first = os.path.basename(cmdline[0])
        if first.startswith(name):
            name = first
    user = _user_name(uid) if uid is not None else None
    return ProcessInfo(pid=pid, start_time=st, name=name, cmdline=cmdline, username=user)

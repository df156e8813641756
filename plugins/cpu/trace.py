"""The ``cpu_times.jsonl`` trace: written by ``infermeter record``, read back by replay.

Format (the shared fixtures' ``h100-serving/cpu_times.jsonl``), one JSON
object per line, ~4 Hz:

    {"t": <UTC seconds>,
     "system": {"user", "system", "idle", "iowait": cumulative seconds summed
                over CPUs (psutil.cpu_times()), "ncpu": logical CPUs},
     "procs": {"<pid>": {"user", "system": cumulative seconds, "rss": bytes}}}

The recorder also writes ``nice``, ``irq`` and ``softirq`` into ``system``
so a replay of its own traces counts busy time exactly as the live meter
does; readers treat them as optional (the fixture lacks them), and a
``cpu_info.json`` with the CPU's model name so a replay uses the same power
table row. Replay answers at any ``now`` by linear interpolation between
the two rows around it: cumulative counters stay monotonic, and a tick that
falls between 4 Hz samples still gets its share.

Every line is checked (infermeter.sidecar.trace_check): a line that does not parse,
a number that is not finite or is negative, a time going backwards is a
problem naming the file and line; ``check_files`` lists them for the replay
to refuse the trace on, and the readers return the readable rows, which is
what ``--partial`` replays.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from infermeter.config import Config
from infermeter.plugins.cpu.power import cpu_model_name, logical_cpus
from infermeter.plugins.cpu.weights import ProcKey, SystemTimes, busy_seconds
from infermeter.records import Framework, Target
from infermeter.sidecar.trace_check import (
    MAX_GAP_S,
    BadValue,
    TraceProblem,
    json_value,
    key_line,
    load_document,
    mapping,
    number,
    read_lines,
    show,
    text,
    whole,
)

if TYPE_CHECKING:  # the recorder imports it when it records
    import psutil

log = logging.getLogger(__name__)

CPU_TIMES = "cpu_times.jsonl"
CPU_INFO = "cpu_info.json"


_SYSTEM_NEEDED = ("user", "system", "idle")
_SYSTEM_OPTIONAL = ("iowait", "nice", "irq", "softirq")


def _row(_number: int, line: str) -> tuple[float, dict[str, Any]]:
    """One cpu_times.jsonl line, every number finite and not negative."""
    row = mapping(json_value(line), "line")
    t = number(row["t"], "t", low=0)
    system = mapping(row["system"], "system")
    for key in _SYSTEM_NEEDED:
        number(system[key], f"system.{key}", low=0)
    for key in _SYSTEM_OPTIONAL:
        if system.get(key) is not None:
            number(system[key], f"system.{key}", low=0)
    if system.get("ncpu") is not None:
        whole(system["ncpu"], "system.ncpu", low=1)
    procs = mapping(row.get("procs") or {}, "procs")
    for pid, proc in procs.items():
        whole(pid, f"procs key {show(pid)}")
        p = mapping(proc, f"procs[{pid}]")
        number(p["user"], f"procs[{pid}].user", low=0)
        number(p["system"], f"procs[{pid}].system", low=0)
        if p.get("rss") is not None:
            whole(p["rss"], f"procs[{pid}].rss")
    return t, row


def load_rows(path: Path) -> tuple[list[dict[str, Any]], list[TraceProblem]]:
    """The readable rows of a cpu_times.jsonl in time order, and what could not be read."""
    return read_lines(path, _row, max_gap_s=MAX_GAP_S)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The readable rows of a cpu_times.jsonl; a replay checks ``load_rows``'s problems first."""
    rows, problems = load_rows(path)
    if problems:  # a replay has reported them already (or refused the trace)
        log.debug(
            "%s: %d line(s) not readable, left out (first: %s)", path, len(problems), problems[0]
        )
    return rows


def check_files(trace_dir: Path) -> list[TraceProblem]:
    """Every problem in the CPU files of a trace (cpu_times.jsonl, cpu_info.json)."""
    problems: list[TraceProblem] = []
    if (trace_dir / CPU_TIMES).is_file():
        problems += load_rows(trace_dir / CPU_TIMES)[1]
    info = trace_dir / CPU_INFO
    if info.is_file():
        data, found = load_document(info)
        problems += found
        if not found:
            try:
                d = mapping(data, "cpu_info.json")
                text(d["model_name"], "model_name", empty=True)
                if d.get("ncpu") is not None:
                    whole(d["ncpu"], "ncpu", low=1)
            except (BadValue, KeyError) as e:
                what = str(e.args[0]) if isinstance(e, BadValue) else f"missing {e.args[0]!r}"
                problems.append(
                    TraceProblem(info, key_line(info, "model_name"), what, whole_file=True)
                )
    return problems


class RecordedTimes:
    """A CpuTimesSource answering from a recording at the replay's ``now``."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            raise ValueError("a recording needs at least one row")
        self._t = [float(r["t"]) for r in rows]
        self._busy = [busy_seconds(r["system"]) for r in rows]
        self._ncpu = [int(r["system"].get("ncpu") or 1) for r in rows]
        self._procs: list[dict[str, Any]] = [r.get("procs") or {} for r in rows]

    @classmethod
    def load(cls, path: Path) -> RecordedTimes:
        return cls(read_rows(path))

    @property
    def window(self) -> tuple[float, float]:
        return (self._t[0], self._t[-1])

    @property
    def ncpu(self) -> int:
        return self._ncpu[0]

    def first_seen(self) -> dict[int, float]:
        seen: dict[int, float] = {}
        for t, procs in zip(self._t, self._procs, strict=True):
            for pid in procs:
                seen.setdefault(int(pid), t)
        return seen

    def _bracket(self, now: float) -> tuple[int, int, float] | None:
        """Rows i <= j around ``now`` and the fraction of the way from i to j."""
        if now < self._t[0]:
            return None
        j = bisect.bisect_right(self._t, now)
        if j >= len(self._t):
            return (len(self._t) - 1, len(self._t) - 1, 0.0)
        i = j - 1
        span = self._t[j] - self._t[i]
        return (i, j, (now - self._t[i]) / span if span > 0 else 0.0)

    def system(self, now: float) -> SystemTimes | None:
        b = self._bracket(now)
        if b is None:
            return None
        i, j, f = b
        return SystemTimes(self._busy[i] + f * (self._busy[j] - self._busy[i]), self._ncpu[i])

    def process(self, pid: int, start_time: float, now: float) -> float | None:
        b = self._bracket(now)
        if b is None:
            return None
        i, j, f = b
        a, z = self._procs[i].get(str(pid)), self._procs[j].get(str(pid))
        if a is None:
            return None  # not recorded yet at now
        va = float(a["user"]) + float(a["system"])
        if z is None:
            return va  # last sample of a process that ended: hold it
        vz = float(z["user"]) + float(z["system"])
        return va + f * (vz - va)

    def started_at(self, start_time: float) -> float | None:
        return None  # a recording knows only when it first saw a process

    def retain(self, keys: Iterable[ProcKey]) -> None:
        pass  # nothing cached per process


def model_name_of(trace_dir: Path) -> str:
    try:
        return str(json.loads((trace_dir / CPU_INFO).read_text())["model_name"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def span_headers(trace_dir: Path) -> dict[int, dict[str, Any]]:
    """The first line (header) of every spans_*.jsonl, by the pid it names."""
    headers: dict[int, dict[str, Any]] = {}
    for path in sorted(trace_dir.glob("spans_*.jsonl")):
        try:
            with path.open(encoding="utf-8") as f:
                header = json.loads(f.readline())
            headers[int(header["pid"])] = header
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s: no readable header line; ignored", path)
    return headers


def recorded_targets(trace_dir: Path, host: str) -> list[Target]:
    """Every process in cpu_times.jsonl, started when first seen, framework from its spans."""
    source = RecordedTimes.load(trace_dir / CPU_TIMES)
    headers = span_headers(trace_dir)
    targets = []
    for pid, first in sorted(source.first_seen().items()):
        header = headers.get(pid, {})
        try:
            framework = Framework(header.get("runtime", "unknown"))
        except ValueError:
            framework = Framework.UNKNOWN
        labels = {"model": str(header["model"])} if header.get("model") else {}
        targets.append(
            Target(
                host=host,
                pid=pid,
                start_time=first,
                framework=framework,
                labels=labels,
                how_found="runtime",
            )
        )
    return targets


class CpuTimesRecorder:
    """Writes cpu_times.jsonl for the host and every process discovery calls a target.

    The processes recorded are the targets discovery knows at each sample;
    their psutil handles are kept so a sample costs one read per target.
    """

    name = "cpu_times"

    def __init__(self, out_dir: Path, config: Config, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self._procs: dict[tuple[int, float], psutil.Process] = {}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CPU_INFO).write_text(
            json.dumps({"model_name": cpu_model_name(), "ncpu": logical_cpus()}) + "\n"
        )
        self._f: IO[str] = (out_dir / CPU_TIMES).open("w", encoding="utf-8")

    def _handles(self, targets: Mapping[int, Target]) -> dict[tuple[int, float], psutil.Process]:
        import psutil

        keys = {(t.pid, t.start_time) for t in targets.values()}
        self._procs = {k: p for k, p in self._procs.items() if k in keys}
        for pid, start in keys - self._procs.keys():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == start:  # the same process, not a reused pid
                    self._procs[(pid, start)] = proc
            except psutil.Error:
                continue
        return self._procs

    def sample(self, now: float, targets: Mapping[int, Target]) -> None:
        import psutil

        t = psutil.cpu_times()
        system = {
            name: getattr(t, name)
            for name in ("user", "system", "idle", "iowait", "nice", "irq", "softirq")
        }
        system["ncpu"] = psutil.cpu_count() or 1
        procs: dict[str, dict[str, float | int]] = {}
        for (pid, _start), proc in list(self._handles(targets).items()):
            try:
                with proc.oneshot():
                    ct, rss = proc.cpu_times(), proc.memory_info().rss
            except psutil.Error:
                continue
            procs[str(pid)] = {"user": ct.user, "system": ct.system, "rss": rss}
        self._f.write(json.dumps({"t": now, "system": system, "procs": procs}) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

"""The NVML trace files: reading them for replay, naming them for the recorder.

A trace folder holds, per physical GPU ``i``, the files of the shared H100
fixtures (tests/fixtures/README.md), so a trace recorded by ``infermeter
record`` and the hand-made fixtures replay through the same code:

- ``nvml_device{i}.csv``: ``t,energy_mj,power_mw,power_instant_mw,util_gpu,
  util_mem,sm_mhz``; an empty cell is a value that was not read at that row
  (the energy counter is read less often than power: it costs ~3 ms).
- ``nvml_processes.jsonl`` for GPU 0, ``nvml_processes{i}.jsonl`` for GPU
  ``i >= 1`` (the fixtures name one GPU's file without an index): one line
  per poll, ``{"t", "samples": [[pid, smUtil, memUtil, encUtil, decUtil,
  timestamp_us], ...], "procs": [[pid, usedGpuMemory], ...]}`` or ``"error"``
  in place of ``"samples"``.
- ``nvml_devices.json`` (written by the recorder): what identifies each GPU
  (uuid, name, memory, power limit). The fixtures have no such file; the
  resnet-encoder one has ``nvml_api.json`` (device 0 only, values as Python
  reprs), read as a fallback. A trace with neither replays as an unnamed GPU.

Every file is read through infermeter.sidecar.trace_check: a line that does not
parse, a value that is not a finite number in its range (utilisation 0-100,
no negative counter, power or memory), a row with a cell missing, a time
going backwards, is a TraceProblem naming the file and line, and the rest of
the file is read. ``check_files`` lists a trace's problems for the replay to
refuse it on; the ``read_*`` functions return the readable rows, which is
what ``--partial`` replays. A big jump in the energy counter is not refused
here: that is for the meter's cross-check, which replays it as a live
driver's glitch.
"""

from __future__ import annotations

import ast
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    sequence,
    show,
    text,
    whole,
)

DEVICE_COLUMNS = (
    "t",
    "energy_mj",
    "power_mw",
    "power_instant_mw",
    "util_gpu",
    "util_mem",
    "sm_mhz",
)
DEVICES_JSON = "nvml_devices.json"
API_JSON = "nvml_api.json"
_DEVICE_CSV = re.compile(r"^nvml_device(\d+)\.csv$")

# One process-utilization sample as NVML gives it and the trace stores it.
Sample = tuple[int, int, int, int, int, int]  # pid, sm, mem, enc, dec, timestamp_us


def device_csv_name(index: int) -> str:
    return f"nvml_device{index}.csv"


def processes_name(index: int) -> str:
    return "nvml_processes.jsonl" if index == 0 else f"nvml_processes{index}.jsonl"


def device_indices(trace_dir: Path) -> list[int]:
    """Indices of the GPUs that have a device file in the trace, in order."""
    if not trace_dir.is_dir():
        return []
    found = (_DEVICE_CSV.match(p.name) for p in trace_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def _cell(cell: str, name: str, high: float | None = None) -> int | None:
    """An optional whole, non-negative cell: empty is a value that was not read."""
    return None if cell == "" else whole(cell, name, 0, high)


@dataclass(slots=True)
class DeviceTrace:
    """One GPU's device rows as columns; ``energy_*`` holds only filled rows."""

    t: list[float] = field(default_factory=list)
    energy_t: list[float] = field(default_factory=list)
    energy_mj: list[int] = field(default_factory=list)
    power_mw: list[int | None] = field(default_factory=list)
    power_instant_mw: list[int | None] = field(default_factory=list)
    util_gpu: list[int | None] = field(default_factory=list)
    util_mem: list[int | None] = field(default_factory=list)
    sm_mhz: list[int | None] = field(default_factory=list)


def _device_header(line: str) -> None:
    header = tuple(next(csv.reader([line])))
    if header != DEVICE_COLUMNS:
        missing = [c for c in DEVICE_COLUMNS if c not in header]
        detail = f"missing column {', '.join(missing)}" if missing else f"found {show(line)}"
        raise BadValue(f"header must be {','.join(DEVICE_COLUMNS)} ({detail})")


Row = tuple[float, int | None, int | None, int | None, int | None, int | None, int | None]


def _device_row(_number: int, line: str) -> tuple[float, Row]:
    cells = next(csv.reader([line]))
    if len(cells) != len(DEVICE_COLUMNS):
        raise BadValue(f"expected {len(DEVICE_COLUMNS)} cells, found {len(cells)}")
    t = number(cells[0], "t", low=0)
    return t, (
        t,
        _cell(cells[1], "energy_mj"),
        _cell(cells[2], "power_mw"),
        _cell(cells[3], "power_instant_mw"),
        _cell(cells[4], "util_gpu", 100),
        _cell(cells[5], "util_mem", 100),
        _cell(cells[6], "sm_mhz"),
    )


def load_device_csv(path: Path) -> tuple[DeviceTrace, list[TraceProblem]]:
    """The readable rows of a device file, and what could not be read."""
    trace = DeviceTrace()
    rows, problems = read_lines(path, _device_row, _device_header, MAX_GAP_S)
    for t, energy, power, instant, util, mem, sm in rows:
        trace.t.append(t)
        if energy is not None:
            trace.energy_t.append(t)
            trace.energy_mj.append(energy)
        trace.power_mw.append(power)
        trace.power_instant_mw.append(instant)
        trace.util_gpu.append(util)
        trace.util_mem.append(mem)
        trace.sm_mhz.append(sm)
    return trace, problems


def read_device_csv(path: Path) -> DeviceTrace:
    return load_device_csv(path)[0]


@dataclass(frozen=True, slots=True)
class ProcessRow:
    t: float
    samples: tuple[Sample, ...]
    procs: tuple[tuple[int, int | None], ...]
    error: str | None = None  # e.g. "NVMLError_NotFound: Not Found"


def _sample(value: Any, name: str) -> Sample:
    s = sequence(value, name, 6)
    return (
        whole(s[0], f"{name} pid"),
        whole(s[1], f"{name} smUtil", 0, 100),
        whole(s[2], f"{name} memUtil", 0, 100),
        whole(s[3], f"{name} encUtil", 0, 100),
        whole(s[4], f"{name} decUtil", 0, 100),
        whole(s[5], f"{name} timestamp"),
    )


def _proc(value: Any, name: str) -> tuple[int, int | None]:
    p = sequence(value, name, 2)
    return whole(p[0], f"{name} pid"), None if p[1] is None else whole(p[1], f"{name} memory")


def _process_row(_number: int, line: str) -> tuple[float, ProcessRow]:
    d = mapping(json_value(line), "line")
    t = number(d["t"], "t", low=0)
    samples = tuple(
        _sample(s, f"samples[{i}]") for i, s in enumerate(sequence(d.get("samples", []), "samples"))
    )
    procs = tuple(
        _proc(p, f"procs[{i}]") for i, p in enumerate(sequence(d.get("procs", []), "procs"))
    )
    error = d.get("error")
    return t, ProcessRow(t, samples, procs, None if error is None else text(error, "error"))


def load_processes(path: Path) -> tuple[list[ProcessRow], list[TraceProblem]]:
    """The readable rows of a processes file (none when there is no file), and its problems."""
    return read_lines(path, _process_row, max_gap_s=MAX_GAP_S, optional=True)


def read_processes(path: Path) -> list[ProcessRow]:
    return load_processes(path)[0]


@dataclass(frozen=True, slots=True)
class Identity:
    """What NVML said about a GPU once: the fields of records.Device it feeds."""

    uuid: str
    name: str
    memory_total_bytes: int | None = None
    power_limit_mw: int | None = None


def _optional_whole(d: dict[str, Any], key: str) -> int | None:
    return None if d.get(key) is None else whole(d[key], key)


def _optional_text(d: dict[str, Any], key: str) -> str | None:
    return None if d.get(key) is None else text(d[key], key, empty=True)


def load_devices(trace_dir: Path) -> tuple[dict[int, Identity], list[TraceProblem]]:
    """nvml_devices.json by GPU index (empty when absent), and its problems.

    An entry that does not check out makes the file unusable: the GPUs of a
    partial replay are then named from nvml_api.json or the folder.
    """
    path = trace_dir / DEVICES_JSON
    data, problems = load_document(path, absent=[])
    if problems:
        return {}, problems
    found: dict[int, Identity] = {}
    try:
        for i, entry in enumerate(sequence(data, "nvml_devices.json")):
            d = mapping(entry, f"entry {i}")
            key = ""
            try:
                key = "index"
                index = whole(d.get("index"), "index")
                key = "uuid"
                uuid = _optional_text(d, "uuid")
                key = "name"
                name = _optional_text(d, "name")
                key = "memory_total_bytes"
                memory = _optional_whole(d, "memory_total_bytes")
                key = "power_limit_mw"
                limit = _optional_whole(d, "power_limit_mw")
            except BadValue as e:
                line = key_line(path, key, i)
                return {}, [TraceProblem(path, line, f"entry {i}: {e}", whole_file=True)]
            fallback = Identity(uuid=f"replay-{trace_dir.name}-gpu{index}", name="")
            found[index] = Identity(
                uuid=uuid or fallback.uuid,
                name=name or "unknown GPU (replay)",
                memory_total_bytes=memory,
                power_limit_mw=limit,
            )
    except BadValue as e:
        return {}, [TraceProblem(path, 1, str(e), whole_file=True)]
    return found, []


# nvml_api.json calls read for a GPU's identity, and the Python type of each value.
_API_VALUES: dict[str, tuple[type, ...]] = {
    "nvmlDeviceGetUUID": (str,),
    "nvmlDeviceGetName": (str,),
    "nvmlDeviceGetMemoryInfo": (tuple, list),
    "nvmlDeviceGetPowerManagementLimit": (int,),
}


def load_api(trace_dir: Path) -> tuple[dict[str, Any], list[TraceProblem]]:
    """The identity values nvml_api.json recorded (Python reprs), and its problems."""
    path = trace_dir / API_JSON
    data, problems = load_document(path, absent={})
    if problems:
        return {}, problems
    try:
        calls = mapping(mapping(data, "nvml_api.json").get("api", {}), "api")
    except BadValue as e:
        return {}, [TraceProblem(path, key_line(path, "api"), str(e), whole_file=True)]
    values: dict[str, Any] = {}
    for name, kinds in _API_VALUES.items():
        call = calls.get(name) or {}
        if not isinstance(call, dict) or not call.get("ok") or "value" not in call:
            continue
        try:
            value = ast.literal_eval(str(call["value"]))
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise ValueError(type(value).__name__)
            if isinstance(value, (tuple, list)):
                for v in value:
                    whole(v, name)
            elif isinstance(value, int):
                whole(value, name)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            what = f"{name}: value {show(call['value'])} is not a {kinds[0].__name__} ({e})"
            return {}, [TraceProblem(path, key_line(path, name), what, whole_file=True)]
        values[name] = value
    return values, []


def read_identity(trace_dir: Path, index: int) -> Identity:
    """The GPU's identity from nvml_devices.json, else nvml_api.json, else a stand-in name.

    A trace without either gets a uuid made from the folder's name, so two
    replays of one folder agree and never collide with a real GPU's uuid.
    """
    fallback = Identity(uuid=f"replay-{trace_dir.name}-gpu{index}", name="unknown GPU (replay)")
    devices, _ = load_devices(trace_dir)
    if index in devices:
        return devices[index]
    if index == 0 and (trace_dir / API_JSON).is_file():
        values, _ = load_api(trace_dir)
        memory = values.get("nvmlDeviceGetMemoryInfo")  # recorded as (used, total)
        limit = values.get("nvmlDeviceGetPowerManagementLimit")
        return Identity(
            uuid=str(values.get("nvmlDeviceGetUUID") or fallback.uuid),
            name=str(values.get("nvmlDeviceGetName") or fallback.name),
            memory_total_bytes=int(max(memory)) if memory else None,
            power_limit_mw=int(limit) if limit is not None else None,
        )
    return fallback


def check_files(trace_dir: Path) -> list[TraceProblem]:
    """Every problem in the NVML files of a trace (none: it can be replayed whole)."""
    problems: list[TraceProblem] = []
    for index in device_indices(trace_dir):
        problems += load_device_csv(trace_dir / device_csv_name(index))[1]
        problems += load_processes(trace_dir / processes_name(index))[1]
    problems += load_devices(trace_dir)[1]
    problems += load_api(trace_dir)[1]
    return problems


def trace_window(trace_dir: Path) -> tuple[float, float] | None:
    """First and last ``t`` over all nvml_device csv files of the trace."""
    first: float | None = None
    last: float | None = None
    for index in device_indices(trace_dir):
        ts = read_device_csv(trace_dir / device_csv_name(index)).t
        if ts:
            first = ts[0] if first is None else min(first, ts[0])
            last = ts[-1] if last is None else max(last, ts[-1])
    if first is None or last is None:
        return None
    return (first, last)


def _json_lines_header(path: Path) -> dict[str, Any] | None:
    """The first line of a spans file as an object, or None (the core checks those files)."""
    try:
        with path.open(encoding="utf-8") as f:
            header = json_value(f.readline())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _document(path: Path) -> Any:
    """A JSON document the core checks (meta.json, workload.json), or None when unreadable."""
    data, problems = load_document(path, absent=None)
    return None if problems else data


def replay_targets(trace_dir: Path) -> list[Target]:
    """The pids the trace saw holding a GPU, as Targets.

    Identity: host is the folder's name unless meta.json has a ``host``;
    start time is the first ``t`` the pid was seen holding a GPU (the trace
    has no kernel start time). Framework and model come from a
    ``spans_*.jsonl`` header with the same pid (``runtime``, ``model``), else
    from workload.json's phases: a pid that ran one model gets it as label, a
    pid that ran several gets none (its spans say which).
    """
    meta = _document(trace_dir / "meta.json")
    host = meta.get("host") if isinstance(meta, dict) else None
    host = host if isinstance(host, str) and host else trace_dir.name
    first_seen: dict[int, float] = {}
    for index in device_indices(trace_dir):
        for row in read_processes(trace_dir / processes_name(index)):
            for pid, _ in row.procs:
                first_seen.setdefault(pid, row.t)
    headers: dict[int, dict[str, Any]] = {}
    for path in sorted(trace_dir.glob("spans_*.jsonl")):
        header = _json_lines_header(path)
        if header is not None and isinstance(header.get("pid"), int):
            headers[header["pid"]] = header
    models: dict[int, set[str]] = {}
    phases = _document(trace_dir / "workload.json")
    for phase in phases if isinstance(phases, list) else ():
        if isinstance(phase, dict) and isinstance(phase.get("pid"), int) and phase.get("model"):
            models.setdefault(phase["pid"], set()).add(str(phase["model"]))
    targets = []
    for pid, t in sorted(first_seen.items()):
        header = headers.get(pid, {})
        try:
            framework = Framework(str(header.get("runtime", "unknown")))
        except ValueError:
            framework = Framework.UNKNOWN
        labels: dict[str, str] = {}
        if header.get("model"):
            labels["model"] = str(header["model"])
        elif len(models.get(pid, ())) == 1:
            labels["model"] = next(iter(models[pid]))
        targets.append(Target(host=host, pid=pid, start_time=t, framework=framework, labels=labels))
    return targets

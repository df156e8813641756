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
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infermeter.records import Framework, Target

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


def _int_or_none(cell: str) -> int | None:
    return int(float(cell)) if cell else None


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


def read_device_csv(path: Path) -> DeviceTrace:
    trace = DeviceTrace()
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != DEVICE_COLUMNS:
            raise ValueError(f"{path}: header must be {','.join(DEVICE_COLUMNS)}")
        for row in reader:
            if not row:
                continue
            t = float(row[0])
            trace.t.append(t)
            if row[1]:
                trace.energy_t.append(t)
                trace.energy_mj.append(int(float(row[1])))
            trace.power_mw.append(_int_or_none(row[2]))
            trace.power_instant_mw.append(_int_or_none(row[3]))
            trace.util_gpu.append(_int_or_none(row[4]))
            trace.util_mem.append(_int_or_none(row[5]))
            trace.sm_mhz.append(_int_or_none(row[6]))
    return trace


@dataclass(frozen=True, slots=True)
class ProcessRow:
    t: float
    samples: tuple[Sample, ...]
    procs: tuple[tuple[int, int | None], ...]
    error: str | None = None  # e.g. "NVMLError_NotFound: Not Found"


def read_processes(path: Path) -> list[ProcessRow]:
    rows: list[ProcessRow] = []
    if not path.is_file():
        return rows
    with path.open() as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            samples = tuple(
                (int(s[0]), int(s[1]), int(s[2]), int(s[3]), int(s[4]), int(s[5]))
                for s in d.get("samples", ())
            )
            procs = tuple(
                (int(p[0]), None if p[1] is None else int(p[1])) for p in d.get("procs", ())
            )
            rows.append(ProcessRow(float(d["t"]), samples, procs, d.get("error")))
    rows.sort(key=lambda r: r.t)
    return rows


@dataclass(frozen=True, slots=True)
class Identity:
    """What NVML said about a GPU once: the fields of records.Device it feeds."""

    uuid: str
    name: str
    memory_total_bytes: int | None = None
    power_limit_mw: int | None = None


def read_identity(trace_dir: Path, index: int) -> Identity:
    """The GPU's identity from nvml_devices.json, else nvml_api.json, else a stand-in name.

    A trace without either gets a uuid made from the folder's name, so two
    replays of one folder agree and never collide with a real GPU's uuid.
    """
    fallback = Identity(uuid=f"replay-{trace_dir.name}-gpu{index}", name="unknown GPU (replay)")
    devices = trace_dir / DEVICES_JSON
    if devices.is_file():
        for d in json.loads(devices.read_text()):
            if int(d.get("index", -1)) == index:
                return Identity(
                    uuid=str(d.get("uuid") or fallback.uuid),
                    name=str(d.get("name") or fallback.name),
                    memory_total_bytes=d.get("memory_total_bytes"),
                    power_limit_mw=d.get("power_limit_mw"),
                )
    api = trace_dir / API_JSON
    if index == 0 and api.is_file():
        calls: dict[str, Any] = json.loads(api.read_text()).get("api", {})

        def value(name: str) -> Any:
            call = calls.get(name) or {}
            return ast.literal_eval(call["value"]) if call.get("ok") and "value" in call else None

        memory = value("nvmlDeviceGetMemoryInfo")  # recorded as (used, total)
        limit = value("nvmlDeviceGetPowerManagementLimit")
        return Identity(
            uuid=str(value("nvmlDeviceGetUUID") or fallback.uuid),
            name=str(value("nvmlDeviceGetName") or fallback.name),
            memory_total_bytes=int(max(memory)) if memory else None,
            power_limit_mw=int(limit) if limit is not None else None,
        )
    return fallback


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
    with path.open() as f:
        first = f.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        return None
    return header if isinstance(header, dict) else None


def replay_targets(trace_dir: Path) -> list[Target]:
    """The pids the trace saw holding a GPU, as Targets.

    Identity: host is the folder's name unless meta.json has a ``host``;
    start time is the first ``t`` the pid was seen holding a GPU (the trace
    has no kernel start time). Framework and model come from a
    ``spans_*.jsonl`` header with the same pid (``runtime``, ``model``), else
    from workload.json's phases: a pid that ran one model gets it as label, a
    pid that ran several gets none (its spans say which).
    """
    meta_path = trace_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    host = str(meta.get("host") or trace_dir.name)
    first_seen: dict[int, float] = {}
    for index in device_indices(trace_dir):
        for row in read_processes(trace_dir / processes_name(index)):
            for pid, _ in row.procs:
                first_seen.setdefault(pid, row.t)
    headers: dict[int, dict[str, Any]] = {}
    for path in sorted(trace_dir.glob("spans_*.jsonl")):
        header = _json_lines_header(path)
        if header is not None and "pid" in header:
            headers[int(header["pid"])] = header
    models: dict[int, set[str]] = {}
    workload = trace_dir / "workload.json"
    if workload.is_file():
        for phase in json.loads(workload.read_text()):
            if phase.get("pid") is not None and phase.get("model"):
                models.setdefault(int(phase["pid"]), set()).add(str(phase["model"]))
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

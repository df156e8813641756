"""Recording what NVML says into a trace folder, in the shared fixtures' format.

``infermeter record`` calls ``sample(now)`` every ``period_s`` (0.05 s: the
serving fixture's 20 Hz). Each call appends one row per physical GPU to
``nvml_device{i}.csv``; the energy counter is read only when ``counter_s``
(0.1 s, its own update period) has passed since the last read, since it
costs ~3 ms, so its cell is empty in between as in the serving fixture. Every
``process_s`` (0.2 s: the fixtures' 5 Hz) a line goes to the processes file
with the process-utilisation samples since the last seen timestamp (or the
error NVML gave, NotFound when idle) and the context holders. Identities go
once to ``nvml_devices.json``. A value NVML refuses is an empty cell; a
recorder never raises into ``infermeter record``. MIG instances are not
recorded: the files describe physical GPUs, as the fixtures do.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pynvml

from infermeter.plugins.nvml.devices import Gpu
from infermeter.plugins.nvml.query import nvml_query
from infermeter.plugins.nvml.trace import (
    DEVICE_COLUMNS,
    DEVICES_JSON,
    device_csv_name,
    processes_name,
)
from infermeter.records import Target

log = logging.getLogger("infermeter.plugins.nvml")


@dataclass(slots=True)
class _Files:
    gpu: Gpu
    device: IO[str]
    writer: Any  # csv writer
    processes: IO[str]
    last_seen: int = 0


class NvmlRecorder:
    name = "nvml"

    def __init__(
        self,
        nvml: Any,
        gpus: list[Gpu],
        out_dir: Path,
        period_s: float = 0.05,
        counter_s: float = 0.1,
        process_s: float = 0.2,
        owns_init: bool = True,
    ) -> None:
        self._nvml = nvml
        self.period_s = period_s
        self._counter_s = counter_s
        self._process_s = process_s
        self._owns_init = owns_init
        self._last_counter: float | None = None
        self._last_process: float | None = None
        self._warned: set[str] = set()
        out_dir.mkdir(parents=True, exist_ok=True)
        identities = []
        self._files: list[_Files] = []
        for gpu in gpus:
            d = gpu.device
            identities.append(
                {
                    "index": d.index,
                    "uuid": d.uid,
                    "name": d.name,
                    "memory_total_bytes": d.memory_total_bytes,
                    "power_limit_mw": round(d.power_limit_w * 1000) if d.power_limit_w else None,
                }
            )
            device = (out_dir / device_csv_name(d.index)).open("w", newline="")
            writer = csv.writer(device, lineterminator="\n")
            writer.writerow(DEVICE_COLUMNS)
            processes = (out_dir / processes_name(d.index)).open("w")
            self._files.append(_Files(gpu, device, writer, processes))
        (out_dir / DEVICES_JSON).write_text(json.dumps(identities, indent=1) + "\n")

    def _ask(self, call: Any, *args: Any) -> Any:
        """A value to record, or None (an empty cell); what NVML refuses is a warning, once."""
        return nvml_query(call, *args, level=logging.WARNING)

    def sample(self, now: float, targets: Mapping[int, Target] | None = None) -> None:
        # NVML names the processes itself; discovery's targets are not needed.
        try:
            self._sample(now)
        except Exception:  # a full disk or a bug must not stop the other recorders
            if "write" not in self._warned:
                self._warned.add("write")
                log.exception("recording NVML failed")

    def _due(self, now: float, last: float | None, period: float) -> bool:
        """On a grid of ``period`` from the first sample, so the rate is exact on average."""
        return last is None or now >= last + period - 1e-6

    def _sample(self, now: float) -> None:
        nvml = self._nvml
        counter = self._due(now, self._last_counter, self._counter_s)
        process = self._due(now, self._last_process, self._process_s)
        if counter:
            c = self._last_counter
            self._last_counter = (
                now if c is None or now > c + 2 * self._counter_s else (c + self._counter_s)
            )
        if process:
            p = self._last_process
            if p is None:  # the first line holds the samples of one period, not all history
                for f in self._files:
                    f.last_seen = max(f.last_seen, int((now - self._process_s) * 1e6))
            self._last_process = (
                now if p is None or now > p + 2 * self._process_s else (p + self._process_s)
            )
        for f in self._files:
            h = f.gpu.handle
            energy = self._ask(nvml.nvmlDeviceGetTotalEnergyConsumption, h) if counter else None
            fields = self._ask(nvml.nvmlDeviceGetFieldValues, h, [pynvml.NVML_FI_DEV_POWER_INSTANT])
            instant = (
                fields[0].value.uiVal
                if fields is not None and fields[0].nvmlReturn == pynvml.NVML_SUCCESS
                else None
            )
            util = self._ask(nvml.nvmlDeviceGetUtilizationRates, h)
            f.writer.writerow(
                [
                    repr(now),
                    "" if energy is None else energy,
                    _cell(self._ask(nvml.nvmlDeviceGetPowerUsage, h)),
                    _cell(instant),
                    "" if util is None else util.gpu,
                    "" if util is None else util.memory,
                    _cell(self._ask(nvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM)),
                ]
            )
            if process:
                f.processes.write(json.dumps(self._process_line(f, now)) + "\n")

    def _process_line(self, f: _Files, now: float) -> dict[str, Any]:
        h = f.gpu.handle
        line: dict[str, Any] = {"t": now}
        try:
            samples = self._nvml.nvmlDeviceGetProcessUtilization(h, f.last_seen)
        except pynvml.NVMLError as e:
            line["error"] = f"{type(e).__name__}: {e}"
        else:
            line["samples"] = [
                [s.pid, s.smUtil, s.memUtil, s.encUtil, s.decUtil, s.timeStamp] for s in samples
            ]
            f.last_seen = max([f.last_seen, *(int(s.timeStamp) for s in samples)])
        procs = self._ask(self._nvml.nvmlDeviceGetComputeRunningProcesses, h)
        line["procs"] = [[p.pid, p.usedGpuMemory] for p in procs or ()]
        return line

    def close(self) -> None:
        for f in self._files:
            f.device.close()
            f.processes.close()
        self._files = []
        if self._owns_init:
            self._owns_init = False
            nvml_query(self._nvml.nvmlShutdown, level=logging.INFO)


def _cell(value: int | None) -> str | int:
    return "" if value is None else value

"""An NVML stand-in that answers from a recorded trace, and the replay meter.

``NvmlStandIn`` looks like the pynvml module for the functions the meter, the
device listing and the recorder call, and answers at ``clock.now`` on the
trace's own clock. It returns pynvml's own ctypes structures
(``c_nvmlFieldValue_t``, ``c_nvmlProcessUtilizationSample_t``,
``c_nvmlMemory_t``, ``c_nvmlUtilization_t``) and friendly objects, and raises
pynvml's own exception classes, so the meter cannot tell it from the library.
Constants and exception classes (``NVML_*``, ``NVMLError*``) are pynvml's.

What it answers, from the rows of nvml_trace:

- the energy counter: the last recorded value at or before now (rows with an
  empty energy cell are skipped: the serving fixture fills every second row,
  and the counter itself only moves every ~100 ms);
- power, utilisation, clocks: the row at or before now (the first row before
  the trace starts);
- process utilisation: the samples of the process rows recorded at or before
  now whose timestamp is newer than ``lastSeen``; NotFound when there are
  none, or the row's recorded error when it was another. A sample is visible
  from the time its row was recorded, not from its own timestamp, which runs
  on NVML's clock and was seen up to 185 ms earlier and 15 ms later;
- context holders: the ``procs`` of the row at or before now.
- compute capability and power-limit constraints, which the traces do not
  record: from a small table by product name (``PRODUCTS``), NotSupported
  for a product not in it.

MIG is not in the recordings; ``mig`` configures instances over a recorded
GPU, and the stand-in then behaves as NVML documents for MIG mode: energy,
power and utilisation only on the physical GPU, no per-process utilisation,
and each instance listing its own processes.

Failures are injected with ``fail(function, error_class, index=None)``; the
name ``"NVML_FI_DEV_POWER_INSTANT"`` fails that field inside a successful
``nvmlDeviceGetFieldValues`` call, as NVML reports an unsupported field.

``ReplayNvmlMeter`` is the NvmlMeter over a stand-in. Before each read it
sets the clock to every recorded row time since the previous read (device
rows at 20-50 Hz, process rows at 5 Hz) and polls there: the recording's own
sampling stands in for the live poller thread, and nothing recorded between
two reads is missed. Then it sets the clock to ``now`` and reads, so a
replay driver only calls ``read(now, targets)``. At the trace's last time it
reads the counter whatever its period, since no later read will come.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml

from infermeter.plugins.nvml.devices import open_gpus
from infermeter.plugins.nvml.meter import NvmlMeter
from infermeter.plugins.nvml.trace import (
    DeviceTrace,
    Identity,
    ProcessRow,
    Sample,
    device_csv_name,
    device_indices,
    processes_name,
    read_device_csv,
    read_identity,
    read_processes,
)
from infermeter.records import Reading, Target

MIG_SLOTS = 7  # an H100 offers up to seven instances

# What the traces do not record per GPU, answered by product name: (substring
# of the name, CUDA compute capability, power-limit constraints in mW). The
# H100 figures are what NVML said on the fixtures' card (nvml_api.json:
# nvmlDeviceGetCudaComputeCapability (9, 0),
# nvmlDeviceGetPowerManagementLimitConstraints [200000, 700000]).
PRODUCTS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    ("H100", (9, 0), (200_000, 700_000)),
)


def _product(name: str) -> tuple[tuple[int, int], tuple[int, int]] | None:
    for needle, capability, constraints in PRODUCTS:
        if needle.lower() in name.lower():
            return capability, constraints
    return None


class Clock:
    """The stand-in's notion of now, advanced by whoever drives the replay."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now


@dataclass(frozen=True, slots=True)
class MigInstance:
    uuid: str
    name: str
    memory_total_bytes: int
    pids: frozenset[int]


@dataclass(frozen=True, slots=True)
class Handle:
    gpu: int
    mig: int | None = None


class ReplayGpu:
    """One recorded GPU, indexed for answers at any time."""

    def __init__(
        self,
        identity: Identity,
        trace: DeviceTrace,
        rows: Sequence[ProcessRow],
        mig: Sequence[MigInstance] = (),
    ) -> None:
        self.identity = identity
        self.trace = trace
        self.rows = list(rows)
        self.row_t = [r.t for r in self.rows]
        self.mig = tuple(mig)
        self.visible: list[float] = []  # when each sample was recorded
        self.samples: list[Sample] = []
        for r in self.rows:
            for s in r.samples:
                self.visible.append(r.t)
                self.samples.append(s)
        stamps = [s[5] for s in self.samples]
        self.monotonic = all(a < b for a, b in itertools.pairwise(stamps))

    def row(self, now: float) -> int:
        """Index of the device row at or before now (the first row before the trace)."""
        return max(bisect.bisect_right(self.trace.t, now) - 1, 0)

    def process_row(self, now: float) -> ProcessRow | None:
        i = bisect.bisect_right(self.row_t, now) - 1
        return self.rows[i] if i >= 0 else None

    def samples_since(self, last_seen: int, now: float) -> list[Sample]:
        hi = bisect.bisect_right(self.visible, now)
        if not self.monotonic:
            return [s for s in self.samples[:hi] if s[5] > last_seen]
        lo = hi
        while lo > 0 and self.samples[lo - 1][5] > last_seen:
            lo -= 1
        return self.samples[lo:hi]


class NvmlStandIn:
    """The pynvml functions the meter uses, answered from recorded rows."""

    def __init__(self, gpus: Sequence[ReplayGpu], clock: Clock | None = None) -> None:
        self.gpus = list(gpus)
        self.clock = clock or Clock(self.start_t)
        self.init_count = 0
        self.shutdown_count = 0
        self.calls: Counter[str] = Counter()  # calls per function, to check what costs
        self._faults: dict[tuple[str, int | None], type[pynvml.NVMLError]] = {}
        times = sorted({t for g in self.gpus for t in (*g.trace.t, *g.row_t)})
        self._times = times

    @classmethod
    def from_trace(
        cls, trace_dir: Path, mig: Mapping[int, Sequence[MigInstance]] | None = None
    ) -> NvmlStandIn:
        gpus = []
        for i in device_indices(trace_dir):
            trace = read_device_csv(trace_dir / device_csv_name(i))
            if not trace.t:  # nothing readable (a partial replay goes on without it)
                continue
            gpus.append(
                ReplayGpu(
                    read_identity(trace_dir, i),
                    trace,
                    read_processes(trace_dir / processes_name(i)),
                    (mig or {}).get(i, ()),
                )
            )
        return cls(gpus)

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML_", "NVMLError")):
            return getattr(pynvml, name)
        raise AttributeError(f"the NVML stand-in does not implement {name}")

    @property
    def start_t(self) -> float:
        return min((g.trace.t[0] for g in self.gpus if g.trace.t), default=0.0)

    @property
    def end_t(self) -> float:
        return max((g.trace.t[-1] for g in self.gpus if g.trace.t), default=0.0)

    def poll_times(self, after: float, before: float) -> list[float]:
        """Recorded row times strictly between two reads: where a poller would have run."""
        lo = bisect.bisect_right(self._times, after)
        hi = bisect.bisect_left(self._times, before)
        return self._times[lo:hi]

    # -- failures ----------------------------------------------------------

    def fail(self, function: str, error: type[pynvml.NVMLError], index: int | None = None) -> None:
        """Make ``function`` ("*": every device call) raise ``error`` (on GPU ``index``)."""
        self._faults[(function, index)] = error

    def heal(self) -> None:
        self._faults.clear()

    def _check(self, function: str, handle: Handle | None = None) -> None:
        self.calls[function] += 1
        index = handle.gpu if handle is not None else None
        for key in ((function, index), (function, None), ("*", index), ("*", None)):
            error = self._faults.get(key)
            if error is not None and (handle is not None or key[0] != "*"):
                raise error()

    def _gpu(self, function: str, handle: Handle) -> ReplayGpu:
        self._check(function, handle)
        return self.gpus[handle.gpu]

    # -- library -----------------------------------------------------------

    def nvmlInit(self) -> None:
        self._check("nvmlInit")
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.shutdown_count += 1

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle:
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError_InvalidArgument()
        handle = Handle(index)
        self._check("nvmlDeviceGetHandleByIndex", handle)
        return handle

    # -- identity ------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: Handle) -> str:
        gpu = self._gpu("nvmlDeviceGetName", handle)
        return gpu.mig[handle.mig].name if handle.mig is not None else gpu.identity.name

    def nvmlDeviceGetUUID(self, handle: Handle) -> str:
        gpu = self._gpu("nvmlDeviceGetUUID", handle)
        return gpu.mig[handle.mig].uuid if handle.mig is not None else gpu.identity.uuid

    def nvmlDeviceGetMemoryInfo(self, handle: Handle, version: int | None = None) -> Any:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        total = (
            gpu.mig[handle.mig].memory_total_bytes
            if handle.mig is not None
            else gpu.identity.memory_total_bytes
        )
        if total is None:
            raise pynvml.NVMLError_NotSupported()
        used = sum(p.usedGpuMemory or 0 for p in self.nvmlDeviceGetComputeRunningProcesses(handle))
        return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)

    def nvmlDeviceGetPowerManagementLimit(self, handle: Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetPowerManagementLimit", handle)
        if handle.mig is not None or gpu.identity.power_limit_mw is None:
            raise pynvml.NVMLError_NotSupported()
        return gpu.identity.power_limit_mw

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: Handle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        known = _product(gpu.identity.name)
        if handle.mig is not None or known is None:
            raise pynvml.NVMLError_NotSupported()
        return list(known[1])

    def nvmlDeviceGetCudaComputeCapability(self, handle: Handle) -> tuple[int, int]:
        gpu = self._gpu("nvmlDeviceGetCudaComputeCapability", handle)
        known = _product(gpu.identity.name)
        if known is None:
            raise pynvml.NVMLError_NotSupported()
        return known[0]

    # -- MIG -------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, handle: Handle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetMigMode", handle)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetMaxMigDeviceCount", handle)
        return MIG_SLOTS if gpu.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Handle, index: int) -> Handle:
        gpu = self._gpu("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if not gpu.mig:
            raise pynvml.NVMLError_InvalidArgument()
        if not 0 <= index < len(gpu.mig):
            raise pynvml.NVMLError_NotFound()
        return Handle(handle.gpu, index)

    def nvmlDeviceIsMigDeviceHandle(self, handle: Handle) -> int:
        self._check("nvmlDeviceIsMigDeviceHandle", handle)
        return int(handle.mig is not None)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Handle) -> Handle:
        self._check("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
        return Handle(handle.gpu)

    # -- energy and power --------------------------------------------------------

    def _physical(self, function: str, handle: Handle) -> ReplayGpu:
        """A GPU-wide figure: NVML gives it for the physical GPU only."""
        gpu = self._gpu(function, handle)
        if handle.mig is not None:
            raise pynvml.NVMLError_NotSupported()
        return gpu

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Handle) -> int:
        trace = self._physical("nvmlDeviceGetTotalEnergyConsumption", handle).trace
        if not trace.energy_t:
            raise pynvml.NVMLError_NotSupported()
        i = max(bisect.bisect_right(trace.energy_t, self.clock.now) - 1, 0)
        return trace.energy_mj[i]

    def _column(self, function: str, handle: Handle, column: str) -> int:
        gpu = self._physical(function, handle)
        value: int | None = getattr(gpu.trace, column)[gpu.row(self.clock.now)]
        if value is None:
            raise pynvml.NVMLError_NotSupported()
        return value

    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int:
        return self._column("nvmlDeviceGetPowerUsage", handle, "power_mw")

    def nvmlDeviceGetFieldValues(self, handle: Handle, fieldIds: Sequence[Any]) -> Any:
        """Per-field results, as NVML gives them: an unsupported field sets its nvmlReturn."""
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        for fv, field_id in zip(values, fieldIds, strict=True):
            fv.fieldId = field_id if isinstance(field_id, int) else field_id[0]
            fv.timestamp = int(self.clock.now * 1e6)
            fv.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            power = gpu.trace.power_instant_mw[gpu.row(self.clock.now)]
            injected = self._faults.get(("NVML_FI_DEV_POWER_INSTANT", handle.gpu)) or (
                self._faults.get(("NVML_FI_DEV_POWER_INSTANT", None))
            )
            if fv.fieldId != pynvml.NVML_FI_DEV_POWER_INSTANT or handle.mig is not None:
                fv.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            elif injected is not None:
                fv.nvmlReturn = injected().value
            elif power is None:
                fv.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
            else:
                fv.nvmlReturn = pynvml.NVML_SUCCESS
                fv.value.uiVal = power
        return values

    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        if gpu.mig:  # not supported in MIG mode, on the GPU or an instance
            raise pynvml.NVMLError_NotSupported()
        i = gpu.row(self.clock.now)
        util, mem = gpu.trace.util_gpu[i], gpu.trace.util_mem[i]
        if util is None or mem is None:
            raise pynvml.NVMLError_NotSupported()
        return pynvml.c_nvmlUtilization_t(gpu=util, memory=mem)

    def nvmlDeviceGetClockInfo(self, handle: Handle, type: int) -> int:
        if type != pynvml.NVML_CLOCK_SM:
            raise pynvml.NVMLError_NotSupported()
        return self._column("nvmlDeviceGetClockInfo", handle, "sm_mhz")

    # -- processes -------------------------------------------------------------

    def nvmlDeviceGetProcessUtilization(self, handle: Handle, timeStamp: int) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetProcessUtilization", handle)
        if gpu.mig:
            raise pynvml.NVMLError_NotSupported()
        found = gpu.samples_since(int(timeStamp), self.clock.now)
        if not found:
            row = gpu.process_row(self.clock.now)
            recorded = (row.error or "").split(":", 1)[0] if row is not None else ""
            error = getattr(pynvml, recorded, None) if recorded.startswith("NVMLError_") else None
            raise (error or pynvml.NVMLError_NotFound)()
        return [
            pynvml.c_nvmlProcessUtilizationSample_t(
                pid=pid, timeStamp=ts, smUtil=sm, memUtil=mem, encUtil=enc, decUtil=dec
            )
            for pid, sm, mem, enc, dec, ts in found
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        row = gpu.process_row(self.clock.now)
        procs = row.procs if row is not None else ()
        mine = gpu.mig[handle.mig].pids if handle.mig is not None else None
        none = 0xFFFFFFFF  # NVML's "no instance" on a GPU without MIG
        return [
            pynvml.nvmlFriendlyObject(
                {"pid": pid, "usedGpuMemory": mem, "gpuInstanceId": none, "computeInstanceId": none}
            )
            for pid, mem in procs
            if mine is None or pid in mine
        ]


class ReplayNvmlMeter(NvmlMeter):
    """The live meter's code over a stand-in, driven by the trace's own times."""

    def __init__(self, standin: NvmlStandIn, counter_period_s: float = 1.0) -> None:
        standin.nvmlInit()
        super().__init__(
            standin, open_gpus(standin), counter_period_s, clock=lambda: standin.clock.now
        )
        self.standin = standin
        self._previous: float | None = None

    def read(self, now: float, targets: Mapping[int, Target] | None = None) -> list[Reading]:
        clock = self.standin.clock
        if self._previous is not None:
            for t in self.standin.poll_times(self._previous, now):
                clock.now = t
                self.poll(t)
        clock.now = now
        self._previous = now if self._previous is None else max(self._previous, now)
        return self._read(now, force_counter=now >= self.standin.end_t)

"""Finding the GPUs NVML knows and describing each as a records.Device, once.

The ``nvml`` argument is the pynvml module live, or the replay stand-in
(infermeter.plugins.nvml.replay): only pynvml's own function names are used.

Baselines (what a GPU draws with nothing on it, and the extra while a CUDA
context is merely held) come from a small table by product name, measured
where we have a measurement, else from a fraction of the power limit. The
agent may learn better baselines from quiet windows; these are its defaults.

MIG: when a GPU runs in MIG mode each instance is metered as its own Device
(uuid of the instance, ``parent_uid`` the physical GPU). NVML reports energy
and power only for the physical GPU, so each instance is allocated the GPU's
energy in proportion to its memory (its slice size) among the instances that
exist: an allocation by capacity held, not a measurement, and every MIG
reading's note says so. The instances are listed once at start-up; after a
repartition the agent must be restarted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pynvml

from infermeter.plugins.nvml.query import nvml_query
from infermeter.records import Device, DeviceKind

log = logging.getLogger("infermeter.plugins.nvml")

# (substring of the product name, bare idle W, extra W while a context is held)
# H100 SXM5 80GB: measured on the shared fixtures (driver 580): 70 W with no
# context, 118-120 W while a process merely holds one.
BASELINES: tuple[tuple[str, float, float], ...] = (
    ("H100 80GB HBM3", 70.0, 48.0),
    ("H100 SXM", 70.0, 48.0),
)
# Any other GPU: the H100 measurement as fractions of its 700 W limit. A
# guess that scales with the board; a card with no known limit gets none.
GENERIC_IDLE_FRACTION = 0.10
GENERIC_KEEPWARM_FRACTION = 0.07


def baseline_for(name: str, power_limit_w: float | None) -> tuple[float | None, float | None]:
    """Default (idle W, keep-warm W) for a product name, or from its power limit."""
    for needle, idle, keepwarm in BASELINES:
        if needle.lower() in name.lower():
            return idle, keepwarm
    if power_limit_w:
        return power_limit_w * GENERIC_IDLE_FRACTION, power_limit_w * GENERIC_KEEPWARM_FRACTION
    return None, None


@dataclass(frozen=True, slots=True)
class View:
    """One accounting unit: a whole GPU, or one MIG instance of it."""

    handle: Any
    device: Device
    fraction: float = 1.0  # its share of the physical GPU's energy


@dataclass(frozen=True, slots=True)
class Gpu:
    """A physical GPU: the handle energy and power are read from, and its views."""

    handle: Any
    device: Device
    views: tuple[View, ...]

    @property
    def mig(self) -> bool:
        return self.views[0].device.parent_uid is not None


def describe(nvml: Any, handle: Any, index: int) -> Device:
    """The Device record of one GPU (or MIG instance) handle."""
    name = str(nvml.nvmlDeviceGetName(handle))
    uuid = str(nvml.nvmlDeviceGetUUID(handle))
    # What a GPU does not say is left unknown (None), and said once at INFO.
    memory = nvml_query(nvml.nvmlDeviceGetMemoryInfo, handle, level=logging.INFO)
    limit_mw = nvml_query(nvml.nvmlDeviceGetPowerManagementLimit, handle, level=logging.INFO)
    limit_w = limit_mw / 1000.0 if limit_mw else None
    idle, keepwarm = baseline_for(name, limit_w)
    capability = nvml_query(nvml.nvmlDeviceGetCudaComputeCapability, handle, level=logging.INFO)
    # The range a power cap may be set in: power-cap advice stays inside it.
    constraints = nvml_query(
        nvml.nvmlDeviceGetPowerManagementLimitConstraints, handle, level=logging.INFO
    )
    low_w, high_w = (c / 1000.0 for c in constraints) if constraints else (None, None)
    return Device(
        uid=uuid,
        kind=DeviceKind.GPU,
        name=name,
        index=index,
        memory_total_bytes=int(memory.total) if memory is not None else None,
        power_limit_w=limit_w,
        idle_power_w=idle,
        keepwarm_power_w=keepwarm,
        compute_capability=(int(capability[0]), int(capability[1])) if capability else None,
        min_power_limit_w=low_w,
        max_power_limit_w=high_w,
    )


def _scaled(watts: float | None, fraction: float) -> float | None:
    return None if watts is None else watts * fraction


def mig_views(nvml: Any, handle: Any, parent: Device) -> tuple[View, ...]:
    """The MIG instances of a GPU in MIG mode, or () when it is not (or NVML cannot say)."""
    mode = nvml_query(nvml.nvmlDeviceGetMigMode, handle)  # NotSupported without MIG: common
    if mode is None or mode[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
        return ()
    found: list[tuple[Any, str, str, int]] = []
    try:
        for slot in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError_NotFound:
                continue  # an empty slot
            memory = nvml.nvmlDeviceGetMemoryInfo(mig)
            found.append(
                (
                    mig,
                    str(nvml.nvmlDeviceGetUUID(mig)),
                    str(nvml.nvmlDeviceGetName(mig)),
                    int(memory.total),
                )
            )
    except pynvml.NVMLError as e:
        log.warning(
            "GPU %s is in MIG mode but its instances cannot be listed (%s); metering the whole GPU",
            parent.uid,
            e,
        )
        return ()
    total = sum(mem for *_, mem in found)
    views = []
    for slot, (mig, uuid, name, mem) in enumerate(found):
        fraction = mem / total if total > 0 else 1.0 / len(found)
        device = Device(
            uid=uuid,
            kind=DeviceKind.GPU,
            name=name,
            index=slot,
            memory_total_bytes=mem,
            power_limit_w=_scaled(parent.power_limit_w, fraction),
            idle_power_w=_scaled(parent.idle_power_w, fraction),
            keepwarm_power_w=_scaled(parent.keepwarm_power_w, fraction),
            parent_uid=parent.uid,
            compute_capability=parent.compute_capability,  # a slice of the same chip
        )
        views.append(View(mig, device, fraction))
    return tuple(views)


def open_gpus(nvml: Any) -> list[Gpu]:
    """Every GPU NVML lists, each with its views; a GPU that cannot be described is skipped."""
    gpus: list[Gpu] = []
    for index in range(int(nvml.nvmlDeviceGetCount())):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            device = describe(nvml, handle, index)
        except pynvml.NVMLError as e:
            log.warning(
                "GPU %d skipped: NVML cannot describe it (%s: %s)", index, type(e).__name__, e
            )
            continue
        views = mig_views(nvml, handle, device) or (View(handle, device),)
        gpus.append(Gpu(handle, device, views))
    return gpus

"""One row per device and flush window: energy, how busy, memory held.

Shares say who used the energy; this says what the device itself did in the
same window, which is what utilisation-based advice (right-size, power cap)
and the live view need. Readings are summarised with the same window bounds
as the shares they produced.
"""

from __future__ import annotations

from collections.abc import Iterable

from infermeter.records import DeviceWindowRecord, Method, Reading

_WEAKNESS = {Method.MEASURED: 0, Method.INTEGRATED: 1, Method.ESTIMATED: 2}


def summarise(readings: Iterable[Reading]) -> list[DeviceWindowRecord]:
    by_device: dict[str, list[Reading]] = {}
    for r in readings:
        by_device.setdefault(r.device.uid, []).append(r)
    out = []
    for uid, group in by_device.items():
        known = [r for r in group if r.busy_fraction is not None and r.duration_s > 0]
        weight = sum(r.duration_s for r in known)
        busy = (
            sum((r.busy_fraction or 0.0) * r.duration_s for r in known) / weight
            if weight > 0
            else None
        )
        memory = [r.memory_used_bytes for r in group if r.memory_used_bytes is not None]
        out.append(
            DeviceWindowRecord(
                device_uid=uid,
                t0=min(r.t0 for r in group),
                t1=max(r.t1 for r in group),
                energy_j=sum(r.energy_j for r in group),
                method=max((r.method for r in group), key=lambda m: _WEAKNESS[m]),
                busy_fraction=busy,
                memory_used_bytes=max(memory) if memory else None,
            )
        )
    return out

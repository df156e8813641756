"""The recommenders' reads of the store: one host, one window, plain rows out.

Every read filters on the host and the time range and returns small plain
structures (flush windows summed per device, device windows, targets) or a
stream (the calls, in order of start), so the shaping in recommend_build
and recommend_calls never touches SQL.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select, true

from infermeter.recommend.calls import add_cost
from infermeter.recommend.rows import CallRow
from infermeter.recommend.stats import DeviceInfo, DeviceSample, Prices, Window
from infermeter.records import Device, DeviceKind, PriceCard
from infermeter.store.models import (
    DeviceRow,
    DeviceWindow,
    ModelRow,
    RequestRow,
    TargetRow,
    UsageShare,
)

# A target whose active energy in a flush window is at least this share of
# the window's active energy counts as running there (time-sharing test).
SHARED_MIN_FRACTION = 0.05


@dataclass
class ShareWindow:
    """One device's shares in one flush window, summed by what recommenders ask."""

    t0: float
    t1: float
    energy_j: float = 0.0
    cost_usd: float | None = 0.0
    energy_cost_usd: float | None = 0.0
    idle_j: float = 0.0
    idle_cost_usd: float | None = 0.0
    keepwarm: dict[int, tuple[float, float | None]] = field(default_factory=dict)
    active: dict[int, float] = field(default_factory=dict)  # target id -> J
    by_target: dict[int, tuple[float, float | None]] = field(default_factory=dict)


def share_cost(energy_cost: float | None, capacity_cost: float | None) -> float | None:
    return add_cost(energy_cost, capacity_cost)


def prices_at(card: PriceCard | None, t0: float, t1: float) -> Prices:
    if card is None:
        return Prices()
    return Prices(
        currency=card.currency,
        per_kwh=card.electricity_at((t0 + t1) / 2),
        pue=card.pue,
        carbon_g_per_kwh=card.carbon_g_per_kwh,
        cpu_core_hour=card.cpu_core_hour,
        card=card,
    )


def capability(text: str | None) -> tuple[int, int] | None:
    if not text or "." not in text:
        return None
    major, minor = text.split(".", 1)
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def read_devices(
    conn: Connection,
    host_id: int,
    host: str,
    card: PriceCard | None,
    live: Mapping[str, Device],
) -> dict[int, DeviceInfo]:
    out: dict[int, DeviceInfo] = {}
    for r in conn.execute(select(DeviceRow).where(DeviceRow.host_id == host_id)):
        now = live.get(r.uid)
        try:
            kind = DeviceKind(r.kind)
        except ValueError:
            kind = DeviceKind.GPU
        record = Device(uid=r.uid, kind=kind, name=r.name, cores=r.cores)
        out[r.id] = DeviceInfo(
            uid=r.uid,
            kind=r.kind,
            name=r.name,
            host=host,
            memory_total_bytes=r.memory_total_bytes,
            power_limit_w=r.power_limit_w,
            min_power_limit_w=now.min_power_limit_w if now else None,
            max_power_limit_w=now.max_power_limit_w if now else None,
            compute_capability=capability(r.compute_capability)
            or (now.compute_capability if now else None),
            idle_power_w=r.idle_power_w,
            keepwarm_power_w=r.keepwarm_power_w,
            cores=r.cores,
            hourly_usd=card.hourly_rate(record) if card is not None else None,
        )
    return out


def read_share_windows(
    conn: Connection, host_id: int, window: Window
) -> dict[int, list[ShareWindow]]:
    """Per device, its flush windows in time order with the buckets summed."""
    q = select(
        UsageShare.device_id,
        UsageShare.t0,
        UsageShare.t1,
        UsageShare.target_id,
        UsageShare.bucket,
        UsageShare.energy_j,
        UsageShare.energy_cost,
        UsageShare.capacity_cost,
    ).where(UsageShare.host_id == host_id, UsageShare.t0 >= window.t0, UsageShare.t0 < window.t1)
    by_key: dict[tuple[int, float], ShareWindow] = {}
    for r in conn.execute(q):
        w = by_key.setdefault((r.device_id, r.t0), ShareWindow(r.t0, r.t1))
        w.t1 = max(w.t1, r.t1)
        cost = share_cost(r.energy_cost, r.capacity_cost)
        w.energy_j += r.energy_j
        w.cost_usd = add_cost(w.cost_usd, cost)
        w.energy_cost_usd = add_cost(w.energy_cost_usd, r.energy_cost)
        if r.bucket == "idle":
            w.idle_j += r.energy_j
            w.idle_cost_usd = add_cost(w.idle_cost_usd, cost)
        if r.target_id is None:
            continue
        e, c = w.by_target.get(r.target_id, (0.0, 0.0))
        w.by_target[r.target_id] = (e + r.energy_j, add_cost(c, cost))
        if r.bucket == "keepwarm":
            e, c = w.keepwarm.get(r.target_id, (0.0, 0.0))
            w.keepwarm[r.target_id] = (e + r.energy_j, add_cost(c, cost))
        elif r.bucket == "active":
            w.active[r.target_id] = w.active.get(r.target_id, 0.0) + r.energy_j
    out: dict[int, list[ShareWindow]] = defaultdict(list)
    for (device_id, _), w in sorted(by_key.items()):
        out[device_id].append(w)
    return out


def read_samples(conn: Connection, host_id: int, window: Window) -> dict[int, list[DeviceSample]]:
    q = (
        select(
            DeviceWindow.device_id,
            DeviceWindow.t0,
            DeviceWindow.t1,
            DeviceWindow.energy_j,
            DeviceWindow.busy_fraction,
            DeviceWindow.memory_used_bytes,
        )
        .where(
            DeviceWindow.host_id == host_id,
            DeviceWindow.t0 >= window.t0,
            DeviceWindow.t0 < window.t1,
        )
        .order_by(DeviceWindow.device_id, DeviceWindow.t0)
    )
    out: dict[int, list[DeviceSample]] = defaultdict(list)
    for r in conn.execute(q):
        out[r.device_id].append(
            DeviceSample(r.t0, r.t1, r.energy_j, r.busy_fraction, r.memory_used_bytes)
        )
    return out


@dataclass(frozen=True, slots=True)
class TargetInfo:
    id: int
    pid: int
    start_time: float
    framework: str
    model: str | None


def read_targets(conn: Connection, host_id: int) -> dict[int, TargetInfo]:
    q = select(
        TargetRow.id, TargetRow.pid, TargetRow.start_time, TargetRow.framework, TargetRow.labels
    ).where(TargetRow.host_id == host_id)
    out = {}
    for r in conn.execute(q):
        labels = r.labels or {}
        out[r.id] = TargetInfo(r.id, r.pid, r.start_time, r.framework, labels.get("model"))
    return out


def home_devices(
    conn: Connection, host_id: int, t0: float, t1: float
) -> dict[tuple[int, int], int]:
    """(target, model) -> the device that gave it most active energy."""
    q = (
        select(
            UsageShare.target_id,
            UsageShare.model_id,
            UsageShare.device_id,
            func.sum(UsageShare.energy_j),
        )
        .where(
            UsageShare.host_id == host_id,
            UsageShare.bucket == "active",
            UsageShare.target_id.is_not(None),
            UsageShare.model_id.is_not(None),
            UsageShare.t0 >= t0,
            UsageShare.t0 < t1 if math.isfinite(t1) else true(),
        )
        .group_by(UsageShare.target_id, UsageShare.model_id, UsageShare.device_id)
    )
    best: dict[tuple[int, int], tuple[float, int]] = {}
    for target_id, model_id, device_id, energy in conn.execute(q):
        key = (int(target_id or 0), int(model_id or 0))  # both filtered non-null
        if key not in best or float(energy or 0.0) > best[key][0]:
            best[key] = (float(energy or 0.0), int(device_id))
    return {k: d for k, (_, d) in best.items()}


def read_calls(conn: Connection, host_id: int, t0: float, t1: float) -> Iterator[CallRow]:
    """The calls of [t0, t1), streamed in order of start."""
    q = (
        select(
            RequestRow.target_id,
            RequestRow.model_id,
            RequestRow.t0,
            RequestRow.t1,
            RequestRow.items,
            RequestRow.tags,
            RequestRow.energy_j,
            RequestRow.energy_cost,
            RequestRow.capacity_cost,
            RequestRow.carbon_g,
            ModelRow.name,
            ModelRow.dtype,
            ModelRow.framework,
            ModelRow.parameters,
            TargetRow.framework.label("target_framework"),
            TargetRow.pid,
        )
        .join(TargetRow, TargetRow.id == RequestRow.target_id)
        .join(ModelRow, ModelRow.id == RequestRow.model_id)
        .where(
            TargetRow.host_id == host_id,
            RequestRow.t0 >= t0,
            RequestRow.t0 < t1 if math.isfinite(t1) else true(),
        )
        .order_by(RequestRow.t0)
        .execution_options(yield_per=10_000)
    )
    for r in conn.execute(q):
        yield CallRow.from_row(r)


# ----- shaping ---------------------------------------------------------------


def read_activity(
    conn: Connection, host_id: int, t0: float, t1: float
) -> dict[int, list[tuple[float, list[float]]]]:
    """Per device, its flush windows over the profile range with each target's active joules."""
    q = (
        select(
            UsageShare.device_id,
            UsageShare.t0,
            UsageShare.target_id,
            func.sum(UsageShare.energy_j),
        )
        .where(
            UsageShare.host_id == host_id,
            UsageShare.bucket == "active",
            UsageShare.target_id.is_not(None),
            UsageShare.t0 >= t0,
            UsageShare.t0 < t1 if math.isfinite(t1) else true(),
        )
        .group_by(UsageShare.device_id, UsageShare.t0, UsageShare.target_id)
    )
    by_window: dict[tuple[int, float], list[float]] = defaultdict(list)
    for device_id, start, _target, energy in conn.execute(q):
        by_window[(int(device_id), float(start))].append(float(energy or 0.0))
    out: dict[int, list[tuple[float, list[float]]]] = defaultdict(list)
    for (device_id, start), energies in sorted(by_window.items()):
        out[device_id].append((start, energies))
    return out


def shared_index(
    activity: Mapping[int, list[tuple[float, list[float]]]],
) -> dict[int, tuple[list[float], list[bool]]]:
    """Per device: window starts and whether two or more targets ran in each."""
    out = {}
    for device_id, ws in activity.items():
        starts, flags = [], []
        for start, energies in ws:
            total = sum(energies)
            running = [e for e in energies if total > 0 and e >= SHARED_MIN_FRACTION * total]
            starts.append(start)
            flags.append(len(running) >= 2)
        out[device_id] = (starts, flags)
    return out

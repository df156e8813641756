"""Building the recommenders' statistics from the store, for one host and window.

Three reads (recommend_reads), all of this host: the shares (who used each device's energy in
each flush window, and what it cost), the device windows (how busy, how much
memory), and the calls (``requests``, one row per model call, or per phase
of a workload that recorded its calls in aggregate, see
``infermeter.sidecar.replay.workload_spans``). From them:

- a model deployment is (model, precision, device): the device is the one
  that gave the calls' target most of its active energy for that model;
- its per-batch-size profile (energy per item, latency per call) covers the
  profile lookback, and uses only calls made while it had the device to
  itself when there are such calls: on a time-shared GPU the split between
  processes comes from utilisation samples, an estimate the solo calls do
  not need;
- a device's gaps and a target's idle stretches are flush windows in which
  the device was held (keep-warm energy) and no call ran.

Calls are streamed through ``recommend_calls.CallPass`` in order of start,
and latency is kept in log-spaced buckets (5 % wide), so memory stays
bounded however many calls the lookback holds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping

from sqlalchemy import Engine, func, select

from infermeter.recommend.calls import CallPass, add_cost
from infermeter.recommend.reads import (
    ShareWindow,
    TargetInfo,
    home_devices,
    prices_at,
    read_activity,
    read_calls,
    read_devices,
    read_samples,
    read_share_windows,
    read_targets,
    shared_index,
)
from infermeter.recommend.stats import (
    DeviceInfo,
    DeviceSample,
    DeviceStats,
    Gap,
    IdleStretch,
    Stats,
    TargetStats,
    Window,
)
from infermeter.records import Device, PriceCard
from infermeter.store.models import Host, UsageShare

# Flush windows further apart than this do not join into one stretch.
STRETCH_JOIN_S = 1.0


def build_stats(
    engine: Engine,
    host: str,
    t0: float,
    t1: float,
    card: PriceCard | None,
    profile_t0: float | None = None,
    live_devices: Mapping[str, Device] | None = None,
    profile_t1: float | None = None,
) -> Stats:
    """The statistics of ``host`` over [t0, t1).

    Profiles (energy and latency per batch size, other precisions of the same
    model) cover [``profile_t0``, ``profile_t1``): by default from ``t0`` to
    the newest call stored, so a deployment is judged on all it has shown.
    """
    with engine.connect() as conn:
        host_id = conn.execute(select(Host.id).where(Host.name == host)).scalar_one_or_none()
        if host_id is None:
            return Stats(host, Window(t0, t0), prices_at(card, t0, t0))
        bounds = conn.execute(
            select(func.min(UsageShare.t0), func.max(UsageShare.t1)).where(
                UsageShare.host_id == host_id, UsageShare.t0 >= t0, UsageShare.t0 < t1
            )
        ).one()
        if bounds[0] is None:
            return Stats(host, Window(t0, t0), prices_at(card, t0, t0))
        window = Window(float(bounds[0]), float(bounds[1]))
        prices = prices_at(card, window.t0, window.t1)
        devices = read_devices(conn, host_id, host, card, live_devices or {})
        windows = read_share_windows(conn, host_id, window)
        samples = read_samples(conn, host_id, window)
        targets = read_targets(conn, host_id)
        home = home_devices(
            conn,
            host_id,
            min(profile_t0, t0) if profile_t0 is not None else t0,
            profile_t1 if profile_t1 is not None else math.inf,
        )
        p0 = min(profile_t0, t0) if profile_t0 is not None else t0
        p1 = profile_t1 if profile_t1 is not None else math.inf
        shared = shared_index(read_activity(conn, host_id, p0, p1))
        calls = CallPass(devices, windows, shared, window)
        for call in read_calls(conn, host_id, p0, p1):
            calls.add(call, home.get((call.target_id, call.model_id)))
    models = calls.models(samples)
    device_stats = _device_stats(devices, windows, samples, calls, targets)
    target_stats = _target_stats(devices, windows, calls, targets)
    return Stats(host, window, prices, models, device_stats, target_stats)


# ----- reads -----------------------------------------------------------------


def _device_stats(
    devices: Mapping[int, DeviceInfo],
    windows: Mapping[int, list[ShareWindow]],
    samples: Mapping[int, list[DeviceSample]],
    calls: CallPass,
    targets: Mapping[int, TargetInfo],
) -> tuple[DeviceStats, ...]:
    out = []
    for device_id, info in devices.items():
        ws = windows.get(device_id, [])
        if not ws:
            continue
        served = calls.device_busy.get(device_id, [])
        held = [w for w in ws if w.keepwarm and not _touches(served, w.t0, w.t1)]
        gaps = [_gap(group, targets) for group in _groups(held)]
        cost: float | None = 0.0
        energy_cost: float | None = 0.0
        for w in ws:
            cost = add_cost(cost, w.cost_usd)
            energy_cost = add_cost(energy_cost, w.energy_cost_usd)
        out.append(
            DeviceStats(
                info=info,
                samples=tuple(samples.get(device_id, [])),
                energy_j=sum(w.energy_j for w in ws),
                cost_usd=cost,
                energy_cost_usd=energy_cost,
                idle_j=sum(w.idle_j for w in ws),
                keepwarm_j=sum(e for w in ws for e, _ in w.keepwarm.values()),
                active_j=sum(sum(w.active.values()) for w in ws),
                gaps=tuple(gaps),
            )
        )
    return tuple(out)


def _touches(union: list[tuple[float, float]], t0: float, t1: float) -> bool:
    """Whether any interval of a sorted, disjoint union meets [t0, t1)."""
    i = max(bisect.bisect_left(union, (t0,)) - 1, 0)
    while i < len(union) and union[i][0] < t1:
        if union[i][1] > t0 or union[i][0] >= t0:
            return True
        i += 1
    return False


def _groups(ws: list[ShareWindow]) -> list[list[ShareWindow]]:
    groups: list[list[ShareWindow]] = []
    for w in ws:
        if groups and w.t0 - groups[-1][-1].t1 <= STRETCH_JOIN_S:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def _gap(group: list[ShareWindow], targets: Mapping[int, TargetInfo]) -> Gap:
    cost: float | None = 0.0
    idle_cost: float | None = 0.0
    for w in group:
        cost = add_cost(cost, w.cost_usd)
        idle_cost = add_cost(idle_cost, w.idle_cost_usd)
    holders = {targets[t].pid for w in group for t in w.keepwarm if t in targets}
    return Gap(
        t0=group[0].t0,
        t1=group[-1].t1,
        held_by=tuple(sorted(holders)),
        energy_j=sum(w.energy_j for w in group),
        idle_j=sum(w.idle_j for w in group),
        keepwarm_j=sum(e for w in group for e, _ in w.keepwarm.values()),
        cost_usd=cost,
        idle_cost_usd=idle_cost,
    )


def _target_stats(
    devices: Mapping[int, DeviceInfo],
    windows: Mapping[int, list[ShareWindow]],
    calls: CallPass,
    targets: Mapping[int, TargetInfo],
) -> tuple[TargetStats, ...]:
    out = []
    for device_id, ws in windows.items():
        info = devices.get(device_id)
        if info is None:
            continue
        for target_id in sorted({t for w in ws for t in w.by_target}):
            target = targets.get(target_id)
            if target is None:
                continue
            own = calls.target_spans.get(target_id, [])
            idle = [w for w in ws if target_id in w.keepwarm and not _touches(own, w.t0, w.t1)]
            stretches = []
            for group in _groups(idle):
                kw = [group_w.keepwarm[target_id] for group_w in group]
                cost: float | None = 0.0
                for _, c in kw:
                    cost = add_cost(cost, c)
                stretches.append(
                    IdleStretch(group[0].t0, group[-1].t1, sum(e for e, _ in kw), cost)
                )
            total_cost: float | None = 0.0
            for w in ws:
                if target_id in w.by_target:
                    total_cost = add_cost(total_cost, w.by_target[target_id][1])
            names = calls.target_models.get(target_id, set())
            label = target.model or ",".join(sorted(names)) or None
            out.append(
                TargetStats(
                    host=info.host,
                    pid=target.pid,
                    start_time=target.start_time,
                    framework=target.framework,
                    model=label,
                    device_uid=info.uid,
                    calls=calls.target_calls.get((target_id, device_id), 0),
                    energy_j=sum(w.by_target[target_id][0] for w in ws if target_id in w.by_target),
                    cost_usd=total_cost,
                    keepwarm_j=sum(w.keepwarm[target_id][0] for w in ws if target_id in w.keepwarm),
                    idle_stretches=tuple(stretches),
                    first_call_t=min((a for a, _ in own), default=None),
                )
            )
    return tuple(out)

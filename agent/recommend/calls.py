"""One pass over the stored calls, in time order, into per-deployment statistics.

The calls of a profile lookback can number in the millions, so they are
never held in memory: ``CallPass.add`` folds each into running sums (per
deployment and batch size, with latency in log bins) and into merged time
intervals (per deployment, device and target), which is all the builder
needs afterwards. Calls arrive ordered by start, so merging an interval is
extending the last one or appending.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from infermeter.recommend.rows import CallRow, LatencyBins, dtype_name
from infermeter.recommend.stats import BatchPoint, DeviceInfo, DeviceSample, ModelStats, Window

DeploymentKey = tuple[str, str | None, int]  # model, precision, device id


class ShareWindow(Protocol):
    """What the pass reads of a device's flush window (see recommend_build)."""

    t0: float
    t1: float
    energy_j: float
    cost_usd: float | None


def add_cost(a: float | None, b: float | None) -> float | None:
    """A sum of money that stays unknown once one part is unknown."""
    return None if a is None or b is None else a + b


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def extend(intervals: list[tuple[float, float]], t0: float, t1: float) -> None:
    """Add [t0, t1) to a union kept sorted, given intervals arriving by start."""
    if intervals and t0 <= intervals[-1][1]:
        intervals[-1] = (intervals[-1][0], max(intervals[-1][1], t1))
    else:
        intervals.append((t0, t1))


def fraction(t0: float, t1: float, w0: float, w1: float) -> float:
    """The part of a call [t0, t1) inside a window [w0, w1)."""
    if t1 <= t0:
        return 1.0 if w0 <= t0 < w1 else 0.0
    return overlap(t0, t1, w0, w1) / (t1 - t0)


@dataclass
class _Deployment:
    model: str
    dtype: str | None
    device_id: int
    framework: str | None = None
    parameters: int | None = None
    pids: set[int] = field(default_factory=set)
    calls: int = 0
    items: int = 0
    batch_calls: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    energy_j: float = 0.0
    energy_cost: float | None = 0.0
    capacity_cost: float | None = 0.0
    carbon_g: float | None = 0.0
    intervals: list[tuple[float, float]] = field(default_factory=list)
    profile: dict[tuple[int, bool], list[Any]] = field(default_factory=dict)
    first_t: float = math.inf
    last_t: float = -math.inf


class CallPass:
    """Folds calls, one at a time, into what the statistics need."""

    def __init__(
        self,
        devices: Mapping[int, DeviceInfo],
        windows: Mapping[int, list[Any]],
        shared: Mapping[int, tuple[list[float], list[bool]]],
        window: Window,
    ) -> None:
        self.devices = devices
        self.windows = windows
        self._starts = {d: [w.t0 for w in ws] for d, ws in windows.items()}
        self.shared = shared
        self.window = window
        self.deps: dict[DeploymentKey, _Deployment] = {}
        self.energy_in: dict[tuple[int, float], dict[DeploymentKey, float]] = defaultdict(
            lambda: defaultdict(float)
        )
        self.device_busy: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.target_spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.target_models: dict[int, set[str]] = defaultdict(set)
        self.target_calls: dict[tuple[int, int], int] = defaultdict(int)

    def add(self, call: CallRow, device_id: int | None) -> None:
        extend(self.target_spans[call.target_id], call.t0, call.t1)
        self.target_models[call.target_id].add(call.model)
        if device_id is None or device_id not in self.devices:
            return
        extend(self.device_busy[device_id], call.t0, call.t1)
        key = (call.model, dtype_name(call.dtype), device_id)
        d = self.deps.setdefault(key, _Deployment(call.model, key[1], device_id))
        d.framework = d.framework or call.framework
        d.parameters = d.parameters or call.parameters
        is_shared = self._is_shared(device_id, call.t0, call.t1)
        bucket = d.profile.setdefault((call.batch, is_shared), [0, 0, 0.0, LatencyBins()])
        bucket[0] += call.calls
        bucket[1] += call.items
        bucket[2] += call.energy_j
        bucket[3].add(call)
        w = self.window
        if not w.t0 <= (call.t0 + call.t1) / 2 < w.t1:
            return
        self.target_calls[(call.target_id, device_id)] += call.calls
        d.pids.add(call.pid)
        d.calls += call.calls
        d.items += call.items
        d.batch_calls[call.batch] += call.calls
        d.energy_j += call.energy_j
        d.energy_cost = add_cost(d.energy_cost, call.energy_cost)
        d.capacity_cost = add_cost(d.capacity_cost, call.capacity_cost)
        d.carbon_g = add_cost(d.carbon_g, call.carbon_g)
        extend(d.intervals, max(call.t0, w.t0), min(call.t1, w.t1))
        d.first_t, d.last_t = min(d.first_t, call.t0), max(d.last_t, call.t1)
        for sw in self._windows_over(device_id, call.t0, call.t1):
            part = call.energy_j * fraction(call.t0, call.t1, sw.t0, sw.t1)
            self.energy_in[(device_id, sw.t0)][key] += part

    def _is_shared(self, device_id: int, t0: float, t1: float) -> bool:
        index = self.shared.get(device_id)
        if index is None:
            return False
        starts, flags = index
        i = max(bisect.bisect_right(starts, t0) - 1, 0)
        while i < len(starts) and starts[i] < t1:
            if flags[i]:
                return True
            i += 1
        return False

    def _windows_over(self, device_id: int, t0: float, t1: float) -> list[Any]:
        ws = self.windows.get(device_id, [])
        i = max(bisect.bisect_right(self._starts.get(device_id, []), t0) - 1, 0)
        out = []
        while i < len(ws) and ws[i].t0 <= t1:
            if fraction(t0, t1, ws[i].t0, ws[i].t1) > 0:
                out.append(ws[i])
            i += 1
        return out

    def _loaded(self) -> dict[DeploymentKey, tuple[float, float | None]]:
        """Each deployment's part of all the energy and cost of the windows it ran in.

        A window's whole energy and cost (idle and keep-warm included) go to
        the deployments whose calls ran in it, by their calls' energy there:
        what holding the device for them cost.
        """
        of = {(d, w.t0): w for d, ws in self.windows.items() for w in ws}
        out: dict[DeploymentKey, tuple[float, float | None]] = {}
        for wkey, parts in self.energy_in.items():
            total = sum(parts.values())
            w = of.get(wkey)
            if w is None:
                continue
            for dep, e in parts.items():
                share = e / total if total > 0 else 1.0 / len(parts)
                energy, cost = out.get(dep, (0.0, 0.0))
                part = None if w.cost_usd is None else w.cost_usd * share
                out[dep] = (energy + w.energy_j * share, add_cost(cost, part))
        return out

    def models(self, samples: Mapping[int, list[DeviceSample]]) -> tuple[ModelStats, ...]:
        loaded = self._loaded()
        out = []
        for key, d in self.deps.items():
            union = d.intervals
            energy, cost = loaded.get(key, (0.0, None))
            out.append(
                ModelStats(
                    model=d.model,
                    dtype=d.dtype,
                    framework=d.framework,
                    parameters=d.parameters,
                    device=self.devices[d.device_id],
                    pids=tuple(sorted(d.pids)),
                    calls=d.calls,
                    items=d.items,
                    batch_calls=dict(d.batch_calls),
                    energy_j=d.energy_j,
                    energy_cost_usd=d.energy_cost,
                    capacity_cost_usd=d.capacity_cost,
                    carbon_g=d.carbon_g,
                    loaded_cost_usd=cost,
                    loaded_energy_j=energy,
                    busy_fraction=_mean_over(samples.get(d.device_id, []), union, busy=True),
                    device_power_w=_mean_over(samples.get(d.device_id, []), union, busy=False),
                    active_s=sum(b - a for a, b in union),
                    profile=_profile(d.profile),
                    first_t=d.first_t if d.calls else 0.0,
                    last_t=d.last_t if d.calls else 0.0,
                )
            )
        out.sort(key=lambda m: (m.device.uid, m.model, m.dtype or ""))
        return tuple(out)


def _mean_over(
    samples: list[DeviceSample], union: list[tuple[float, float]], busy: bool
) -> float | None:
    """The device's utilisation (or power) averaged over the time a deployment ran.

    ``union`` is sorted and disjoint (``extend`` builds it from calls read by
    start), so each sample needs only the intervals from the last one that
    starts before it: a day of calls and windows costs a bisect per window,
    not a product of the two.
    """
    starts = [a for a, _ in union]
    weight = total = 0.0
    for s in samples:
        value = s.busy_fraction if busy else s.power_w
        if value is None:
            continue
        o = 0.0
        i = max(bisect.bisect_right(starts, s.t0) - 1, 0)
        while i < len(union) and union[i][0] < s.t1:
            o += overlap(s.t0, s.t1, union[i][0], union[i][1])
            i += 1
        weight += o
        total += value * o
    return total / weight if weight > 0 else None


def _profile(parts: Mapping[tuple[int, bool], list[Any]]) -> tuple[BatchPoint, ...]:
    """Per batch size; solo measurements only, when the deployment has any."""
    solo = any(not is_shared for _, is_shared in parts)
    points = []
    for (batch, is_shared), (calls, items, energy, bins) in sorted(parts.items()):
        if solo and is_shared:
            continue
        p50, p99 = bins.percentiles()
        points.append(BatchPoint(batch, calls, items, energy, p50, p99, shared=is_shared))
    return tuple(points)

"""Pricing stored rows again after the price card changed.

A card is corrected after the fact (the utility's real tariff arrived, the
GPU's rate was renegotiated); the stored costs should follow without
re-metering. This recomputes ``energy_cost``, ``capacity_cost``, ``carbon_g``
and ``price_card_id`` of ``usage_shares`` and ``requests`` from ``since`` on
with the config's card and the flush's own pricing code:

- shares through :func:`infermeter.price.pricing.price_shares` and so the
  ``infermeter_price`` hook (a plugin's prices win, as at flush), one device
  window ``(device, t0)`` at a time, since the capacity cost of a window is
  split over its shares by energy;
- calls through :func:`infermeter.price.pricing.price_calls`: energy and carbon
  from their own energy and time, capacity at their target's capacity cost
  per joule in the windows that end the call (per device, the window in
  which the call ended, as the flush that completed the call saw it).

Then the hourly rollups of the touched hours are rebuilt (``Store.rollup``,
and the request rollups). An hour whose raw shares were partly pruned
already keeps its rollup: rebuilding it from what is left would lose the
pruned part. A card whose version is stored with other prices is refused
(``Store.price_card_id``): a changed card needs a new version, so every row
names the prices it was computed with.

Each chunk of time is one transaction; a run that fails half-way leaves
rows priced by either card, each naming its own, and running it again
finishes the job.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, update

from infermeter.price.pricing import price_calls, price_shares
from infermeter.records import (
    Bucket,
    CallEnergy,
    Device,
    DeviceKind,
    Method,
    Price,
    PriceCard,
    Share,
    Span,
    TargetKey,
)
from infermeter.store.models import (
    DeviceRow,
    Host,
    ModelRow,
    PriceCardRow,
    RequestRow,
    TargetRow,
    UsageHourly,
    UsageShare,
)
from infermeter.store.writer import Store

CHUNK_S = 6 * 3600.0  # one transaction per host per six hours of shares


@dataclass
class Sums:
    energy_cost: float = 0.0
    capacity_cost: float = 0.0
    carbon_g: float = 0.0
    unpriced: int = 0  # rows with a figure unknown

    def add(self, energy: float | None, capacity: float | None, carbon: float | None) -> None:
        self.energy_cost += energy or 0.0
        self.capacity_cost += capacity or 0.0
        self.carbon_g += carbon or 0.0
        if energy is None or capacity is None or carbon is None:
            self.unpriced += 1


@dataclass
class RepriceResult:
    card_version: str
    since: float
    until: float | None
    shares: int = 0
    calls: int = 0
    hosts: list[str] = field(default_factory=list)
    previous_cards: dict[str, int] = field(default_factory=dict)  # version (or "unpriced"): rows
    shares_before: Sums = field(default_factory=Sums)
    shares_after: Sums = field(default_factory=Sums)
    calls_before: Sums = field(default_factory=Sums)
    calls_after: Sums = field(default_factory=Sums)
    hours_rolled_up: int = 0
    hours_kept: list[float] = field(default_factory=list)  # partly pruned: rollup left alone


@dataclass(frozen=True, slots=True)
class _HostData:
    host_id: int
    name: str
    devices: dict[int, Device]  # device row id -> Device
    targets: dict[int, TargetKey]
    models: dict[int, str]


def _device(row: Any) -> Device:
    cc = None
    if row.compute_capability and re.fullmatch(r"\d+\.\d+", row.compute_capability):
        major, minor = row.compute_capability.split(".")
        cc = (int(major), int(minor))
    return Device(
        uid=row.uid,
        kind=DeviceKind(row.kind),
        name=row.name,
        index=row.index,
        memory_total_bytes=row.memory_total_bytes,
        power_limit_w=row.power_limit_w,
        idle_power_w=row.idle_power_w,
        keepwarm_power_w=row.keepwarm_power_w,
        parent_uid=row.parent_uid,
        cores=row.cores,
        compute_capability=cc,
    )


def _host_data(conn: Connection, host_id: int, name: str) -> _HostData:
    devices = {
        r.id: _device(r)
        for r in conn.execute(select(DeviceRow).where(DeviceRow.host_id == host_id))
    }
    targets = {
        r.id: (name, int(r.pid), float(r.start_time))
        for r in conn.execute(
            select(TargetRow.id, TargetRow.pid, TargetRow.start_time).where(
                TargetRow.host_id == host_id
            )
        )
    }
    models = {r.id: r.name for r in conn.execute(select(ModelRow.id, ModelRow.name))}
    return _HostData(host_id, name, devices, targets, models)


def _share(row: Any, data: _HostData) -> Share:
    return Share(
        t0=row.t0,
        t1=row.t1,
        device_uid=data.devices[row.device_id].uid,
        bucket=Bucket(row.bucket),
        method=Method(row.method),
        energy_j=row.energy_j,
        target=data.targets.get(row.target_id) if row.target_id is not None else None,
        model=data.models.get(row.model_id) if row.model_id is not None else None,
        tenant=row.tenant,
        weight_basis=row.weight_basis,
    )


def _chunks(first: float, last: float) -> list[tuple[float, float]]:
    """Half-open time ranges covering [first, last]."""
    start = math.floor(first / CHUNK_S) * CHUNK_S
    out = []
    while start <= last:
        out.append((start, start + CHUNK_S))
        start += CHUNK_S
    return out


def reprice(
    engine: Engine,
    card: PriceCard,
    pm: Any,
    since: float,
    until: float | None = None,
    progress: Callable[[float], None] | None = None,
    now: float | None = None,
) -> RepriceResult:
    """Price every share and call from ``since`` (to ``until``) with ``card`` again."""
    now = time.time() if now is None else now
    result = RepriceResult(card.version, since, until)
    with engine.begin() as conn:
        hosts = [(int(r.id), str(r.name)) for r in conn.execute(select(Host.id, Host.name))]
        versions = {
            int(r.id): str(r.version)
            for r in conn.execute(select(PriceCardRow.id, PriceCardRow.version))
        }
    # Refuse a changed card under an old version before anything is written.
    card_id = _card_id(engine, card, now, hosts)
    plans = []
    for host_id, name in hosts:
        with engine.connect() as conn:
            span = conn.execute(
                select(func.min(UsageShare.t0), func.max(UsageShare.t0)).where(
                    *_share_range(host_id, since, until)
                )
            ).one()
            calls_span = conn.execute(
                select(func.min(RequestRow.t1), func.max(RequestRow.t1))
                .join(TargetRow, TargetRow.id == RequestRow.target_id)
                .where(*_call_range(host_id, since, until))
            ).one()
        firsts = [t for t in (span[0], calls_span[0]) if t is not None]
        lasts = [t for t in (span[1], calls_span[1]) if t is not None]
        if firsts:
            plans.append((host_id, name, _chunks(min(firsts), max(lasts))))
    steps = sum(2 * len(chunks) for _, _, chunks in plans) + len(plans)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / max(steps, 1))

    for host_id, name, chunks in plans:
        result.hosts.append(name)
        store = Store(engine, name)
        with engine.connect() as conn:
            data = _host_data(conn, host_id, name)
        hours: set[float] = set()
        for lo, hi in chunks:
            with engine.begin() as conn:
                hours |= _reprice_shares(
                    conn, data, card, card_id, pm, lo, hi, since, until, result, versions
                )
            step()
        for lo, hi in chunks:
            with engine.begin() as conn:
                hours |= _reprice_calls(
                    conn, data, card, card_id, lo, hi, since, until, result, versions
                )
            step()
        _refresh_rollups(engine, store, host_id, sorted(hours), result)
        step()
    return result


def _card_id(engine: Engine, card: PriceCard, now: float, hosts: Sequence[tuple[int, str]]) -> int:
    store = Store(engine, hosts[0][1] if hosts else "reprice")
    with engine.begin() as conn:
        return store.price_card_id(conn, card, now)


def _share_range(host_id: int, since: float, until: float | None) -> list[Any]:
    # Whole windows: every window that reaches past ``since`` (so that calls
    # from ``since`` on find their window repriced), and none starting at ``until``.
    cond: list[Any] = [UsageShare.host_id == host_id, UsageShare.t1 > since]
    if until is not None:
        cond.append(UsageShare.t0 < until)
    return cond


def _call_range(host_id: int, since: float, until: float | None) -> list[Any]:
    cond: list[Any] = [TargetRow.host_id == host_id, RequestRow.t0 >= since]
    if until is not None:
        cond.append(RequestRow.t0 < until)
    return cond


def _reprice_shares(
    conn: Connection,
    data: _HostData,
    card: PriceCard,
    card_id: int,
    pm: Any,
    lo: float,
    hi: float,
    since: float,
    until: float | None,
    result: RepriceResult,
    versions: dict[int, str],
) -> set[float]:
    rows = conn.execute(
        select(UsageShare)
        .where(*_share_range(data.host_id, since, until), UsageShare.t0 >= lo, UsageShare.t0 < hi)
        .order_by(UsageShare.device_id, UsageShare.t0, UsageShare.id)
    ).all()
    if not rows:
        return set()
    shares = [_share(r, data) for r in rows]
    devices = {d.uid: d for d in data.devices.values()}
    prices = price_shares(shares, devices, card, pm)
    updates = []
    for r, p in zip(rows, prices, strict=True):
        result.shares_before.add(r.energy_cost, r.capacity_cost, r.carbon_g)
        result.shares_after.add(p.energy_cost, p.capacity_cost, p.carbon_g)
        _count_previous(result, r.price_card_id, versions)
        updates.append(_values(r.id, p, card_id))
    _write_prices(conn, UsageShare, updates)
    result.shares += len(rows)
    return {math.floor(r.t0 / 3600) * 3600 for r in rows}


def _write_prices(
    conn: Connection, table: type[UsageShare] | type[RequestRow], updates: list[dict[str, Any]]
) -> None:
    """One executemany UPDATE of the price columns, rows named by id."""
    if not updates:
        return
    conn.execute(
        update(table)
        .where(table.id == bindparam("_id"))
        .values(
            energy_cost=bindparam("_energy_cost"),
            capacity_cost=bindparam("_capacity_cost"),
            carbon_g=bindparam("_carbon_g"),
            price_card_id=bindparam("_card_id"),
        ),
        updates,
    )


def _values(row_id: int, p: Price, card_id: int) -> dict[str, Any]:
    return {
        "_id": row_id,
        "_energy_cost": p.energy_cost,
        "_capacity_cost": p.capacity_cost,
        "_carbon_g": p.carbon_g,
        "_card_id": card_id,
    }


def _count_previous(result: RepriceResult, card_id: int | None, versions: dict[int, str]) -> None:
    name = versions.get(card_id, f"card {card_id}") if card_id is not None else "unpriced"
    result.previous_cards[name] = result.previous_cards.get(name, 0) + 1


def _reprice_calls(
    conn: Connection,
    data: _HostData,
    card: PriceCard,
    card_id: int,
    lo: float,
    hi: float,
    since: float,
    until: float | None,
    result: RepriceResult,
    versions: dict[int, str],
) -> set[float]:
    calls = conn.execute(
        select(RequestRow)
        .join(TargetRow, TargetRow.id == RequestRow.target_id)
        .where(*_call_range(data.host_id, since, until), RequestRow.t1 >= lo, RequestRow.t1 < hi)
        .order_by(RequestRow.id)
    ).all()
    if not calls:
        return set()
    # The windows that may end these calls: those starting before the last call
    # ends, back to one window length before the first (windows are short).
    longest = conn.execute(
        select(func.max(UsageShare.t1 - UsageShare.t0)).where(UsageShare.host_id == data.host_id)
    ).scalar_one()
    lookback = float(longest or 0.0)
    first_end = min(c.t1 for c in calls)
    last_end = max(c.t1 for c in calls)
    share_rows = conn.execute(
        select(UsageShare).where(
            UsageShare.host_id == data.host_id,
            UsageShare.t0 >= first_end - lookback,
            UsageShare.t0 < last_end,
        )
    ).all()
    windows: dict[tuple[int, float], list[Any]] = defaultdict(list)
    for s in share_rows:
        windows[(s.device_id, s.t0)].append(s)
    starts: dict[int, list[float]] = defaultdict(list)
    for device_id, t0 in sorted(windows):
        starts[device_id].append(t0)
    groups: dict[tuple[tuple[int, float], ...], list[Any]] = defaultdict(list)
    for c in calls:
        ending: list[tuple[int, float]] = []
        for device_id, t0s in starts.items():
            i = bisect.bisect_left(t0s, c.t1) - 1  # the last window starting before the call ended
            if i >= 0:
                ending.append((device_id, t0s[i]))
        groups[tuple(ending)].append(c)
    updates = []
    for key, group in groups.items():
        window_rows = [s for w in key for s in windows[w]]
        shares = [_share(s, data) for s in window_rows]
        share_prices = [Price(s.energy_cost, s.capacity_cost, s.carbon_g) for s in window_rows]
        records = [
            CallEnergy(
                span=Span(pid=data.targets[c.target_id][1], model="", t0=c.t0, t1=c.t1),
                target=data.targets[c.target_id],
                energy_j=c.energy_j,
                method=Method(c.method),
            )
            for c in group
        ]
        for c, p in zip(group, price_calls(records, shares, share_prices, card), strict=True):
            result.calls_before.add(c.energy_cost, c.capacity_cost, c.carbon_g)
            result.calls_after.add(p.energy_cost, p.capacity_cost, p.carbon_g)
            _count_previous(result, c.price_card_id, versions)
            updates.append(_values(c.id, p, card_id))
    _write_prices(conn, RequestRow, updates)
    result.calls += len(calls)
    return {math.floor(c.t0 / 3600) * 3600 for c in calls}


def _refresh_rollups(
    engine: Engine, store: Store, host_id: int, hours: Sequence[float], result: RepriceResult
) -> None:
    """Rebuild the rollups of the touched hours, except hours whose shares were pruned.

    The request rollups of an hour are rebuilt with it: they also roll up the
    hour's shares, so an hour with pruned shares keeps them as they are too.
    """
    rebuild: list[float] = []
    with engine.connect() as conn:
        for hour in hours:
            rolled = conn.execute(
                select(func.sum(UsageHourly.energy_j)).where(
                    UsageHourly.host_id == host_id, UsageHourly.hour == hour
                )
            ).scalar_one()
            raw = conn.execute(
                select(func.sum(UsageShare.energy_j)).where(
                    UsageShare.host_id == host_id,
                    UsageShare.t0 >= hour,
                    UsageShare.t0 < hour + 3600,
                )
            ).scalar_one()
            if rolled is not None and float(raw or 0.0) < float(rolled) * (1 - 1e-9) - 1e-6:
                result.hours_kept.append(hour)
            else:
                rebuild.append(hour)
    from infermeter.store import request_rollup

    with engine.connect() as conn:
        final_until = request_rollup.complete_until(conn).get(host_id, math.inf)
    for first, last in _runs(rebuild):
        # The agent rolls up only to where its rows are final; rolling up
        # further would count the rows after it twice in the report.
        until = min(last + 3600, final_until)
        if until <= first:
            continue
        store.rollup(first, until)
        with engine.begin() as conn:
            request_rollup.refresh(conn, host_id, first, until)
        result.hours_rolled_up += math.ceil((until - first) / 3600)


def _runs(hours: Sequence[float]) -> list[tuple[float, float]]:
    """Consecutive hours as (first, last) pairs."""
    runs: list[tuple[float, float]] = []
    for h in hours:
        if runs and h - runs[-1][1] <= 3600:
            runs[-1] = (runs[-1][0], h)
        else:
            runs.append((h, h))
    return runs

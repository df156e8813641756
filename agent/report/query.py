"""What the report reads: rollups for the hours they cover, raw rows for the rest.

A report's range [since, until) is cut per host into the hours that the
host's rollups already cover for good (``request_rollup.complete_until``;
the last of them may be partial, rolled up to that point) and the rest,
read from the raw tables (usage_shares, requests,
device_windows). Both halves are aggregated in SQL to one row per group,
device, hour, bucket and method, so what reaches Python is small whatever
the number of stored rows. The hour of a raw row is the hour of its t0, as
the rollups count it, so the two halves never overlap or leave a gap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, FromClause, Table, case, func, or_, select

from infermeter.report import edges
from infermeter.report.edges import Cut, EdgeShare
from infermeter.store import histogram as cost_histogram
from infermeter.store import schema
from infermeter.store.request_rollup import (
    DAILY_KEY,
    DAY_S,
    HOUR_S,
    RequestTotals,
    basis_hourly_select,
    complete_until,
    day_floor,
    device_hourly_select,
    hour_floor,
    hour_sql,
)
from infermeter.store.request_sql import raw_request_totals

# The column of usage_shares / usage_hourly that each grouping groups by,
# and the grain of request_hourly that counts its requests (None: requests
# belong to no single device).
USAGE_KEY = {
    "model": "model_id",
    "tenant": "tenant",
    "target": "target_id",
    "device": "device_id",
    "host": "host_id",
}
# request_hourly's counters, summed as they are.
COUNTERS = ("requests", "calls", "items", "tokens_in", "tokens_out", "unpriced_requests")
REQUEST_GRAIN: dict[str, tuple[str, str] | None] = {
    "model": ("model", "model_id"),
    "tenant": ("host", "tenant"),
    "target": ("target", "target_id"),
    "device": None,
    "host": ("host", "host_id"),
}


@dataclass(frozen=True, slots=True)
class Segment:
    """Hosts and a time range read from one source (rollup hours or raw t0)."""

    host_ids: tuple[int, ...]
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class Plan:
    """Where each part of the range is read from.

    ``rollup``: the hourly rollups (every hourly table); ``raw``: the raw
    tables. Requests inside ``rollup`` are read per day from request_daily
    over ``request_days`` and per hour over ``request_hours``.
    """

    rollup: tuple[Segment, ...]
    raw: tuple[Segment, ...]
    request_days: tuple[Segment, ...]
    request_hours: tuple[Segment, ...]
    since: float
    until: float
    host_ids: tuple[int, ...]

    @property
    def rollup_hours(self) -> int:
        return sum(math.ceil((s.hi - s.lo) / HOUR_S) * len(s.host_ids) for s in self.rollup)

    @property
    def rollup_days(self) -> int:
        return sum(round((s.hi - s.lo) / DAY_S) * len(s.host_ids) for s in self.request_days)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Energy and money of one group on one device in one hour, bucket and method.

    ``*_unpriced_j`` is the energy whose price was unknown (NULL), which the
    matching sum leaves out; ``cost_unpriced_j`` is where either part was.
    """

    host_id: int
    device_id: int
    hour: float
    key: Any
    bucket: str
    method: str
    energy_j: float
    energy_cost: float | None
    capacity_cost: float | None
    carbon_g: float | None
    energy_cost_unpriced_j: float
    capacity_cost_unpriced_j: float
    carbon_unpriced_j: float
    cost_unpriced_j: float


def plan(conn: Connection, since: float, until: float, use_rollups: bool = True) -> Plan:
    """Cut [since, until) per host into rolled-up hours and raw edges.

    A host's rollup rows are final up to its ``complete_until`` point ``done``:
    whole hours before it, and the rows of its own hour cover [hour, done).
    They serve the hours from the first whole hour in range up to ``done``
    (or, when the range ends earlier, up to the last whole hour before
    ``until``); the partial hour at the start and whatever follows come
    from the raw rows.
    """
    host_ids = [int(h) for h in conn.execute(select(schema.hosts.c.id)).scalars()]
    done = complete_until(conn) if use_rollups else {}
    daily = complete_until(conn, DAILY_KEY) if use_rollups else {}
    first_whole = math.ceil(since / HOUR_S) * HOUR_S
    by_cut: dict[float, list[int]] = {}
    for host_id in host_ids:
        cut = first_whole
        if host_id in done:
            end = done[host_id] if done[host_id] <= until else hour_floor(until)
            cut = max(first_whole, end)
        by_cut.setdefault(cut, []).append(host_id)
    rollup: list[Segment] = []
    raw: list[Segment] = []
    for cut, ids in by_cut.items():
        hosts = tuple(sorted(ids))
        if cut > first_whole:
            rollup.append(Segment(hosts, first_whole, cut))
            raw.append(Segment(hosts, since, first_whole))
            raw.append(Segment(hosts, cut, until))
        else:
            raw.append(Segment(hosts, since, until))
    days: list[Segment] = []
    hours: list[Segment] = []
    for seg in rollup:
        # Whole UTC days inside the segment, as far as every host's daily rows are final.
        final = min(daily.get(h, -math.inf) for h in seg.host_ids)
        day_lo = math.ceil(seg.lo / DAY_S) * DAY_S
        day_hi = day_floor(min(seg.hi, final)) if final > -math.inf else day_lo
        if day_hi > day_lo:
            days.append(Segment(seg.host_ids, day_lo, day_hi))
            hours += [Segment(seg.host_ids, seg.lo, day_lo), Segment(seg.host_ids, day_hi, seg.hi)]
        else:
            hours.append(seg)
    return Plan(
        tuple(rollup),
        tuple(s for s in raw if s.hi > s.lo),
        tuple(days),
        tuple(s for s in hours if s.hi > s.lo),
        since,
        until,
        tuple(sorted(host_ids)),
    )


def cut(conn: Connection, p: Plan) -> Cut:
    """The rows the range's bounds cut, with what to add of each (report/edges.py)."""
    return edges.cut(conn, p.host_ids, p.since, p.until)


def _in(seg: Segment, host: ColumnElement[Any], t: ColumnElement[Any]) -> list[ColumnElement[bool]]:
    return [host.in_(seg.host_ids), t >= seg.lo, t < seg.hi]


def _money_columns(table: FromClause) -> list[Any]:
    c = table.c

    def unpriced(*cols: ColumnElement[Any]) -> Any:
        return func.sum(case((_any_null(cols), c.energy_j), else_=0.0))

    return [
        func.sum(c.energy_j).label("energy_j"),
        func.sum(c.energy_cost).label("energy_cost"),
        func.sum(c.capacity_cost).label("capacity_cost"),
        func.sum(c.carbon_g).label("carbon_g"),
        unpriced(c.energy_cost).label("ec_un"),
        unpriced(c.capacity_cost).label("cc_un"),
        unpriced(c.carbon_g).label("cg_un"),
        unpriced(c.energy_cost, c.capacity_cost).label("cost_un"),
    ]


def _any_null(cols: Sequence[ColumnElement[Any]]) -> ColumnElement[bool]:
    return or_(*(col.is_(None) for col in cols))


def usage_rows(conn: Connection, p: Plan, by: str, cut: Cut | None = None) -> list[UsageRow]:
    """usage_hourly for rolled-up hours, usage_shares elsewhere, grouped for ``by``.

    With ``cut``, the rows its bounds cut are corrected to the part inside.
    """
    out: list[UsageRow] = []
    key_name = USAGE_KEY[by]
    for seg in p.rollup:
        h = schema.usage_hourly
        q = (
            select(h.c.host_id, h.c.device_id, h.c.hour, h.c[key_name].label("key"), h.c.bucket)
            .add_columns(h.c.method, *_money_columns(h))
            .where(*_in(seg, h.c.host_id, h.c.hour))
            .group_by(h.c.host_id, h.c.device_id, h.c.hour, h.c[key_name], h.c.bucket, h.c.method)
        )
        out.extend(_usage(conn.execute(q)))
    s = schema.usage_shares
    hour = hour_sql(s.c.t0, conn.dialect.name).label("hour")
    for seg in p.raw:
        q = (
            select(s.c.host_id, s.c.device_id, hour, s.c[key_name].label("key"), s.c.bucket)
            .add_columns(s.c.method, *_money_columns(s))
            .where(*_in(seg, s.c.host_id, s.c.t0))
            .group_by(s.c.host_id, s.c.device_id, hour, s.c[key_name], s.c.bucket, s.c.method)
        )
        out.extend(_usage(conn.execute(q)))
    if cut is not None:
        out.extend(_edge_usage(e, key_name) for e in cut.shares)
    return out


def _edge_usage(e: EdgeShare, key_name: str) -> UsageRow:
    """A cut share row as the correction it adds: itself times its factor."""
    f = e.factor
    energy_j = e.energy_j * f

    def scaled(value: float | None) -> float | None:
        return None if value is None else value * f

    def unpriced(*values: float | None) -> float:
        return energy_j if any(v is None for v in values) else 0.0

    return UsageRow(
        host_id=e.host_id,
        device_id=e.device_id,
        hour=e.hour,
        key=e.column(key_name),
        bucket=e.bucket,
        method=e.method,
        energy_j=energy_j,
        energy_cost=scaled(e.energy_cost),
        capacity_cost=scaled(e.capacity_cost),
        carbon_g=scaled(e.carbon_g),
        energy_cost_unpriced_j=unpriced(e.energy_cost),
        capacity_cost_unpriced_j=unpriced(e.capacity_cost),
        carbon_unpriced_j=unpriced(e.carbon_g),
        cost_unpriced_j=unpriced(e.energy_cost, e.capacity_cost),
    )


def _usage(rows: Any) -> list[UsageRow]:
    return [
        UsageRow(
            host_id=int(r.host_id),
            device_id=int(r.device_id),
            hour=float(r.hour),
            key=r.key,
            bucket=str(r.bucket),
            method=str(r.method),
            energy_j=float(r.energy_j or 0.0),
            energy_cost=_opt(r.energy_cost),
            capacity_cost=_opt(r.capacity_cost),
            carbon_g=_opt(r.carbon_g),
            energy_cost_unpriced_j=float(r.ec_un or 0.0),
            capacity_cost_unpriced_j=float(r.cc_un or 0.0),
            carbon_unpriced_j=float(r.cg_un or 0.0),
            cost_unpriced_j=float(r.cost_un or 0.0),
        )
        for r in rows
    ]


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def basis_rows(
    conn: Connection, p: Plan, by: str, cut: Cut | None = None
) -> list[tuple[Any, str, str, float]]:
    """(key, bucket, weight basis, energy J) over the range (``cut``: as usage_rows)."""
    key_name = USAGE_KEY[by]
    out: list[tuple[Any, str, str, float]] = []
    b = schema.usage_basis_hourly
    for seg in p.rollup:
        q = (
            select(b.c[key_name], b.c.bucket, b.c.weight_basis, func.sum(b.c.energy_j))
            .where(*_in(seg, b.c.host_id, b.c.hour))
            .group_by(b.c[key_name], b.c.bucket, b.c.weight_basis)
        )
        out.extend((r[0], str(r[1]), str(r[2]), float(r[3] or 0.0)) for r in conn.execute(q))
    s = schema.usage_shares
    for seg in p.raw:
        raw = basis_hourly_select(conn.dialect.name, _in(seg, s.c.host_id, s.c.t0)).subquery()
        q = select(
            raw.c[key_name], raw.c.bucket, raw.c.weight_basis, func.sum(raw.c.energy_j)
        ).group_by(raw.c[key_name], raw.c.bucket, raw.c.weight_basis)
        out.extend((r[0], str(r[1]), str(r[2]), float(r[3] or 0.0)) for r in conn.execute(q))
    if cut is not None:
        out.extend(
            (e.column(key_name), e.bucket, e.weight_basis, e.energy_j * e.factor)
            for e in cut.shares
        )
    return out


def device_busy(
    conn: Connection, p: Plan, cut: Cut | None = None
) -> dict[tuple[int, float], tuple[float, float]]:
    """(device id, hour) -> (busy seconds, seconds whose busy fraction is known).

    With ``cut``, the windows its bounds cut count the seconds inside the range.
    """
    out: dict[tuple[int, float], tuple[float, float]] = {}

    def add(rows: Any) -> None:
        for r in rows:
            key = (int(r.device_id), float(r.hour))
            busy, known = out.get(key, (0.0, 0.0))
            out[key] = (
                busy + float(r.busy_seconds or 0.0),
                known + float(r.busy_known_seconds or 0.0),
            )

    d = schema.device_hourly
    for seg in p.rollup:
        add(
            conn.execute(
                select(d.c.device_id, d.c.hour, d.c.busy_seconds, d.c.busy_known_seconds).where(
                    *_in(seg, d.c.host_id, d.c.hour)
                )
            )
        )
    w = schema.device_windows
    for seg in p.raw:
        add(conn.execute(device_hourly_select(conn.dialect.name, _in(seg, w.c.host_id, w.c.t0))))
    for win in cut.windows if cut is not None else ():
        seconds = (win.t1 - win.t0) * win.factor
        known = seconds if win.busy_fraction is not None else 0.0
        add([_BusyRow(win.device_id, win.hour, (win.busy_fraction or 0.0) * seconds, known)])
    return out


@dataclass(frozen=True, slots=True)
class _BusyRow:
    """A cut window's correction, in the columns device_busy reads."""

    device_id: int
    hour: float
    busy_seconds: float
    busy_known_seconds: float


def request_totals(
    conn: Connection, p: Plan, wants: Sequence[str | None]
) -> list[dict[Any, RequestTotals]]:
    """Requests per group key, for each grouping in ``wants`` (``None``: all under key None).

    The raw calls at the edges are read once for all of them.
    """
    picks: list[tuple[str, str]] = []
    for by in wants:
        which = REQUEST_GRAIN[by] if by is not None else ("host", "")
        if which is None:
            raise ValueError(f"requests belong to no single {by}")
        picks.append(which)
    outs: list[dict[Any, RequestTotals]] = [{} for _ in picks]
    for (grain, key_name), out in zip(picks, outs, strict=True):
        for seg in p.request_days:
            _rolled_up_requests(conn, schema.request_daily, "day", seg, grain, key_name, out)
        for seg in p.request_hours:
            _rolled_up_requests(conn, schema.request_hourly, "hour", seg, grain, key_name, out)
    r_c = schema.requests.c
    t_c = schema.targets.c
    grains = sorted({grain for grain, _key in picks})
    key_at = {"host_id": 0, "target_id": 2, "model_id": 3, "tenant": 4}
    for seg in p.raw:
        raw = raw_request_totals(conn, grains, _in(seg, t_c.host_id, r_c.t0))
        for (grain, key_name), out in zip(picks, outs, strict=True):
            for key, totals in raw[grain].items():
                group = key[key_at[key_name]] if key_name else None
                out.setdefault(group, RequestTotals()).add(totals)
    return outs


def _rolled_up_requests(
    conn: Connection,
    table: Table,
    period: str,
    seg: Segment,
    grain: str,
    key_name: str,
    out: dict[Any, RequestTotals],
) -> None:
    """Add the request_hourly or request_daily rows of one grain and segment to ``out``.

    The counters and money are summed in SQL (a money sum is None once any
    hour of the group was unpriced); only the histograms, thousands of small
    JSON objects over a week, are merged here, in one tight loop.
    """
    rh = table.c
    key = rh[key_name] if key_name else rh.host_id
    where = [rh.grain == grain, *_in(seg, rh.host_id, rh[period])]
    money = ("energy_cost", "capacity_cost", "carbon_g")
    sums = conn.execute(
        select(
            key.label("key"),
            *(func.sum(rh[c]).label(c) for c in COUNTERS),
            func.sum(rh.energy_j).label("energy_j"),
            *(func.sum(rh[c]).label(c) for c in money),
            *((func.count() - func.count(rh[c])).label(f"{c}_null") for c in money),
        )
        .where(*where)
        .group_by(key)
    )
    for r in sums:
        m = r._mapping
        out.setdefault(r.key if key_name else None, RequestTotals()).add(
            RequestTotals(
                requests=int(m["requests"] or 0),
                calls=int(m["calls"] or 0),
                items=int(m["items"] or 0),
                tokens_in=int(m["tokens_in"] or 0),
                tokens_out=int(m["tokens_out"] or 0),
                energy_j=float(m["energy_j"] or 0.0),
                energy_cost=None if m["energy_cost_null"] else float(m["energy_cost"] or 0.0),
                capacity_cost=None if m["capacity_cost_null"] else float(m["capacity_cost"] or 0),
                carbon_g=None if m["carbon_g_null"] else float(m["carbon_g"] or 0.0),
                unpriced_requests=int(m["unpriced_requests"] or 0),
            )
        )
    hists: dict[Any, dict[str, int]] = {}
    for group, hist in conn.execute(select(key, rh.cost_hist).where(*where)):
        into = hists.setdefault(group if key_name else None, {})
        for bucket, count in (hist or {}).items():
            into[bucket] = into.get(bucket, 0) + count
    for group, hist in hists.items():
        out.setdefault(group, RequestTotals()).add(RequestTotals(hist=hist))


def percentile(totals: RequestTotals, q: float) -> float | None:
    return cost_histogram.percentile(totals.hist, q)


def stored_range(conn: Connection) -> tuple[float, float] | None:
    """From the first to the last window any device wrote (indexed: cheap)."""
    w = schema.device_windows.c
    lo, hi = conn.execute(select(func.min(w.t0), func.max(w.t0))).one()
    h = schema.usage_hourly.c
    hlo, hhi = conn.execute(select(func.min(h.hour), func.max(h.hour))).one()
    los = [float(x) for x in (lo, hlo) if x is not None]
    his = [float(x) for x in (hi, None if hhi is None else hhi + HOUR_S) if x is not None]
    return (min(los), max(his)) if los and his else None


@dataclass(frozen=True, slots=True)
class Names:
    """What the ids of a store's rows are called, loaded once per report."""

    hosts: Mapping[int, str]
    models: Mapping[int, str]
    targets: Mapping[int, tuple[int, int, float, str]]  # host, pid, start, what it runs
    devices: Mapping[int, tuple[int, str, str, int]]  # host, uid, name, index
    currency: str | None
    cards: tuple[str, ...]

    @classmethod
    def load(cls, conn: Any) -> Names:
        h, m, t, d, p = (
            schema.hosts.c,
            schema.models.c,
            schema.targets.c,
            schema.devices.c,
            schema.price_cards.c,
        )
        hosts = {int(i): str(n) for i, n in conn.execute(select(h.id, h.name))}
        models = {int(i): str(n) for i, n in conn.execute(select(m.id, m.name))}
        targets = {
            int(r.id): (
                int(r.host_id),
                int(r.pid),
                float(r.start_time),
                str((r.labels or {}).get("model") or r.framework),
            )
            for r in conn.execute(
                select(t.id, t.host_id, t.pid, t.start_time, t.labels, t.framework)
            )
        }
        devices = {
            int(r.id): (int(r.host_id), str(r.uid), str(r.name), int(r.index))
            for r in conn.execute(select(d.id, d.host_id, d.uid, d.name, d.index))
        }
        cards = conn.execute(select(p.version, p.currency)).all()
        currencies = {str(c) for _v, c in cards}
        currency = None if not currencies else currencies.pop() if len(currencies) == 1 else "mixed"
        return cls(
            hosts, models, targets, devices, currency, tuple(sorted(str(v) for v, _c in cards))
        )

    def describe(self, by: str, key: Any) -> tuple[str, str]:
        """(stable key, label) of a group; labels name the host only when there are several."""
        if by == "model":
            name = self.models.get(int(key), f"model #{key}")
            return name, name
        if by == "tenant":
            return str(key), str(key)
        if by == "host":
            name = self.hosts.get(int(key), f"host #{key}")
            return name, name
        where = ""
        if by == "target":
            host_id, pid, start, runs = self.targets.get(int(key), (0, 0, 0.0, "?"))
            host = self.hosts.get(host_id, "?")
            if len(self.hosts) > 1:
                where = f" on {host}"
            return f"{host}:{pid}:{start:.3f}", f"{runs} pid {pid}{where}"
        host_id, uid, name, index = self.devices.get(int(key), (0, str(key), "?", 0))
        host = self.hosts.get(host_id, "?")
        if len(self.hosts) > 1:
            where = f" on {host}"
        return f"{host}/{uid}", f"{name.removeprefix('NVIDIA ')} #{index}{where}"

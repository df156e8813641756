"""Hourly rollups for the report: requests, device busy time, weight basis.

``usage_hourly`` (Store.rollup) keeps the energy and cost of every hour; the
report also needs what it does not keep, hour by hour, so that it never
reads millions of raw rows:

- ``request_hourly``: requests, calls, items, tokens, energy and cost, and a
  histogram of cost per request (infermeter.cost_histogram), at three
  grains (per model, per target, per host; see schema.request_hourly). A
  request is the calls that share a ``request_id`` within one hour and one
  row of the grain; a call without a request id is a request of its own.
  Its cost is energy cost + capacity cost; a request with an unpriced call
  is counted in ``unpriced_requests`` and left out of the histogram.
- ``request_daily``: request_hourly summed per UTC day, so that a report
  over a month merges 30 histograms per group rather than 720.
- ``device_hourly``: window seconds and busy seconds per device.
- ``usage_basis_hourly``: energy per weight basis (sm-util, gpu-memory,
  equal, cpu-seconds, baseline), which ``usage_hourly`` does not split.

``refresh`` recomputes every hour touching [since, until) for one host:
deleted, then inserted again from the raw rows, so it is idempotent and a
second run after late rows arrive corrects the hour; the days those hours
fall in are then summed again. The hour of a row is the hour of its
``t0``, as in ``usage_hourly``.

Up to where the rollups are final is stored per host as the agent state
``COMPLETE_KEY``: the rollup time less the flush lag, since rows for the
last seconds may still be on their way. Rows from that point on are not
rolled up at all, so the rollup rows of its hour cover [hour, point)
exactly: the report reads them for that hour too, and raw rows only from
the point on (a few minutes at most while the agent runs). ``DAILY_KEY``
is the same point for request_daily; a store upgraded from before that
table lacks it until the agent's next rollup has backfilled every day, and
the report reads hours meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    case,
    delete,
    func,
    insert,
    select,
)

from infermeter.store import schema
from infermeter.store.request_sql import (
    GRAINS,
    HOUR_S,
    Key,
    RequestTotals,
    hour_floor,
    hour_sql,
    raw_request_totals,
)

if TYPE_CHECKING:  # the report reads these tables without loading the writer
    from infermeter.store.writer import Store

__all__ = [
    "COMPLETE_KEY",
    "DAILY_KEY",
    "DAY_S",
    "GRAINS",
    "HOUR_S",
    "RequestTotals",
    "complete_until",
    "day_floor",
    "hour_floor",
    "hour_sql",
    "refresh",
    "refresh_days",
    "rollup_store",
]

COMPLETE_KEY = "report_rollups_complete_until"
DAILY_KEY = "report_daily_complete_until"
DAY_S = 86400.0


def device_hourly_select(dialect: str, where: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """device_windows per device and hour, in device_hourly's columns."""
    w = schema.device_windows.c
    hour = hour_sql(w.t0, dialect).label("hour")
    length = w.t1 - w.t0
    known = w.busy_fraction.is_not(None)
    return (
        select(
            w.host_id,
            w.device_id,
            hour,
            func.sum(length).label("seconds"),
            func.sum(case((known, w.busy_fraction * length), else_=0.0)).label("busy_seconds"),
            func.sum(case((known, length), else_=0.0)).label("busy_known_seconds"),
            func.sum(w.energy_j).label("energy_j"),
            func.max(w.memory_used_bytes).label("memory_peak_bytes"),
        )
        .where(*where)
        .group_by(w.host_id, w.device_id, hour)
    )


def basis_hourly_select(dialect: str, where: Sequence[ColumnElement[bool]]) -> Select[Any]:
    """usage_shares per hour and weight basis, in usage_basis_hourly's columns."""
    s = schema.usage_shares.c
    hour = hour_sql(s.t0, dialect).label("hour")
    keys = [s.host_id, s.device_id, hour, s.target_id, s.model_id, s.tenant, s.bucket]
    return (
        select(*keys, s.weight_basis, func.sum(s.energy_j).label("energy_j"))
        .where(*where)
        .group_by(*keys, s.weight_basis)
    )


@dataclass(frozen=True, slots=True)
class RefreshResult:
    request_rows: int
    device_rows: int
    basis_rows: int


def refresh(conn: Connection, host_id: int, since: float, until: float) -> RefreshResult:
    """Recompute the three rollups of every hour of ``host_id`` touching [since, until).

    Everything is read first and written last: on SQLite the write lock is
    taken only by the short delete-and-insert at the end, so the agent's
    flushes never wait behind the reads (which WAL lets run beside them).
    """
    first_hour = hour_floor(since)
    dialect = conn.dialect.name
    w = schema.device_windows.c
    devices = [
        dict(row._mapping)
        for row in conn.execute(
            device_hourly_select(dialect, [w.host_id == host_id, w.t0 >= first_hour, w.t0 < until])
        )
    ]
    s = schema.usage_shares.c
    bases = [
        dict(row._mapping)
        for row in conn.execute(
            basis_hourly_select(dialect, [s.host_id == host_id, s.t0 >= first_hour, s.t0 < until])
        )
    ]
    r = schema.requests.c
    t = schema.targets.c
    where = [t.host_id == host_id, r.t0 >= first_hour, r.t0 < until]
    requests = [
        _request_rollup_row(grain, key, totals)
        for grain, by_key in raw_request_totals(conn, GRAINS, where).items()
        for key, totals in by_key.items()
    ]
    for table in (schema.request_hourly, schema.device_hourly, schema.usage_basis_hourly):
        c = table.c
        conn.execute(
            delete(table).where(c.host_id == host_id, c.hour >= first_hour, c.hour < until)
        )
    for table, rows in (
        (schema.device_hourly, devices),
        (schema.usage_basis_hourly, bases),
        (schema.request_hourly, requests),
    ):
        for chunk in _chunks(rows, 5000):
            conn.execute(insert(table), chunk)
    days = refresh_days(conn, host_id, since, until)
    return RefreshResult(len(requests) + days, len(devices), len(bases))


def refresh_days(conn: Connection, host_id: int, since: float, until: float) -> int:
    """Recompute request_daily for every UTC day of ``host_id`` touching [since, until).

    A day's row adds up the request_hourly rows of its hours, so it is run
    after them, in the same transaction; the day of ``until`` comes out
    partial and is recomputed by the next run.
    """
    first_day = day_floor(since)
    hourly = schema.request_hourly
    h = hourly.c
    rows = conn.execute(
        select(hourly).where(h.host_id == host_id, h.hour >= first_day, h.hour < until)
    )
    days: dict[tuple[str, Key], RequestTotals] = {}
    for r in rows:
        key = (r.grain, (host_id, day_floor(r.hour), r.target_id, r.model_id, r.tenant))
        days.setdefault(key, RequestTotals()).add(
            RequestTotals(
                requests=int(r.requests),
                calls=int(r.calls),
                items=int(r.items),
                tokens_in=int(r.tokens_in),
                tokens_out=int(r.tokens_out),
                energy_j=float(r.energy_j),
                energy_cost=r.energy_cost,
                capacity_cost=r.capacity_cost,
                carbon_g=r.carbon_g,
                unpriced_requests=int(r.unpriced_requests),
                hist=dict(r.cost_hist or {}),
            )
        )
    d = schema.request_daily
    conn.execute(delete(d).where(d.c.host_id == host_id, d.c.day >= first_day, d.c.day < until))
    out = [_request_rollup_row(grain, key, totals, "day") for (grain, key), totals in days.items()]
    for chunk in _chunks(out, 5000):
        conn.execute(insert(d), chunk)
    return len(out)


def day_floor(t: float) -> float:
    return math.floor(t / DAY_S) * DAY_S


def _request_rollup_row(
    grain: str, key: Key, g: RequestTotals, period: str = "hour"
) -> dict[str, Any]:
    host_id, start, target_id, model_id, tenant = key
    return {
        "host_id": host_id,
        period: start,
        "grain": grain,
        "target_id": target_id,
        "model_id": model_id,
        "tenant": tenant,
        "requests": g.requests,
        "calls": g.calls,
        "items": g.items,
        "tokens_in": g.tokens_in,
        "tokens_out": g.tokens_out,
        "energy_j": g.energy_j,
        "energy_cost": g.energy_cost,
        "capacity_cost": g.capacity_cost,
        "carbon_g": g.carbon_g,
        "unpriced_requests": g.unpriced_requests,
        "cost_hist": g.hist,
    }


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def refresh_all(engine: Engine, since: float, until: float) -> RefreshResult:
    """Recompute [since, until) for every host, in one transaction (tools, benchmarks)."""
    totals = [0, 0, 0]
    with engine.begin() as conn:
        for host_id in conn.execute(select(schema.hosts.c.id)).scalars():
            result = refresh(conn, host_id, since, until)
            totals[0] += result.request_rows
            totals[1] += result.device_rows
            totals[2] += result.basis_rows
    return RefreshResult(*totals)


def complete_until(conn: Connection, key: str = COMPLETE_KEY) -> dict[int, float]:
    """Per host id: the time before which the report may trust the rollups.

    ``key=DAILY_KEY``: the same for request_daily, which a store upgraded
    from before it has only once the agent backfilled it.
    """
    state = schema.agent_state.c
    rows = conn.execute(select(state.host_id, state.value).where(state.key == key))
    out: dict[int, float] = {}
    for host_id, value in rows:
        try:
            out[int(host_id)] = float(value)
        except ValueError:
            continue
    return out


def rollup_store(store: Store, since: float, until: float) -> int:
    """The agent's rollup step: ``usage_hourly``, then these tables; the first run backfills.

    ``until`` is the point the rollups become final at: the caller passes
    the rollup time less how long rows may take to reach the store. Rows
    from ``until`` on are left out, so the last hour's rollup rows cover
    exactly [hour, until) and the report reads only what follows from the
    raw tables.
    """
    first_run = store.get_state(COMPLETE_KEY) is None
    no_days = store.get_state(DAILY_KEY) is None
    since = 0.0 if first_run else since
    rows = store.rollup(since, until)
    with store.engine.begin() as conn:
        host_id = store.host_id(conn, until)
        result = refresh(conn, host_id, since, until)
        if no_days and not first_run:  # a store from before request_daily: every day
            rows += refresh_days(conn, host_id, 0.0, until)
    store.set_state(COMPLETE_KEY, until)
    store.set_state(DAILY_KEY, until)
    return rows + result.request_rows + result.device_rows + result.basis_rows

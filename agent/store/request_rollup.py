"""Hourly rollups for the report: requests, device busy time, weight basis.

``usage_hourly`` (Store.rollup) keeps the energy and cost of every hour; the
report also needs what it does not keep, hour by hour, so that it never
reads millions of raw rows:

- ``request_hourly``: requests, calls, items, tokens, energy and cost, and a
  histogram of cost per request (infermeter.store.histogram), at three
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

No data can wedge the rollups. A raw call whose items or tokens are out of
the range a span may carry (wire.MAX_COUNT: an older agent's, a replayed
trace's) is moved to the quarantine table before its hour is summed, so no
sum overflows. If a run still fails for its data, ``rollup_store`` rolls
the hours up one by one; an hour that fails on its own is recorded (a
quarantine row of source ``rollup``, and the hour in the agent state
``FAILED_KEY``) and the completion point moves on. Each later run tries the
failed hours again, and retention keeps their raw rows (Store.prune) until
one succeeds. Only a database that is away keeps the point where it was.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    union,
)

from infermeter.records import MAX_COUNT
from infermeter.store import schema
from infermeter.store.quarantine import database_away, one_line, quarantine
from infermeter.store.request_sql import (
    GRAINS,
    HOUR_S,
    Key,
    RequestTotals,
    hour_floor,
    hour_sql,
    no_index,
    raw_request_totals,
)

if TYPE_CHECKING:  # the report reads these tables without loading the writer
    from infermeter.store.writer import Store

log = logging.getLogger(__name__)

__all__ = [
    "COMPLETE_KEY",
    "DAILY_KEY",
    "DAY_S",
    "FAILED_KEY",
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
FAILED_KEY = "rollup_failed_hours"  # hours (start, UTC s) whose rollup failed, not retried OK yet
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
    The one exception is rare: raw calls with counts out of range are moved
    to quarantine first (set_aside_bad_calls), so that no sum overflows.
    """
    first_hour = hour_floor(since)
    set_aside_bad_calls(conn, host_id, first_hour, until)
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


_COUNTS = ("items", "tokens_in", "tokens_out")


def bad_calls_select(host_id: int, since: float, until: float) -> Select[Any]:
    """The raw calls of ``host_id`` in [since, until) with a count out of 0..MAX_COUNT.

    Bounded by the t0 index (no_index keeps SQLite off the target's key).
    """
    r = schema.requests.c
    t = schema.targets.c
    counts = [func.coalesce(r[name], 0) for name in _COUNTS]
    out_of_range = or_(*(c < 0 for c in counts), *(c > MAX_COUNT for c in counts))
    return (
        select(schema.requests)
        .join(schema.targets, t.id == no_index(r.target_id))
        .where(t.host_id == host_id, r.t0 >= since, r.t0 < until, out_of_range)
    )


def set_aside_bad_calls(conn: Connection, host_id: int, since: float, until: float) -> int:
    """Move the raw calls of [since, until) whose counts are out of range to quarantine.

    The wire refuses a span with more than ``MAX_COUNT`` items or tokens, but
    a store written before that may hold one, and two of them overflow
    SQLite's 64-bit sum ("integer overflow"), so the hour could never be
    rolled up. Such a call is no measurement: it leaves ``requests`` (so the
    report's raw reads cannot overflow either) and is kept whole, every
    column, in ``quarantine`` with the reason. Usually a read that finds
    nothing; it writes only when it finds one.
    """
    rows = conn.execute(bad_calls_select(host_id, since, until)).all()
    if not rows:
        return 0
    now = time.time()
    for row in rows:
        m = dict(row._mapping)
        wrong = [f"{k} {m[k]}" for k in _COUNTS if m[k] is not None and not 0 <= m[k] <= MAX_COUNT]
        reason = f"{', '.join(wrong)} out of range 0..{MAX_COUNT}: no sum can hold it"
        quarantine(conn, host_id, now, "call", reason, m)
    r = schema.requests.c
    conn.execute(delete(schema.requests).where(r.id.in_([row.id for row in rows])))
    log.warning(
        "%d stored calls with counts out of range moved to quarantine (first: %s)",
        len(rows),
        reason,
    )
    return len(rows)


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

    A run that fails for its data is done again hour by hour; the hours
    that fail alone are recorded and passed (see the module docstring), and
    the hours that failed before are tried again. Returns the rows written.
    """
    first_run = store.get_state(COMPLETE_KEY) is None
    no_days = store.get_state(DAILY_KEY) is None
    since = 0.0 if first_run else since
    failed_before = {float(h) for h in store.get_state(FAILED_KEY) or []}
    failed = set(failed_before)
    first_hour = hour_floor(since)
    try:
        rows = _roll(store, since, until)
        failed -= {h for h in failed if first_hour <= h < until}
    except Exception as e:
        if database_away(e):
            raise
        log.warning(
            "rollup of %s to %s failed (%s): rolling it up hour by hour",
            _utc(since),
            _utc(until),
            one_line(e),
        )
        rows = 0
        for hour in _hours_with_rows(store, first_hour, until):
            rows += _roll_hour(store, hour, min(hour + HOUR_S, until), failed)
    for hour in sorted(failed_before):
        if hour < first_hour:  # an hour that failed in an earlier run: again
            rows += _roll_hour(store, hour, hour + HOUR_S, failed)
    if no_days and not first_run:  # a store from before request_daily: every day
        try:
            with store.engine.begin() as conn:
                rows += refresh_days(conn, store.host_id(conn, until), 0.0, until)
        except Exception as e:
            if database_away(e):
                raise
            _record_failure(store, "days", 0.0, until, e)
    if failed != failed_before:
        store.set_state(FAILED_KEY, sorted(failed))
    store.set_state(COMPLETE_KEY, until)
    store.set_state(DAILY_KEY, until)
    return rows


def _roll(store: Store, since: float, until: float) -> int:
    """Every rollup of the hours touching [since, until); rows written."""
    rows = store.rollup(since, until)
    with store.engine.begin() as conn:
        result = refresh(conn, store.host_id(conn, until), since, until)
    return rows + result.request_rows + result.device_rows + result.basis_rows


def _roll_hour(store: Store, hour: float, until: float, failed: set[float]) -> int:
    """One hour's rollups; a failure for its data is recorded in ``failed`` and quarantine."""
    try:
        rows = _roll(store, hour, until)
    except Exception as e:
        if database_away(e):
            raise
        if hour not in failed:
            log.warning(
                "rollup of the hour %s failed (%s): recorded in quarantine and passed; "
                "its raw rows are kept until a later rollup of it succeeds",
                _utc(hour),
                one_line(e),
            )
        failed.add(hour)
        _record_failure(store, "hour", hour, until, e)
        return 0
    if hour in failed:
        log.info("rollup of the hour %s, which had failed, succeeded", _utc(hour))
        failed.discard(hour)
    return rows


def _record_failure(store: Store, what: str, start: float, until: float, error: Exception) -> None:
    with store.engine.begin() as conn:
        host_id = store.host_id(conn, until)
        payload = {what: start, "host": store.host} if what == "hour" else {what: [start, until]}
        quarantine(conn, host_id, time.time(), "rollup", one_line(error), payload)


def _hours_with_rows(store: Store, first_hour: float, until: float) -> list[float]:
    """The hours in [first_hour, until) that hold raw or rollup rows of this host."""
    with store.engine.connect() as conn:
        host_id = store.host_id(conn, until)
        dialect = conn.dialect.name
        r = schema.requests.c
        t = schema.targets.c
        parts: list[Select[Any]] = [
            select(hour_sql(table.c.t0, dialect).label("hour")).where(
                table.c.host_id == host_id, table.c.t0 >= first_hour, table.c.t0 < until
            )
            for table in (schema.usage_shares, schema.device_windows)
        ]
        parts.append(
            select(hour_sql(r.t0, dialect).label("hour"))
            .select_from(schema.requests.join(schema.targets, t.id == no_index(r.target_id)))
            .where(t.host_id == host_id, r.t0 >= first_hour, r.t0 < until)
        )
        parts.extend(
            select(table.c.hour).where(
                table.c.host_id == host_id, table.c.hour >= first_hour, table.c.hour < until
            )
            for table in (
                schema.usage_hourly,
                schema.request_hourly,
                schema.device_hourly,
                schema.usage_basis_hourly,
            )
        )
        return sorted({float(h) for h in conn.execute(union(*parts)).scalars()})


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))

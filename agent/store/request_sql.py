"""Model calls folded into requests, in SQL: what the request rollup and the report share.

A request is the calls that share a ``request_id`` within one hour and one
row of a grain (``model``: host x model x tenant; ``target``: host x target
x tenant; ``host``: host x tenant); a call without a request id is a request
of its own. Its cost is the energy + capacity cost of its calls, unpriced
when one of them is; its tokens are the largest any call carries (every
call of a request carries the request's counts).

Two kinds of query, both aggregated in the database so that no call passes
through Python on its own: one pass sums calls, items, energy and money per
(host, hour, target, model, tenant), which any grain adds up; then, per
grain, calls are grouped into requests (only the columns the percentiles
and tokens need, which keeps the database's sort narrow) and the requests
counted per cost bucket (infermeter.store.histogram). The rollup of an hour
and the raw rows at a report's edges both come from here, so they agree to
the bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Integer,
    case,
    cast,
    func,
    select,
)

from infermeter.store import histogram as cost_histogram
from infermeter.store import schema

GRAINS = ("model", "target", "host")
HOUR_S = 3600.0
# (host id, hour, target id or None, model id or None, tenant): a grain's row.
Key = tuple[int, float, int | None, int | None, str | None]


def hour_sql(col: ColumnElement[float], dialect: str) -> ColumnElement[float]:
    """The start of the UTC hour holding ``col`` (seconds >= 0), as SQL."""
    if dialect == "sqlite":  # no floor() without math functions; t >= 0 truncates down
        return cast(cast(col / HOUR_S, Integer) * 3600, Float)
    return func.floor(col / HOUR_S) * 3600


def no_index(col: ColumnElement[Any]) -> ColumnElement[Any]:
    """``col + 0``: the same value, but SQLite can no longer use an index on it.

    A query bounded by ``t0`` that groups or joins by ``target_id`` or
    ``model_id`` otherwise lets SQLite pick their (id, t0) index, which
    cannot bound t0 without the id, and read every row of the table instead
    of the t0 range. PostgreSQL plans the same either way.
    """
    return col + 0


def hour_floor(t: float) -> float:
    return math.floor(t / HOUR_S) * HOUR_S


def grain_columns(grain: str) -> tuple[str, ...]:
    """The id columns a grain keeps besides host, hour and tenant."""
    return {"model": ("model_id",), "target": ("target_id",), "host": ()}[grain]


@dataclass(slots=True)
class RequestTotals:
    """Requests of one group, summed; costs are None once a call was unpriced."""

    requests: int = 0
    calls: int = 0
    items: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    energy_j: float = 0.0
    energy_cost: float | None = 0.0
    capacity_cost: float | None = 0.0
    carbon_g: float | None = 0.0
    unpriced_requests: int = 0
    hist: dict[str, int] = field(default_factory=dict)

    def add(self, other: RequestTotals) -> None:
        self.requests += other.requests
        self.calls += other.calls
        self.items += other.items
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.energy_j += other.energy_j
        self.energy_cost = _plus(self.energy_cost, other.energy_cost)
        self.capacity_cost = _plus(self.capacity_cost, other.capacity_cost)
        self.carbon_g = _plus(self.carbon_g, other.carbon_g)
        self.unpriced_requests += other.unpriced_requests
        for key, count in other.hist.items():
            self.hist[key] = self.hist.get(key, 0) + count


def _plus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def _key(grain: str, row: Any) -> Key:
    m = row._mapping
    return (
        int(m["host_id"]),
        float(m["hour"]),
        m["target_id"] if grain == "target" else None,
        m["model_id"] if grain == "model" else None,
        m["tenant"],
    )


def raw_request_totals(
    conn: Connection, grains: Sequence[str], where: Sequence[ColumnElement[bool]]
) -> dict[str, dict[Key, RequestTotals]]:
    """Per grain, the requests of the raw calls that ``where`` selects, per grain row.

    ``where`` filters ``requests`` and ``targets`` (joined for the host).
    """
    cost_histogram.prepare_connection(conn)
    r = schema.requests.c
    t = schema.targets.c
    hour = hour_sql(r.t0, conn.dialect.name).label("hour")
    # no_index keeps SQLite off the (target, model, t0) key, which cannot bound t0
    # without a model and would read every call of the target; the planner
    # then walks the t0 index, and joins targets by primary key.
    source = schema.requests.join(schema.targets, t.id == no_index(r.target_id))
    nulls = [
        func.sum(case((r[name].is_(None), 1), else_=0)).label(f"{name}_null")
        for name in ("energy_cost", "capacity_cost", "carbon_g")
    ]
    finest = [t.host_id.label("host_id"), hour, r.target_id, r.model_id, r.tenant]
    sums = conn.execute(
        select(
            *finest,
            func.count().label("calls"),
            func.sum(r["items"]).label("items"),
            func.sum(r.energy_j).label("energy_j"),
            func.sum(r.energy_cost).label("energy_cost"),
            func.sum(r.capacity_cost).label("capacity_cost"),
            func.sum(r.carbon_g).label("carbon_g"),
            *nulls,
        )
        .select_from(source)
        .where(*where)
        .group_by(*finest)
    ).all()
    out: dict[str, dict[Key, RequestTotals]] = {}
    for grain in grains:
        totals = out.setdefault(grain, {})
        for row in sums:
            m = row._mapping
            totals.setdefault(_key(grain, row), RequestTotals()).add(
                RequestTotals(
                    calls=int(m["calls"]),
                    items=int(m["items"] or 0),
                    energy_j=float(m["energy_j"] or 0.0),
                    energy_cost=_sum_or_none(m, "energy_cost"),
                    capacity_cost=_sum_or_none(m, "capacity_cost"),
                    carbon_g=_sum_or_none(m, "carbon_g"),
                )
            )
        for row in _bucket_rows(conn, grain, source, hour, where):
            m = row._mapping
            part = RequestTotals(
                requests=int(m["requests"]),
                tokens_in=int(m["tokens_in"] or 0),
                tokens_out=int(m["tokens_out"] or 0),
            )
            if m["bucket"] is None:
                part.unpriced_requests = part.requests
            else:
                part.hist[cost_histogram.key_of(m["bucket"])] = part.requests
            totals.setdefault(_key(grain, row), RequestTotals()).add(part)
    return out


def _sum_or_none(m: Any, name: str) -> float | None:
    """A summed money column: None once any call in it was unpriced."""
    return None if m[f"{name}_null"] else float(m[name] or 0.0)


def _bucket_rows(
    conn: Connection,
    grain: str,
    source: Any,
    hour: Any,
    where: Sequence[ColumnElement[bool]],
) -> Sequence[Any]:
    """Requests of ``grain`` counted per (host, hour, key, tenant, cost bucket)."""
    r = schema.requests.c
    t = schema.targets.c
    ids = [r[name] for name in grain_columns(grain)]
    cost = r.energy_cost + r.capacity_cost  # NULL when either is: SUM skips it, COUNT too
    units = (
        select(
            t.host_id.label("host_id"),
            hour,
            *ids,
            r.tenant,
            func.sum(cost).label("cost"),
            (func.count() - func.count(cost)).label("unpriced_calls"),
            func.max(r.tokens_in).label("tokens_in"),
            func.max(r.tokens_out).label("tokens_out"),
        )
        .select_from(source)
        .where(*where)
        .group_by(
            r.request_id,
            case((r.request_id.is_(None), r.id)),  # no request id: the call is the request
            t.host_id,
            hour,
            *ids,
            r.tenant,
        )
        .subquery()
    )
    u = units.c
    bucket = case((u.unpriced_calls == 0, cost_histogram.bucket_sql(u.cost)))
    keep = [u[name] for name in grain_columns(grain)]
    return conn.execute(
        select(
            u.host_id,
            u.hour,
            *keep,
            u.tenant,
            bucket.label("bucket"),
            func.count().label("requests"),
            func.sum(u.tokens_in).label("tokens_in"),
            func.sum(u.tokens_out).label("tokens_out"),
        ).group_by(u.host_id, u.hour, *keep, u.tenant, bucket)
    ).all()

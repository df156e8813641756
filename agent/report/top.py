"""What ``infermeter top`` shows: the store's newest windows, as plain data.

``top`` runs beside the agent and must never slow it down: it opens the
store read-only (SQLite ``mode=ro``: a WAL reader never blocks the writer;
PostgreSQL read-only transactions), and every refresh is a few indexed
queries over the last minute plus the report's rollup-backed query for
today. "Now" is the end of the newest device window in the store, not the
wall clock, so a store filled by ``replay`` shows its own last moments.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Select, create_engine, event, func, select

from infermeter.report import query as rq
from infermeter.report.query import Names
from infermeter.store import schema
from infermeter.store.engine import open_engine, sqlite_path
from infermeter.store.models import DeviceRow, DeviceWindow
from infermeter.store.request_sql import no_index

RECENT_S = 30.0  # how far back "now" looks: a few flush windows
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class DeviceNow:
    label: str
    host: str
    kind: str
    power_w: float  # over its newest window
    utilisation: float | None  # busy fraction of its newest window
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    method: str
    age_s: float  # how long before the newest window of the store its own ended


@dataclass(frozen=True, slots=True)
class UseNow:
    """A target or a model: power and cost over the recent windows, cost since midnight."""

    label: str
    power_w: float
    cost_per_hour: float | None  # None: unpriced
    cost_today: float | None
    requests_per_s: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    as_of: float | None  # end of the newest window; None: the store holds none
    recent_s: float
    devices: tuple[DeviceNow, ...]
    targets: tuple[UseNow, ...]
    models: tuple[UseNow, ...]
    idle_w: float
    keepwarm_w: float
    cost_per_hour: float | None
    cost_today: float | None
    currency: str | None


def open_readonly(url: str) -> Engine:
    """An engine that cannot write: SQLite opened ``mode=ro``, PostgreSQL read-only."""
    path = sqlite_path(url)
    if path is not None:
        open_engine(url).dispose()  # the same one-line errors for a missing file or folder
        uri = f"file:{path}?mode=ro"

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=1000")
            return conn

        return create_engine("sqlite://", creator=connect)
    engine = open_engine(url)
    if engine.dialect.name == "postgresql":

        @event.listens_for(engine, "begin")
        def _read_only(conn: Connection) -> None:
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")

    return engine


def snapshot(engine: Engine, recent_s: float = RECENT_S) -> Snapshot:
    with engine.connect() as conn:
        names = Names.load(conn)
        newest = conn.execute(select(func.max(DeviceWindow.t0))).scalar_one_or_none()
        if newest is None:
            return Snapshot(None, recent_s, (), (), (), 0.0, 0.0, None, None, names.currency)
        latest = _latest_windows(conn, float(newest))
        as_of = max(w.t1 for w in latest.values())
        since = as_of - recent_s
        usage = _recent_usage(conn, since)
        rates = _recent_requests(conn, since)
        midnight = math.floor(as_of / DAY_S) * DAY_S
        plan = rq.plan(conn, midnight, as_of + 1e-6)
        today_targets = _today(rq.usage_rows(conn, plan, "target"))
        today_models = _today(rq.usage_rows(conn, plan, "model"))
        described = {
            int(r.id): (str(r.kind), r.memory_total_bytes)
            for r in conn.execute(
                select(DeviceRow.id, DeviceRow.kind, DeviceRow.memory_total_bytes)
            )
        }
    span = max(as_of - min((u[2] for u in usage), default=since), 1e-9)
    devices = tuple(
        DeviceNow(
            label=names.describe("device", device_id)[1],
            host=names.hosts.get(names.devices[device_id][0], "?")
            if device_id in names.devices
            else "?",
            kind=described.get(device_id, ("?", None))[0],
            power_w=w.energy_j / max(w.t1 - w.t0, 1e-9),
            utilisation=w.busy_fraction,
            memory_used_bytes=w.memory_used_bytes,
            memory_total_bytes=described.get(device_id, ("?", None))[1],
            method=str(w.method),
            age_s=as_of - w.t1,
        )
        for device_id, w in sorted(latest.items())
    )
    by_target: dict[Any, list[float | None]] = {}
    by_model: dict[Any, list[float | None]] = {}
    idle_j = keepwarm_j = 0.0
    total_cost: float | None = 0.0
    for target_id, model_id, _t0, bucket, energy_j, cost in usage:
        if bucket == "idle":
            idle_j += energy_j
        elif bucket == "keepwarm":
            keepwarm_j += energy_j
        total_cost = None if total_cost is None or cost is None else total_cost + cost
        if target_id is not None and bucket in ("active", "keepwarm"):
            _add(by_target, target_id, energy_j, cost)
        if model_id is not None and bucket in ("active", "keepwarm"):
            _add(by_model, model_id, energy_j, cost)
    targets = _uses(names, "target", by_target, today_targets, rates[0], span)
    models = _uses(names, "model", by_model, today_models, rates[1], span)
    today_total = today_targets.get("*all*")
    return Snapshot(
        as_of=as_of,
        recent_s=span,
        devices=devices,
        targets=targets,
        models=models,
        idle_w=idle_j / span,
        keepwarm_w=keepwarm_j / span,
        cost_per_hour=None if total_cost is None else total_cost / span * 3600,
        cost_today=today_total,
        currency=names.currency,
    )


def _latest_windows(conn: Connection, newest_t0: float) -> dict[int, Any]:
    """Each device's newest window among those of the last ten minutes."""
    rows = conn.execute(
        select(
            DeviceWindow.device_id,
            DeviceWindow.t0,
            DeviceWindow.t1,
            DeviceWindow.energy_j,
            DeviceWindow.method,
            DeviceWindow.busy_fraction,
            DeviceWindow.memory_used_bytes,
        ).where(DeviceWindow.t0 >= newest_t0 - 600)
    ).all()
    latest: dict[int, Any] = {}
    for r in rows:
        if r.device_id not in latest or r.t0 > latest[r.device_id].t0:
            latest[r.device_id] = r
    return latest


def recent_usage_query(since: float) -> Select[Any]:
    """Energy and cost per target, model and bucket since ``since``: a t0 range read."""
    s = schema.usage_shares.c
    return (
        select(
            s.target_id,
            s.model_id,
            func.min(s.t0),
            s.bucket,
            func.sum(s.energy_j),
            func.sum(s.energy_cost + s.capacity_cost),
            func.count(),
            func.count(s.energy_cost + s.capacity_cost),
        )
        .where(s.t0 >= since)
        .group_by(no_index(s.target_id), no_index(s.model_id), s.bucket)
    )


def recent_requests_query(since: float) -> Select[Any]:
    """Calls per target and model since ``since``: a t0 range read."""
    r = schema.requests.c
    return (
        select(r.target_id, r.model_id, func.count())
        .where(r.t0 >= since)
        .group_by(no_index(r.target_id), no_index(r.model_id))
    )


def _recent_usage(
    conn: Connection, since: float
) -> list[tuple[Any, Any, float, str, float, float | None]]:
    return [
        (
            r[0],
            r[1],
            float(r[2]),
            str(r[3]),
            float(r[4] or 0.0),
            None if r[7] < r[6] else float(r[5] or 0.0),
        )
        for r in conn.execute(recent_usage_query(since))
    ]


def _recent_requests(conn: Connection, since: float) -> tuple[dict[Any, int], dict[Any, int]]:
    by_target: dict[Any, int] = {}
    by_model: dict[Any, int] = {}
    for target_id, model_id, n in conn.execute(recent_requests_query(since)):
        by_target[target_id] = by_target.get(target_id, 0) + int(n)
        by_model[model_id] = by_model.get(model_id, 0) + int(n)
    return by_target, by_model


def _today(rows: list[rq.UsageRow]) -> dict[Any, float | None]:
    """Cost since midnight per key, and the total under "*all*"; None when nothing is priced."""
    priced: dict[Any, float] = {}
    seen: set[Any] = set()
    for row in rows:
        for key in (row.key, "*all*"):
            if key is None:
                continue
            seen.add(key)
            if row.energy_cost is not None or row.capacity_cost is not None:
                cost = (row.energy_cost or 0.0) + (row.capacity_cost or 0.0)
                priced[key] = priced.get(key, 0.0) + cost
    return {key: priced.get(key) for key in seen}


def _add(
    into: dict[Any, list[float | None]], key: Any, energy_j: float, cost: float | None
) -> None:
    acc = into.setdefault(key, [0.0, 0.0])
    acc[0] = (acc[0] or 0.0) + energy_j
    acc[1] = None if acc[1] is None or cost is None else acc[1] + cost


def _uses(
    names: Names,
    by: str,
    recent: Mapping[Any, list[float | None]],
    today: Mapping[Any, float | None],
    requests: Mapping[Any, int],
    span: float,
) -> tuple[UseNow, ...]:
    keys = set(recent) | {k for k in today if k != "*all*"}
    out = []
    for key in keys:
        energy_j, cost = recent.get(key, [0.0, 0.0])
        out.append(
            UseNow(
                label=names.describe(by, key)[1],
                power_w=(energy_j or 0.0) / span,
                cost_per_hour=None if cost is None else cost / span * 3600,
                cost_today=today.get(key, 0.0),
                requests_per_s=requests.get(key, 0) / span,
            )
        )
    out.sort(key=lambda u: (-u.power_w, -(u.cost_today or 0.0), u.label))
    return tuple(out)

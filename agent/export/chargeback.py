"""Chargeback in plain SQL: the documented views, and read-only queries on the store.

The views are the store's public reading interface (contrib/sql/README.md
documents every column and unit): a FinOps analyst, Grafana or a BI tool can
query them on SQLite or PostgreSQL alike, without knowing the tables. Only
two views need dialect-specific SQL, the calendar columns of ``v_usage`` and
``v_request_cost`` (times are float UTC epoch seconds); every other view, and
every example in contrib/sql, is built on those two in SQL that both
databases run unchanged.

Unpriced stays NULL. A cost column of a view is the SQL ``SUM`` of the rows
whose figure is known (NULL when none of the group's rows is priced), and
``unpriced_rows`` beside it counts the rows that lack a figure, so a partial
sum is never mistaken for a whole one; ``cost`` is ``energy_cost +
capacity_cost`` and so NULL as soon as either is wholly unknown.

``VIEWS_0002`` is what migration 0002 creates. It is frozen: a changed view
is a new constant and a new migration, never an edit here. On SQLite, a
later migration that rebuilds a table the views read (Alembic batch mode)
should drop the views first and create them again afterwards
(:func:`drop_views`, :func:`create_views`): SQLite refuses to rename a table
while a view names a table that is missing.

SQL that someone else wrote (``infermeter sql``) runs through
:mod:`infermeter.store.readonly`, never through these helpers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection

from infermeter.errors import StoreError

# ----- calendar columns, the only SQL that differs between the databases -------------

_SQLITE_FORMATS = {"hour": "%Y-%m-%dT%H:00:00Z", "day": "%Y-%m-%d", "month": "%Y-%m"}
_PG_FORMATS = {"hour": 'YYYY-MM-DD"T"HH24:00:00"Z"', "day": "YYYY-MM-DD", "month": "YYYY-MM"}


def utc_text(dialect: str, unit: str, epoch_sql: str) -> str:
    """SQL that renders float UTC epoch seconds as an hour, day or month in UTC."""
    if dialect == "sqlite":
        return f"strftime('{_SQLITE_FORMATS[unit]}', {epoch_sql}, 'unixepoch')"
    if dialect == "postgresql":
        return f"to_char(to_timestamp({epoch_sql}) AT TIME ZONE 'UTC', '{_PG_FORMATS[unit]}')"
    raise StoreError(f"chargeback views support SQLite and PostgreSQL, not {dialect}")


@dataclass(frozen=True, slots=True)
class View:
    name: str
    sql: str  # the SELECT; ``{day:EXPR}`` (or hour, month) marks a calendar column of EXPR
    doc: str

    def create_sql(self, dialect: str) -> str:
        return f"CREATE VIEW {self.name} AS\n" + _render(self.sql, dialect)


def _render(sql: str, dialect: str) -> str:
    """Replace ``{day:EXPR}``-style markers with the dialect's calendar SQL."""
    out: list[str] = []
    rest = sql
    while "{" in rest:
        head, _, tail = rest.partition("{")
        marker, _, rest = tail.partition("}")
        unit, _, expr = marker.partition(":")
        out.extend((head, utc_text(dialect, unit, expr)))
    out.append(rest)
    return "".join(out)


_METRICS = """
    SUM(energy_kwh) AS energy_kwh,
    SUM(energy_cost) AS energy_cost,
    SUM(capacity_cost) AS capacity_cost,
    SUM(energy_cost) + SUM(capacity_cost) AS cost,
    SUM(carbon_kg) AS carbon_kg,
    COUNT(*) AS hourly_rows,
    SUM(unpriced) AS unpriced_rows"""

V_USAGE = View(
    "v_usage",
    """SELECT
    h.hour AS hour,
    {hour:h.hour} AS hour_utc,
    {day:h.hour} AS day,
    {month:h.hour} AS month,
    ho.name AS host,
    d.uid AS device_uid,
    d.name AS device_name,
    d.kind AS device_kind,
    h.target_id AS target_id,
    t.pid AS pid,
    t.framework AS framework,
    m.name AS model,
    h.tenant AS tenant,
    h.bucket AS bucket,
    h.method AS method,
    h.seconds AS seconds,
    h.energy_j / 3600000.0 AS energy_kwh,
    h.energy_cost AS energy_cost,
    h.capacity_cost AS capacity_cost,
    h.energy_cost + h.capacity_cost AS cost,
    h.carbon_g / 1000.0 AS carbon_kg,
    CASE WHEN h.energy_cost IS NULL OR h.capacity_cost IS NULL OR h.carbon_g IS NULL
         THEN 1 ELSE 0 END AS unpriced
FROM usage_hourly h
JOIN hosts ho ON ho.id = h.host_id
JOIN devices d ON d.id = h.device_id
LEFT JOIN targets t ON t.id = h.target_id
LEFT JOIN models m ON m.id = h.model_id""",
    "One row per hourly rollup row, with names and UTC calendar columns.",
)

V_COST_BY_MODEL_DAY = View(
    "v_cost_by_model_day",
    f"""SELECT
    day,
    model,{_METRICS}
FROM v_usage
GROUP BY day, model""",
    "Cost, energy and carbon per model per UTC day (model NULL: idle and unattributed).",
)

V_COST_BY_TENANT_MONTH = View(
    "v_cost_by_tenant_month",
    f"""SELECT
    month,
    tenant,{_METRICS}
FROM v_usage
GROUP BY month, tenant""",
    "Cost, energy and carbon per tenant per UTC month (tenant NULL: untenanted and idle).",
)

V_COST_BY_TARGET_DEVICE = View(
    "v_cost_by_target_device",
    f"""SELECT
    day,
    host,
    device_uid,
    device_name,
    device_kind,
    target_id,
    pid,
    framework,
    SUM(CASE WHEN bucket = 'active' THEN energy_kwh ELSE 0.0 END) AS active_kwh,
    SUM(CASE WHEN bucket = 'keepwarm' THEN energy_kwh ELSE 0.0 END) AS keepwarm_kwh,{_METRICS}
FROM v_usage
GROUP BY day, host, device_uid, device_name, device_kind, target_id, pid, framework""",
    "Cost per process (target) per device per UTC day (target NULL: idle and other).",
)

V_IDLE_KEEPWARM_COST = View(
    "v_idle_keepwarm_cost",
    """WITH device_day AS (
    SELECT day, host, device_uid,
        SUM(energy_kwh) AS device_kwh,
        SUM(energy_cost) + SUM(capacity_cost) AS device_cost
    FROM v_usage
    GROUP BY day, host, device_uid
)
SELECT
    u.day AS day,
    u.host AS host,
    u.device_uid AS device_uid,
    u.device_name AS device_name,
    u.bucket AS bucket,
    u.model AS model,
    u.tenant AS tenant,
    SUM(u.energy_kwh) AS energy_kwh,
    SUM(u.energy_cost) AS energy_cost,
    SUM(u.capacity_cost) AS capacity_cost,
    SUM(u.energy_cost) + SUM(u.capacity_cost) AS cost,
    SUM(u.carbon_kg) AS carbon_kg,
    SUM(u.energy_kwh) / NULLIF(MAX(dd.device_kwh), 0) AS share_of_device_energy,
    MAX(dd.device_cost) AS device_cost,
    COUNT(*) AS hourly_rows,
    SUM(u.unpriced) AS unpriced_rows
FROM v_usage u
JOIN device_day dd
  ON dd.day = u.day AND dd.host = u.host AND dd.device_uid = u.device_uid
WHERE u.bucket IN ('idle', 'keepwarm')
GROUP BY u.day, u.host, u.device_uid, u.device_name, u.bucket, u.model, u.tenant""",
    "Idle and keep-warm energy and cost per device per UTC day, with who kept it warm.",
)

V_REQUEST_COST = View(
    "v_request_cost",
    """SELECT
    m.name AS model,
    r.request_id AS request_id,
    MIN(r.id) AS first_call_id,
    MIN(r.tenant) AS tenant,
    MIN(r.t0) AS t0,
    MAX(r.t1) AS t1,
    {day:MIN(r.t0)} AS day,
    COUNT(*) AS calls,
    SUM(r.items) AS items,
    SUM(r.energy_j) AS energy_j,
    CASE WHEN COUNT(r.energy_cost) = COUNT(*) THEN SUM(r.energy_cost) END AS energy_cost,
    CASE WHEN COUNT(r.capacity_cost) = COUNT(*) THEN SUM(r.capacity_cost) END AS capacity_cost,
    CASE WHEN COUNT(r.energy_cost) = COUNT(*) AND COUNT(r.capacity_cost) = COUNT(*)
         THEN SUM(r.energy_cost) + SUM(r.capacity_cost) END AS cost,
    CASE WHEN COUNT(r.carbon_g) = COUNT(*) THEN SUM(r.carbon_g) END AS carbon_g
FROM requests r
JOIN models m ON m.id = r.model_id
GROUP BY r.model_id, m.name, r.request_id, CASE WHEN r.request_id IS NULL THEN r.id END""",
    "One row per request per model: the calls sharing a request_id (a call without one "
    "is its own request); a cost is NULL when any of its calls is unpriced.",
)

V_REQUEST_COST_BY_MODEL = View(
    "v_request_cost_by_model",
    """WITH priced AS (
    SELECT model, cost,
        ROW_NUMBER() OVER (PARTITION BY model ORDER BY cost) AS rn,
        COUNT(*) OVER (PARTITION BY model) AS n
    FROM v_request_cost
    WHERE cost IS NOT NULL
), pct AS (
    SELECT model,
        MAX(CASE WHEN rn = (50 * n + 99) / 100 THEN cost END) AS p50_cost,
        MAX(CASE WHEN rn = (95 * n + 99) / 100 THEN cost END) AS p95_cost,
        MAX(CASE WHEN rn = (99 * n + 99) / 100 THEN cost END) AS p99_cost
    FROM priced
    GROUP BY model
)
SELECT
    a.model AS model,
    COUNT(*) AS requests,
    CAST(SUM(a.calls) AS BIGINT) AS calls,
    CAST(SUM(a.items) AS BIGINT) AS items,
    SUM(a.energy_j) / COUNT(*) AS mean_energy_j,
    COUNT(a.cost) AS priced_requests,
    COUNT(*) - COUNT(a.cost) AS unpriced_requests,
    SUM(a.cost) AS cost,
    AVG(a.cost) AS mean_cost,
    MAX(p.p50_cost) AS p50_cost,
    MAX(p.p95_cost) AS p95_cost,
    MAX(p.p99_cost) AS p99_cost
FROM v_request_cost a
LEFT JOIN pct p ON p.model = a.model
GROUP BY a.model""",
    "Cost per request per model: count, total, mean and nearest-rank p50/p95/p99.",
)

V_TOKEN_COST = View(
    "v_token_cost",
    """WITH per_request AS (
    SELECT
        m.name AS model,
        r.tenant AS tenant,
        {day:MIN(r.t0)} AS day,
        MAX(r.tokens_in) AS tokens_in,
        MAX(r.tokens_out) AS tokens_out,
        SUM(r.energy_j) AS energy_j,
        CASE WHEN COUNT(r.energy_cost) = COUNT(*) AND COUNT(r.capacity_cost) = COUNT(*)
             THEN SUM(r.energy_cost) + SUM(r.capacity_cost) END AS cost
    FROM requests r
    JOIN models m ON m.id = r.model_id
    GROUP BY r.model_id, m.name, r.tenant, r.request_id,
        CASE WHEN r.request_id IS NULL THEN r.id END
)
SELECT
    day,
    model,
    tenant,
    COUNT(*) AS requests,
    SUM(tokens_in) AS tokens_in,
    SUM(tokens_out) AS tokens_out,
    SUM(energy_j) / 3600000.0 AS energy_kwh,
    SUM(energy_j) / NULLIF(SUM(COALESCE(tokens_in, 0) + COALESCE(tokens_out, 0)), 0)
        AS j_per_token,
    SUM(energy_j) / NULLIF(SUM(tokens_out), 0) AS j_per_token_out,
    SUM(cost) AS cost,
    COUNT(*) - COUNT(cost) AS unpriced_requests,
    1000000.0 * SUM(cost) / NULLIF(SUM(tokens_in), 0) AS cost_per_1m_tokens_in,
    1000000.0 * SUM(cost) / NULLIF(SUM(tokens_out), 0) AS cost_per_1m_tokens_out
FROM per_request
GROUP BY day, model, tenant""",
    "Energy and cost per token per model, tenant and UTC day, from the requests' calls; "
    "each request's tokens count once (the largest any of its calls carries).",
)

# Creation order: a view comes after the views it reads. Never edit: see the docstring.
VIEWS_0002: tuple[View, ...] = (
    V_USAGE,
    V_COST_BY_MODEL_DAY,
    V_COST_BY_TENANT_MONTH,
    V_COST_BY_TARGET_DEVICE,
    V_IDLE_KEEPWARM_COST,
    V_REQUEST_COST,
    V_REQUEST_COST_BY_MODEL,
)
# What migration 0008 adds.
VIEWS_0008: tuple[View, ...] = (V_TOKEN_COST,)
CURRENT_VIEWS = VIEWS_0002 + VIEWS_0008
VIEW_NAMES: tuple[str, ...] = tuple(v.name for v in CURRENT_VIEWS)


def create_views(conn: Connection, views: Sequence[View] = CURRENT_VIEWS) -> None:
    dialect = conn.dialect.name
    for view in views:
        conn.exec_driver_sql(view.create_sql(dialect))


def drop_views(conn: Connection, views: Sequence[View] = CURRENT_VIEWS) -> None:
    for view in reversed(views):
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {view.name}")

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

:func:`run_readonly` runs one statement of the user's on a store opened so
that it cannot write: SQLite read-only (``mode=ro``, ``query_only`` and an
authorizer that allows reading only, so not even ATTACH creates a file),
PostgreSQL in a ``READ ONLY`` transaction with the statement sent as a
prepared statement (one statement only, so no ``COMMIT; DELETE ...``).
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import make_url

from infermeter.errors import StoreError
from infermeter.store.engine import open_engine, redact, sqlite_path

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
CURRENT_VIEWS = VIEWS_0002
VIEW_NAMES: tuple[str, ...] = tuple(v.name for v in CURRENT_VIEWS)


def create_views(conn: Connection, views: Sequence[View] = CURRENT_VIEWS) -> None:
    dialect = conn.dialect.name
    for view in views:
        conn.exec_driver_sql(view.create_sql(dialect))


def drop_views(conn: Connection, views: Sequence[View] = CURRENT_VIEWS) -> None:
    for view in reversed(views):
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {view.name}")


# ----- read-only queries ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


class ReadOnlyViolation(StoreError):
    """The statement would have changed the store; nothing was changed."""


READ_ONLY_MESSAGE = (
    "infermeter sql is read-only: that statement would change the store, and nothing was changed"
)


def run_readonly(url: str, query: str) -> QueryResult:
    """Run one statement on the store at ``url`` through a connection that cannot write."""
    if not query.strip():
        raise StoreError("no query given")
    try:
        backend = make_url(url).get_backend_name()
    except Exception:
        raise StoreError(f"database URL {url!r} is not a valid SQLAlchemy URL") from None
    if backend == "sqlite":
        return _run_sqlite(url, query)
    if backend == "postgresql":
        return _run_postgresql(url, query)
    raise StoreError(f"infermeter sql supports SQLite and PostgreSQL stores, not {backend}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# What a query may do on SQLite: read. The authorizer is a third guard beside the
# read-only open and ``query_only``: it also refuses what writes beside the store
# (ATTACH creates a file) with the same clear message.
_SQLITE_READS = frozenset(
    (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE)
)
_SQLITE_READ_PRAGMAS = frozenset(
    (
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "database_list",
        "collation_list",
        "function_list",
        "pragma_list",
        "compile_options",
    )
)


def _sqlite_authorize(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _source: str | None
) -> int:
    if action in _SQLITE_READS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg2 is None or (arg1 or "") in _SQLITE_READ_PRAGMAS):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
        return sqlite3.SQLITE_OK  # SQLite asks while it reads the schema
    return sqlite3.SQLITE_DENY


def _is_sqlite_write_refusal(e: sqlite3.Error) -> bool:
    name = getattr(e, "sqlite_errorname", "")
    text = str(e)
    return (
        name.startswith(("SQLITE_READONLY", "SQLITE_AUTH"))
        or "readonly database" in text
        or "not authorized" in text
    )


def _run_sqlite(url: str, query: str) -> QueryResult:
    path = sqlite_path(url)
    if path is None:
        raise StoreError("infermeter sql needs a store in a file, not an in-memory database")
    if not path.is_file():
        raise StoreError(f"no store at {path}")
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path} read-only: {_first_line(e)}") from None
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.set_authorizer(_sqlite_authorize)
        try:
            cur = conn.execute(query)
            rows = cur.fetchall()
        except sqlite3.Error as e:
            if _is_sqlite_write_refusal(e):
                raise ReadOnlyViolation(READ_ONLY_MESSAGE) from None
            raise StoreError(f"query failed: {_first_line(e)}") from None
        except sqlite3.Warning as e:  # "You can only execute one statement at a time."
            raise StoreError(f"query failed: {_first_line(e)}") from None
        columns = tuple(d[0] for d in cur.description or ())
        return QueryResult(columns, [tuple(r) for r in rows])
    finally:
        conn.rollback()
        conn.close()


def _run_postgresql(url: str, query: str) -> QueryResult:
    import psycopg

    engine = open_engine(url)
    try:
        with engine.connect() as sa_conn:
            raw: Any = sa_conn.connection.driver_connection
            try:
                with raw.cursor() as cur:
                    cur.execute("SET TRANSACTION READ ONLY")
                    # prepare=True sends one prepared statement: PostgreSQL refuses two
                    # commands in it, so no statement can end the read-only transaction.
                    cur.execute(query, prepare=True)
                    columns = tuple(d.name for d in cur.description or ())
                    rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            except psycopg.errors.ReadOnlySqlTransaction:
                raise ReadOnlyViolation(READ_ONLY_MESSAGE) from None
            except psycopg.Error as e:
                raise StoreError(f"query failed: {_first_line(e)}") from None
            finally:
                raw.rollback()
    except StoreError:
        raise
    except Exception as e:  # a lost connection mid-query
        raise StoreError(f"query on {redact(url)} failed: {_first_line(e)}") from None
    finally:
        engine.dispose()
    return QueryResult(columns, rows)

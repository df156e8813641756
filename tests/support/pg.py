"""The real PostgreSQL server of the tests: whether it answers, and fresh databases on it.

PostgreSQL tests skip, saying why, when no server answers; CI sets
INFERMETER_REQUIRE_PG=1 so that an absent server fails the run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get(
    "INFERMETER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_unavailable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # any failure to reach it is a reason to skip
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {str(e).splitlines()[0]}"
    return None


_PG_REASON = _pg_unavailable()


def require_pg(reason: str | None = None) -> None:
    """Skip, saying why, when PostgreSQL is not to be had; fail instead in CI.

    ``reason`` defaults to why the shared server does not answer (None: it does).
    CI sets INFERMETER_REQUIRE_PG=1, so a missing server fails the run.
    """
    reason = _PG_REASON if reason is None else reason
    if reason:
        if os.environ.get("INFERMETER_REQUIRE_PG") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def url_of(database: str) -> str:
    """The admin URL pointed at another database on the same server."""
    return make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False)


@contextmanager
def fresh_database(template: str | None = None) -> Iterator[str]:
    """A new database (a copy of ``template`` when given), dropped afterwards.

    ``CREATE DATABASE ... TEMPLATE`` copies a database file by file, so a store
    replayed once per session costs each test a copy instead of a replay.
    """
    require_pg()
    name = f"infermeter_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    clause = f' TEMPLATE "{template}"' if template else ""
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    try:
        yield url_of(name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def admin_rows(url: str, statement: str) -> list[tuple[object, ...]]:
    """Run one statement as ``url``'s user (the admin), autocommitted: its rows, if any.

    For what a test sets up or inspects around the code under test (roles,
    grants, ownership, catalogue queries), outside any transaction of its own.
    """
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(statement)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()

"""Reader roles for PostgreSQL tests: a name of its own per test, dropped afterwards.

Roles are the server's, not a database's, and other tests run against the
same server at the same time: so no test uses the default
``infermeter_reader``, and each drops its role (and what was granted to it)
before its database goes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text


def unique_role(prefix: str = "im_reader") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def drop_roles(db_url: str, *roles: str) -> None:
    """Drop ``roles`` if they exist, with their grants in ``db_url``'s database."""
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for role in roles:
                if conn.execute(
                    text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
                ).first():
                    conn.execute(text(f'DROP OWNED BY "{role}"'))
                    conn.execute(text(f'DROP ROLE "{role}"'))
    finally:
        engine.dispose()


@contextmanager
def reader_role(db_url: str, prefix: str = "im_reader") -> Iterator[str]:
    """A role name for this test only; the role, if made, is dropped on exit.

    Whoever makes it (``db grant-reader``, or the test's own ``CREATE ROLE``),
    it goes with what was granted to it, even when the test fails.
    """
    role = unique_role(prefix)
    try:
        yield role
    finally:
        drop_roles(db_url, role)


def sql_config(path: Path, role: str, **sql: object) -> Path:
    """A config file that names the reader role (and other ``[sql]`` keys)."""
    lines = ["[sql]", f'reader_role = "{role}"']
    lines += [f"{key} = {value!r}" for key, value in sql.items()]
    path.write_text("\n".join(lines) + "\n")
    return path

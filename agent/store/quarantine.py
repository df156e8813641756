"""The ``quarantine`` table: what the store or the agent refused, and why.

One bad input must never cost other data: a row the database will not
take, a raw call whose counts no sum can hold, an hour the rollup cannot
compute is set aside here with a one-line reason and the item itself as
ASCII JSON, and the rest goes on. ``infermeter status`` shows what is
here. Core only (no ORM), so the rollups and ``status`` can use it without
loading the writer.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    StatementError,
)

from infermeter.store import schema


def refused_by_data(error: BaseException) -> bool:
    """Whether the database refused what was sent, rather than being away.

    A value it cannot hold (too long, out of range, NUL, a string that does
    not encode, a broken constraint) fails the same way on every retry, so
    its rows are set aside; a lost connection, a lock or a full disk passes,
    so the batch is kept whole for the next flush. SQLite reports a sum
    that overflowed as an OperationalError: that one is data too.
    """
    if isinstance(error, DataError | IntegrityError):
        return True
    if isinstance(error, OperationalError):
        return "integer overflow" in str(error.orig)
    if isinstance(error, DBAPIError):
        return False
    # StatementError: a bind processor refused a value; the rest are raised
    # by the drivers themselves (sqlite3's OverflowError on a big int, a
    # UnicodeEncodeError on a lone surrogate) or by a row that names an
    # identity the batch lacks.
    return isinstance(error, StatementError | ValueError | OverflowError | TypeError | KeyError)


def one_line(error: BaseException) -> str:
    """The database's own reason in one ASCII line, without the SQL or its values."""
    cause = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    line = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    return line.encode("ascii", "backslashreplace").decode("ascii")[:500]


def as_json(value: Any) -> str:
    """``value`` (records, mappings, enums) as ASCII JSON, whatever its strings hold.

    A lone surrogate or NUL comes out escaped (``\\ud800``, ``\\u0000``), so
    the payload of a row refused for them can itself be stored.
    """
    return json.dumps(_plain(value), ensure_ascii=True, sort_keys=True, allow_nan=False)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def quarantine(
    conn: Connection,
    host_id: int | None,
    at: float,
    source: str,
    reason: str,
    payload: Any,
) -> bool:
    """Set one refused item aside with why; False if the same item already is.

    The same refusal met again (a batch retried, an hour rolled up again)
    adds no second row.
    """
    text = payload if isinstance(payload, str) else as_json(payload)
    q = schema.quarantine.c
    same = select(q.id).where(
        q.host_id.is_(None) if host_id is None else q.host_id == host_id,
        q.source == source,
        q.payload == text,
    )
    if conn.execute(same.limit(1)).first() is not None:
        return False
    conn.execute(
        insert(schema.quarantine).values(
            host_id=host_id, at=at, source=source, reason=reason[:2000], payload=text
        )
    )
    return True


def database_away(error: BaseException) -> bool:
    """A database error that is not about the data: away, locked, full, or a schema problem.

    What the rollups let through to keep their completion point (the next
    run tries again); any other failure of an hour is recorded and passed.
    """
    return isinstance(error, DBAPIError) and not refused_by_data(error)

"""A compact histogram of cost per request, from which p50 and p95 are read.

Percentiles cannot be added up hour by hour, but histograms can. Costs are
counted in log-spaced buckets, eight to a doubling: bucket ``i`` holds the
costs in [2^(i/8), 2^((i+1)/8)) and reads back as its geometric middle, so
a percentile read from the histogram is within ``RESOLUTION`` (4.4 %) of a
cost that lies in the same bucket as the exact one. Costs per request span
many decades (a CPU call at 1e-9 USD, an LLM request at 1e-2), and only the
buckets that occur are stored: a JSON object ``{"<i>": count}``, with the
key ``"z"`` for requests that cost exactly zero.

The bucket index is computed in SQL (``bucket_sql``) so that an hour's
rollup and the raw rows at a report's edges fall into the very same
buckets, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from sqlalchemy import ColumnElement, Connection, case, func, literal

STEPS_PER_DOUBLING = 8
RESOLUTION = 2 ** (1 / (2 * STEPS_PER_DOUBLING)) - 1  # ~0.0443
ZERO_KEY = "z"
ZERO_INDEX = -(2**31)  # what bucket_sql gives a cost of exactly zero
_LN2 = math.log(2)


def bucket_sql(cost: ColumnElement[float]) -> ColumnElement[int]:
    """The bucket index of a positive ``cost`` as SQL; ZERO_INDEX for 0 or less."""
    index = func.floor(func.ln(cost) / _LN2 * STEPS_PER_DOUBLING)
    return case((cost <= 0, literal(ZERO_INDEX)), else_=index)


def prepare_connection(conn: Connection) -> None:
    """Give SQLite ``ln`` and ``floor`` where it was built without math functions."""
    if conn.dialect.name != "sqlite":
        return
    raw = conn.connection.driver_connection
    try:
        raw.execute("SELECT ln(2.0), floor(1.5)").fetchone()  # type: ignore[union-attr]
    except Exception:
        raw.create_function("ln", 1, math.log, deterministic=True)  # type: ignore[union-attr]
        raw.create_function("floor", 1, math.floor, deterministic=True)  # type: ignore[union-attr]


def key_of(index: int | float) -> str:
    index = int(index)
    return ZERO_KEY if index == ZERO_INDEX else str(index)


def value_of(key: str) -> float:
    """The cost a bucket reads back as: its geometric middle (0 for the zero bucket)."""
    if key == ZERO_KEY:
        return 0.0
    return float(2 ** ((int(key) + 0.5) / STEPS_PER_DOUBLING))


def merge(hists: Iterable[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for hist in hists:
        for key, count in hist.items():
            out[key] = out.get(key, 0) + int(count)
    return out


def percentile(hist: Mapping[str, int], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0 < q <= 1); None for an empty histogram."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for key in sorted(hist, key=value_of):
        seen += hist[key]
        if seen >= rank:
            return value_of(key)
    return value_of(max(hist, key=value_of))  # unreachable: seen reaches total

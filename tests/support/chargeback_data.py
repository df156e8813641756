"""The chargeback tests' data: both H100 recordings replayed into one store.

The recordings know no tenants and no request ids, and the example card
prices everything; chargeback must show all three. So, the same way on
every database:

- ``h100-serving`` is replayed with the example card, ``h100-resnet-encoder``
  with a card that knows no electricity price (its rows' energy cost is
  NULL: unpriced, under its own card version);
- resnet50's rows belong to tenant ``acme``, the encoder's to ``globex``;
  the mlp stays untenanted;
- three calls in four share a request id (so requests span calls and,
  since calls are numbered in the order they ended, models), and every
  seventh call has an unknown capacity cost;
- the encoder's calls carry tokens (made up from their ids);
- the hourly rollups are rebuilt after these edits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.sidecar.replay import replay
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.writer import Store
from support import FIXTURES
from support.pg import fresh_database

SERVING = FIXTURES / "h100-serving"
ENCODER = FIXTURES / "h100-resnet-encoder"
NO_ELECTRICITY = {"prices": {"version": "test-no-electricity", "electricity_per_kwh": 0}}
TENANTS = {"resnet50": "acme", "encoder": "globex"}


def fill(url: str) -> None:
    """Replay, label and roll up; the store at ``url`` must be empty."""
    engine = open_engine(url)
    migrate.upgrade(engine)
    pm = make_plugin_manager()
    for trace, file_values in ((SERVING, {}), (ENCODER, NO_ELECTRICITY)):
        config = build_config(pm.config_options(), file_values, environ={})
        store = Store(engine, trace.name)
        replay(trace, config, pm, store)
    label(engine)
    engine.dispose()


@contextmanager
def filled_stores(folder: Path) -> Iterator[dict[str, str]]:
    """The data filled into a SQLite file in ``folder`` and a fresh PostgreSQL database.

    The URLs by dialect name, so that a test asserts the same of both; the
    PostgreSQL database is dropped on exit.
    """
    sqlite = f"sqlite:///{folder / 'store.db'}"
    with pg_database() as pg:
        fill(sqlite)
        fill(pg)
        yield {"sqlite": sqlite, "postgresql": pg}


def label(engine: Engine) -> None:
    with engine.begin() as conn:
        for model, tenant in TENANTS.items():
            for table in ("usage_shares", "requests"):
                conn.execute(
                    text(
                        f"UPDATE {table} SET tenant = :tenant "
                        "WHERE model_id = (SELECT id FROM models WHERE name = :model)"
                    ),
                    {"tenant": tenant, "model": model},
                )
        conn.execute(
            text(
                "UPDATE requests SET request_id = 'req-' || CAST(id / 3 AS VARCHAR(20)) "
                "WHERE id - (id / 4) * 4 <> 0"
            )
        )
        conn.execute(text("UPDATE requests SET capacity_cost = NULL WHERE id - (id / 7) * 7 = 0"))
        # Tokens on the encoder's calls, so the token view divides by something.
        conn.execute(
            text(
                "UPDATE requests SET tokens_in = 1 + id - (id / 50) * 50, "
                "tokens_out = id - (id / 7) * 7 "
                "WHERE model_id = (SELECT id FROM models WHERE name = 'encoder')"
            )
        )
        hosts = [r[0] for r in conn.execute(text("SELECT name FROM hosts"))]
    for host in hosts:
        Store(engine, host).rollup(0.0, 4e9)


def fingerprint(engine: Engine) -> list[tuple[Any, ...]]:
    """What the views read, rounded: equal on two databases means the same data."""

    def r(v: Any) -> Any:
        return round_float(v) if isinstance(v, float) else v

    out: list[tuple[Any, ...]] = []
    with engine.connect() as conn:
        for query in (
            "SELECT id, model_id, target_id, request_id, tenant, t0, items, tokens_in, "
            "tokens_out, energy_j, energy_cost, capacity_cost, carbon_g FROM requests ORDER BY id",
            "SELECT device_id, hour, target_id, model_id, tenant, bucket, method, energy_j, "
            "energy_cost, capacity_cost, carbon_g FROM usage_hourly",
        ):
            rows = [tuple(r(v) for v in row) for row in conn.execute(text(query))]
            out.extend(sorted(rows, key=sort_key))  # NULLs sort differently in SQL
    return out


def sort_key(row: tuple[Any, ...]) -> list[tuple[bool, Any]]:
    """Rows in one order on every database, NULLs last."""
    return [(v is None, "" if v is None else v) for v in row]


def round_float(v: float, digits: int = 10) -> float:
    """``v`` to ``digits`` significant digits (about 1e-10 relative)."""
    if v == 0 or not math.isfinite(v):
        return v
    return round(v, digits - 1 - math.floor(math.log10(abs(v))))


def normalise(value: Any) -> Any:
    """One Python value per SQL value, whichever driver returned it."""
    if isinstance(value, float):
        return round_float(value, 9)
    return value


def pg_database() -> AbstractContextManager[str]:
    """A fresh PostgreSQL database for a whole module (conftest's ``pg_url`` is per test)."""
    return fresh_database()

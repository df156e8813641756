"""The chargeback views and the contrib/sql examples, on SQLite and PostgreSQL.

Both H100 recordings are replayed into a SQLite file and into a fresh
PostgreSQL database (tests/support/chargeback_data.py); every view and every example
query must then give the same columns, the same Python types and the same
values (to ~1e-9 relative) on both, and agree with the tables they read.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from support import ROOT
from support.chargeback_data import filled_stores, fingerprint, normalise, sort_key

from infermeter.export.chargeback import VIEW_NAMES, VIEWS_0002, VIEWS_0008
from infermeter.store import migrate
from infermeter.store.engine import open_engine

SQL_DIR = ROOT / "contrib" / "sql"
EXAMPLES = sorted(SQL_DIR.glob("*.sql"))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with filled_stores(tmp_path_factory.mktemp("chargeback")) as urls:
        yield urls


def query(url: str, sql: str) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    columns, rows = run_query(url, sql)
    return columns, [tuple(normalise(v) for v in row) for row in rows]


def run_query(url: str, sql: str) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The test's own SQL, as the store's owner (``sql``'s guards are tested elsewhere)."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(sql)
            return tuple(result.keys()), [tuple(r) for r in result]
    finally:
        engine.dispose()


def test_both_databases_hold_the_same_data(stores: dict[str, str]) -> None:
    prints = {}
    for name, url in stores.items():
        engine = open_engine(url)
        prints[name] = fingerprint(engine)
        engine.dispose()
    assert len(prints["sqlite"]) > 6000
    assert prints["sqlite"] == prints["postgresql"]


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_view_agrees_on_both_databases(stores: dict[str, str], view: str) -> None:
    lite_cols, lite = query(stores["sqlite"], f"SELECT * FROM {view}")
    pg_cols, pg = query(stores["postgresql"], f"SELECT * FROM {view}")
    assert lite_cols == pg_cols
    assert lite, f"{view} is empty: the comparison would prove nothing"
    lite.sort(key=sort_key)
    pg.sort(key=sort_key)
    for a, b in zip(lite, pg, strict=True):
        assert [type(v).__name__ for v in a] == [type(v).__name__ for v in b], (a, b)
    assert lite == pg


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_query_agrees_on_both_databases(stores: dict[str, str], path: Path) -> None:
    sql = path.read_text()
    lite_cols, lite = query(stores["sqlite"], sql)
    pg_cols, pg = query(stores["postgresql"], sql)
    assert lite_cols == pg_cols
    assert lite, f"{path.name} returned no rows: the comparison would prove nothing"
    for a, b in zip(lite, pg, strict=True):
        assert [type(v).__name__ for v in a] == [type(v).__name__ for v in b], (a, b)
    assert lite == pg  # in the query's own order: ORDER BY must be total on both


def test_every_view_and_example_is_documented() -> None:
    readme = (SQL_DIR / "README.md").read_text()
    assert len(EXAMPLES) >= 5
    for path in EXAMPLES:
        assert f"`{path.name}`" in readme
    for view in VIEWS_0002 + VIEWS_0008:
        assert f"### `{view.name}`" in readme


def test_usage_views_add_up_to_the_rollups(stores: dict[str, str]) -> None:
    for url in stores.values():
        _, (table,) = run_query(
            url,
            "SELECT SUM(energy_j) / 3600000.0, SUM(energy_cost), SUM(capacity_cost), "
            "SUM(carbon_g) / 1000.0, COUNT(*), SUM(CASE WHEN energy_cost IS NULL OR "
            "capacity_cost IS NULL OR carbon_g IS NULL THEN 1 ELSE 0 END) "
            "FROM usage_hourly",
        )
        for view in ("v_cost_by_model_day", "v_cost_by_tenant_month", "v_cost_by_target_device"):
            _, (sums,) = run_query(
                url,
                "SELECT SUM(energy_kwh), SUM(energy_cost), SUM(capacity_cost), "
                f"SUM(carbon_kg), SUM(hourly_rows), SUM(unpriced_rows) FROM {view}",
            )
            for got, want in zip(sums[:4], table[:4], strict=True):
                assert math.isclose(got, want, rel_tol=1e-9), (view, got, want)
            assert int(sums[4]) == table[4] and int(sums[5]) == table[5]
        assert table[5] > 0  # the encoder host's rows are unpriced


def test_unpriced_stays_null(stores: dict[str, str]) -> None:
    for url in stores.values():
        _, rows = query(
            url,
            "SELECT host, bucket, energy_cost, capacity_cost, cost, hourly_rows, unpriced_rows "
            "FROM v_idle_keepwarm_cost ORDER BY host, bucket",
        )
        by_host = defaultdict(list)
        for row in rows:
            by_host[row[0]].append(row)
        # No electricity price for the encoder host: its energy cost is unknown, not 0.
        assert by_host["h100-resnet-encoder"]
        for _, _, energy, capacity, cost, n, unpriced in by_host["h100-resnet-encoder"]:
            assert energy is None and cost is None and capacity is not None and capacity > 0
            assert unpriced == n
        for _, _, energy, _, cost, _, _ in by_host["h100-serving"]:
            assert energy is not None and energy > 0 and cost is not None
        # A model on both hosts: summed where priced, and its unpriced rows counted.
        _, models = query(url, "SELECT model, energy_cost, unpriced_rows FROM v_cost_by_model_day")
        resnet = next(r for r in models if r[0] == "resnet50")
        assert resnet[1] is not None and resnet[1] > 0 and resnet[2] > 0


def test_calendar_columns_are_utc(stores: dict[str, str]) -> None:
    for url in stores.values():
        _, rows = query(url, "SELECT hour, hour_utc, day, month FROM v_usage")
        assert rows
        for hour, hour_utc, day, month in rows:
            t = datetime.fromtimestamp(hour, tz=UTC)
            assert hour_utc == t.strftime("%Y-%m-%dT%H:00:00Z")
            assert day == t.strftime("%Y-%m-%d") and month == t.strftime("%Y-%m")
        _, tenants = query(url, "SELECT month, tenant FROM v_cost_by_tenant_month")
        assert {t for _, t in tenants} == {"acme", "globex", None}
        assert {m for m, _ in tenants} == {"2026-11"}


def expected_request_costs(url: str) -> dict[str, list[float | None]]:
    """Cost of each request per model, computed here from the calls."""
    _, calls = run_query(
        url,
        "SELECT r.id, m.name, r.request_id, r.energy_cost, r.capacity_cost "
        "FROM requests r JOIN models m ON m.id = r.model_id",
    )
    groups: dict[tuple[str, Any], list[Any]] = defaultdict(list)
    for call_id, model, request_id, energy, capacity in calls:
        key = request_id if request_id is not None else ("lone call", call_id)
        groups[(model, key)].append((energy, capacity))
    out: dict[str, list[float | None]] = defaultdict(list)
    for (model, _), parts in groups.items():
        known = all(e is not None and c is not None for e, c in parts)
        out[model].append(sum(e + c for e, c in parts) if known else None)
    return out


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered) / 100) - 1]


def test_request_percentiles_are_nearest_rank(stores: dict[str, str]) -> None:
    expected = expected_request_costs(stores["sqlite"])
    assert set(expected) == {"resnet50", "encoder", "mlp"}
    for url in stores.values():
        _, rows = run_query(  # not rounded: compared to 1e-9 here
            url,
            "SELECT model, requests, priced_requests, unpriced_requests, cost, "
            "p50_cost, p95_cost, p99_cost FROM v_request_cost_by_model",
        )
        assert len(rows) == 3
        for model, n, priced, unpriced, cost, p50, p95, p99 in rows:
            costs = expected[model]
            known = [c for c in costs if c is not None]
            assert n == len(costs) and priced == len(known) and unpriced == n - len(known)
            assert 0 < unpriced < n  # every seventh call's capacity is unknown
            assert math.isclose(cost, math.fsum(known), rel_tol=1e-9)
            for p, got in ((50, p50), (95, p95), (99, p99)):
                assert math.isclose(got, nearest_rank(known, p), rel_tol=1e-9), (model, p)
            assert p50 <= p95 <= p99


def test_requests_group_calls_across_models(stores: dict[str, str]) -> None:
    _, rows = query(
        stores["sqlite"],
        "SELECT request_id, COUNT(*), SUM(calls) FROM v_request_cost "
        "WHERE request_id IS NOT NULL GROUP BY request_id HAVING COUNT(*) > 1",
    )
    assert rows, "no request called two models: the test data no longer covers them"
    _, lone = query(
        stores["sqlite"],
        "SELECT COUNT(*) FROM v_request_cost WHERE request_id IS NULL AND calls <> 1",
    )
    assert lone == [(0,)]


def test_views_are_created_by_0002_and_dropped_on_downgrade(db_url: str) -> None:
    engine = open_engine(db_url)
    migrate.upgrade(engine)
    assert set(VIEW_NAMES) <= set(inspect(engine).get_view_names())
    migrate.downgrade(engine, "0001")
    assert not set(VIEW_NAMES) & set(inspect(engine).get_view_names())
    assert "usage_hourly" in inspect(engine).get_table_names()
    migrate.upgrade(engine, "0002")
    names_0002 = {v.name for v in VIEWS_0002}
    assert names_0002 == set(inspect(engine).get_view_names())
    migrate.upgrade(engine)
    assert set(VIEW_NAMES) == names_0002 | {v.name for v in VIEWS_0008}
    assert set(VIEW_NAMES) <= set(inspect(engine).get_view_names())
    with engine.connect() as conn:  # empty, but every view runs
        for view in VIEW_NAMES:
            assert conn.execute(text(f"SELECT COUNT(*) FROM {view}")).scalar_one() == 0
    migrate.downgrade(engine, "base")
    assert not inspect(engine).get_view_names()
    engine.dispose()


def test_token_view_counts_each_requests_tokens_once(stores: dict[str, str]) -> None:
    """v_token_cost against the raw calls, folded into requests here in Python.

    The truth: per (model, tenant, request) the largest tokens any call carries
    (a call without a request id is its own request), summed per model and
    tenant; energy is the calls' sum, J/token the one over the other.
    """
    for url in stores.values():
        _, calls = run_query(
            url,
            "SELECT m.name, r.tenant, r.request_id, r.id, r.tokens_in, r.tokens_out, r.energy_j "
            "FROM requests r JOIN models m ON m.id = r.model_id",
        )
        per_request: dict[tuple[Any, ...], list[float]] = {}
        for model, tenant, request_id, call_id, t_in, t_out, energy in calls:
            key = (model, tenant, request_id if request_id is not None else f"#{call_id}")
            acc = per_request.setdefault(key, [0, 0, 0.0])
            acc[0] = max(acc[0], t_in or 0)
            acc[1] = max(acc[1], t_out or 0)
            acc[2] += energy
        want: dict[tuple[Any, ...], list[float]] = defaultdict(lambda: [0, 0, 0.0])
        for (model, tenant, _), (t_in, t_out, energy) in per_request.items():
            w = want[(model, tenant)]
            w[0] += t_in
            w[1] += t_out
            w[2] += energy
        _, rows = run_query(
            url,
            "SELECT model, tenant, SUM(tokens_in), SUM(tokens_out), SUM(energy_kwh), "
            "SUM(requests) FROM v_token_cost GROUP BY model, tenant",
        )
        got = {(m, t): (i or 0, o or 0, kwh * 3_600_000.0, n) for m, t, i, o, kwh, n in rows}
        assert set(got) == set(want)
        assert got[("encoder", "globex")][0] > 0  # the data has tokens to count
        for key, (t_in, t_out, energy) in want.items():
            assert got[key][:2] == (t_in, t_out), key
            assert got[key][2] == pytest.approx(energy, rel=1e-9)
        _, ratios = run_query(
            url,
            "SELECT SUM(energy_kwh) * 3600000.0 / (SUM(tokens_in) + SUM(tokens_out)), "
            "MIN(j_per_token), MAX(j_per_token) FROM v_token_cost WHERE model = 'encoder'",
        )
        ((overall, lo, hi),) = ratios
        assert lo <= overall <= hi  # the per-day ratios bracket the whole one

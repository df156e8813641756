"""`infermeter export focus`: FOCUS 1.2 columns, types and values, and totals equal to the store's.

The store holds both H100 recordings (tests/support/chargeback_data.py): tenants,
multi-call requests, and a host whose energy is unpriced.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from support import run_cli
from support.chargeback_data import filled_stores

from infermeter.errors import InfermeterError
from infermeter.export import focus
from infermeter.store.engine import open_engine

MONTH = "2026-11"
MONTH_START = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
# FOCUS 1.2's Mandatory columns, as the specification's Content Constraints list them.
MANDATORY = {
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
}
# FOCUS 1.2's Recommended columns ("is RECOMMENDED to be present"); every other column
# is Conditional ("MUST be present ... when"). Same source: the 1.2 requirement text, and
# the CostAndUsage-D-* presence rules of focus_validator's model-1.2.json.
RECOMMENDED = {"AvailabilityZone", "ChargeFrequency", "InvoiceId", "ServiceSubcategory"}
# The columns whose 1.2 requirement text says "MUST NOT be null" without a condition.
NOT_NULL = {
    "BilledCost",
    "BillingAccountId",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingCurrency",
    "PricingCurrencyEffectiveCost",
    "ProviderName",
    "PublisherName",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
}
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
DECIMAL = re.compile(r"-?\d+(\.\d+)?")


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with filled_stores(tmp_path_factory.mktemp("focus")) as urls:
        yield urls


def store_sums(url: str) -> dict[str, Any]:
    engine = open_engine(url)
    with engine.connect() as conn:
        hourly = conn.execute(
            text(
                "SELECT SUM(energy_j), SUM(energy_cost), SUM(capacity_cost), SUM(carbon_g), "
                "SUM(CASE WHEN energy_cost IS NULL OR capacity_cost IS NULL OR carbon_g IS NULL "
                "THEN 1 ELSE 0 END) FROM usage_hourly WHERE hour >= :s AND hour < :e"
            ),
            {"s": MONTH_START, "e": MONTH_END},
        ).one()
        idle = conn.execute(
            text(
                "SELECT SUM(energy_cost), SUM(capacity_cost) FROM usage_hourly "
                "WHERE bucket IN ('idle', 'keepwarm') AND hour >= :s AND hour < :e"
            ),
            {"s": MONTH_START, "e": MONTH_END},
        ).one()
        requests = conn.execute(
            text("SELECT COUNT(*), SUM(items) FROM v_request_cost WHERE t0 >= :s AND t0 < :e"),
            {"s": MONTH_START, "e": MONTH_END},
        ).one()
    engine.dispose()
    return {
        "energy_j": hourly[0],
        "energy_cost": hourly[1],
        "capacity_cost": hourly[2],
        "carbon_g": hourly[3],
        "unpriced_rows": int(hourly[4]),
        "idle_cost": (idle[0] or 0.0) + (idle[1] or 0.0),
        "requests": int(requests[0]),
        "items": int(requests[1]),
    }


def check_value(column: focus.Column, value: str) -> None:
    """One CSV cell against the column's FOCUS data type, nullability and allowed values."""
    where = f"{column.name}={value!r}"
    if value == "":
        assert column.nullable, f"{column.name} must not be null"
        return
    if column.allowed:
        assert value in column.allowed, where
    if column.data_type is focus.DataType.DECIMAL:
        assert DECIMAL.fullmatch(value), f"{where}: not a plain decimal"
        try:
            Decimal(value)
        except InvalidOperation:
            pytest.fail(where)
    elif column.data_type is focus.DataType.INTEGER:
        assert re.fullmatch(r"\d+", value), where
    elif column.data_type is focus.DataType.DATETIME:
        assert DATETIME.fullmatch(value), where
    elif column.data_type is focus.DataType.KEY_VALUE:
        assert isinstance(json.loads(value), dict), where


def read_csv(text_: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text_))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def test_the_column_list_is_focus_1_2() -> None:
    names = [c.name for c in focus.SPEC_COLUMNS]
    assert len(names) == 57 and len(set(names)) == 57
    assert names == sorted(names)  # the specification lists them alphabetically
    assert {c.name for c in focus.SPEC_COLUMNS if c.level is focus.Level.MANDATORY} == MANDATORY
    levels = {c.name: c.level for c in focus.SPEC_COLUMNS}
    assert {n for n, level in levels.items() if level is focus.Level.RECOMMENDED} == RECOMMENDED
    assert {n for n, level in levels.items() if level is focus.Level.CONDITIONAL} == (
        set(names) - MANDATORY - RECOMMENDED
    )
    assert {c.name for c in focus.SPEC_COLUMNS if not c.nullable} == NOT_NULL
    assert "focus.finops.org/focus-specification/v1-2" in focus.SPEC_SOURCE
    exported = [c.name for c in focus.EXPORT_COLUMNS]
    assert set(exported) >= MANDATORY
    spec_part = [n for n in exported if not n.startswith("x_")]
    custom = exported[len(spec_part) :]
    assert exported[: len(spec_part)] == spec_part  # FOCUS columns before custom ones
    assert all(n.startswith("x_") for n in custom) and set(custom).isdisjoint(names)
    assert {"x_EnergyKWh", "x_CarbonKgCO2e", "x_Requests", "x_Items", "x_IdleShare"} <= set(custom)
    for name in spec_part:  # the export's record of a spec column is the spec's
        assert focus.SPEC_BY_NAME[name] in focus.EXPORT_COLUMNS


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_csv_export_follows_the_spec_and_totals_the_store(
    stores: dict[str, str], cli_env: dict[str, str], db: str
) -> None:
    r = run_cli(cli_env, "--db", stores[db], "export", "focus", "--month", MONTH)
    assert r.returncode == 0, r.stderr
    header, rows = read_csv(r.stdout)
    assert header == [c.name for c in focus.EXPORT_COLUMNS]
    assert rows
    for row in rows:
        for column in focus.EXPORT_COLUMNS:
            check_value(column, row[column.name])
    # Piped: the one summary line on stderr, no progress bar.
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(f"exported {len(rows)} FOCUS 1.2 rows for {MONTH}")

    keys = [(row["ChargePeriodStart"], row["ResourceName"], row["SubAccountId"]) for row in rows]
    assert len(set(keys)) == len(keys)  # one row per hour x model x tenant
    for row in rows:
        start = datetime.strptime(row["ChargePeriodStart"], "%Y-%m-%dT%H:%M:%SZ")
        end = datetime.strptime(row["ChargePeriodEnd"], "%Y-%m-%dT%H:%M:%SZ")
        assert start.minute == 0 and (end - start).total_seconds() == 3600
        assert row["BillingPeriodStart"] == "2026-11-01T00:00:00Z"
        assert row["BillingPeriodEnd"] == "2026-12-01T00:00:00Z"
        assert row["BillingCurrency"] == "USD"
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"] == row["ContractedCost"]
        assert row["ServiceCategory"] == "AI and Machine Learning"
        assert (row["SubAccountType"] == "Tenant") == (row["SubAccountId"] != "")
        assert (row["ResourceId"] == f"model/{row['ResourceName']}") == (row["ResourceName"] != "")

    want = store_sums(stores[db])
    billed = math.fsum(float(row["BilledCost"]) for row in rows)
    assert math.isclose(billed, want["energy_cost"] + want["capacity_cost"], rel_tol=1e-9)
    kwh = math.fsum(float(row["x_EnergyKWh"]) for row in rows)
    assert math.isclose(kwh * focus.J_PER_KWH, want["energy_j"], rel_tol=1e-9)
    carbon = math.fsum(float(row["x_CarbonKgCO2e"] or 0) for row in rows)
    assert math.isclose(carbon * 1000, want["carbon_g"], rel_tol=1e-9)
    assert sum(int(row["x_Requests"]) for row in rows) == want["requests"] > 3000
    assert sum(int(row["x_Items"]) for row in rows) == want["items"]
    assert sum(int(row["x_UnpricedRows"]) for row in rows) == want["unpriced_rows"] > 0
    # Idle and keep-warm are in the rows, and x_IdleShare finds them again.
    idle = math.fsum(
        float(row["EffectiveCost"]) * float(row["x_IdleShare"])
        for row in rows
        if row["x_IdleShare"]
    )
    assert want["idle_cost"] > 0 and math.isclose(idle, want["idle_cost"], rel_tol=1e-9)
    # The encoder host knows no electricity price: its hour bills capacity only.
    assert {row["x_CostBasis"] for row in rows} == {"capacity", "energy+capacity"}
    assert {row["SubAccountId"] for row in rows} == {"acme", "globex", ""}


def test_both_databases_export_the_same(stores: dict[str, str], cli_env: dict[str, str]) -> None:
    exports = [
        read_csv(run_cli(cli_env, "--db", url, "export", "focus", "--month", MONTH).stdout)[1]
        for url in stores.values()
    ]
    types = {c.name: c.data_type for c in focus.EXPORT_COLUMNS}
    assert len(exports[0]) == len(exports[1]) > 0
    for a, b in zip(*exports, strict=True):
        assert a.keys() == b.keys()
        for name, value in a.items():
            if types[name] is focus.DataType.DECIMAL and value and b[name]:
                assert math.isclose(float(value), float(b[name]), rel_tol=1e-9), name
            else:
                assert value == b[name], name


def test_csv_and_parquet_files(
    stores: dict[str, str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    url = stores["sqlite"]
    stdout = run_cli(cli_env, "--db", url, "export", "focus", "--month", MONTH).stdout
    out_csv = tmp_path / "bill.csv"
    r = run_cli(cli_env, "--db", url, "export", "focus", "--month", MONTH, "--out", str(out_csv))
    assert r.returncode == 0, r.stderr
    assert out_csv.read_text() == stdout
    assert r.stdout.startswith("exported ") and str(out_csv) in r.stdout

    out_pq = tmp_path / "bill.parquet"
    r = run_cli(cli_env, "--db", url, "export", "focus", "--month", MONTH, "--out", str(out_pq))
    assert r.returncode == 0, r.stderr
    table = pq.read_table(out_pq)
    assert table.column_names == [c.name for c in focus.EXPORT_COLUMNS]
    want_type = {
        focus.DataType.DECIMAL: pa.float64(),
        focus.DataType.STRING: pa.string(),
        focus.DataType.KEY_VALUE: pa.string(),
        focus.DataType.DATETIME: pa.timestamp("ms", tz="UTC"),
        focus.DataType.INTEGER: pa.int64(),
    }
    for column in focus.EXPORT_COLUMNS:
        field = table.schema.field(column.name)
        assert field.type == want_type[column.data_type], column.name
        if not column.nullable:
            assert table.column(column.name).null_count == 0, column.name
    csv_rows = read_csv(stdout)[1]
    assert table.num_rows == len(csv_rows)
    billed = pa.compute.sum(table.column("BilledCost")).as_py()
    assert math.isclose(billed, sum(float(r["BilledCost"]) for r in csv_rows), rel_tol=1e-12)
    starts = table.column("ChargePeriodStart").to_pylist()
    assert [s.strftime("%Y-%m-%dT%H:%M:%SZ") for s in starts] == [
        r["ChargePeriodStart"] for r in csv_rows
    ]


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "November", "2026-00", "26-11", ""])
def test_bad_month_is_one_line(stores: dict[str, str], cli_env: dict[str, str], month: str) -> None:
    r = run_cli(cli_env, "--db", stores["sqlite"], "export", "focus", "--month", month)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip() == (
        f"infermeter: error: --month must be a UTC calendar month as YYYY-MM, not {month!r}"
    )


def test_bad_out_suffix_and_missing_store(
    stores: dict[str, str], cli_env: dict[str, str], tmp_path: Path
) -> None:
    r = run_cli(
        cli_env, "--db", stores["sqlite"], "export", "focus", "--month", MONTH, "--out", "x.xls"
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "infermeter: error: --out must end in .csv or .parquet, not 'x.xls'"
    ]
    absent = tmp_path / "absent.db"
    r = run_cli(cli_env, "--db", f"sqlite:///{absent}", "export", "focus", "--month", MONTH)
    assert r.returncode == 2 and r.stderr.strip() == f"infermeter: error: no store at {absent}"
    assert not absent.exists()


def test_a_month_without_data_is_just_the_header(
    stores: dict[str, str], cli_env: dict[str, str]
) -> None:
    r = run_cli(cli_env, "--db", stores["postgresql"], "export", "focus", "--month", "2026-10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [",".join(c.name for c in focus.EXPORT_COLUMNS)]


def test_month_bounds_are_utc() -> None:
    assert focus.parse_month("2026-11") == (MONTH_START, MONTH_END)
    start, end = focus.parse_month("2026-12")
    assert datetime.fromtimestamp(end, tz=UTC) == datetime(2027, 1, 1, tzinfo=UTC)
    assert end - start == 31 * 86400
    with pytest.raises(InfermeterError):
        focus.parse_month("2026-11-01")


def test_two_currencies_need_one_chosen(stores: dict[str, str], tmp_path: Path) -> None:
    copy = tmp_path / "two-currencies.db"
    shutil.copy(stores["sqlite"].removeprefix("sqlite:///"), copy)
    engine = open_engine(f"sqlite:///{copy}")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO price_cards (version, currency, body, created_at) "
                "VALUES ('eur-card', 'EUR', '{}', 0)"
            )
        )
    with pytest.raises(InfermeterError, match="EUR, USD"):
        focus.build_export(engine, MONTH)
    data = focus.build_export(engine, MONTH, focus.ExportOptions(currency="EUR"))
    assert {r["BillingCurrency"] for r in data.rows} == {"EUR"}
    engine.dispose()


def test_numbers_are_written_without_exponents() -> None:
    column = focus.SPEC_BY_NAME["BilledCost"]
    assert focus.csv_value(column, 1.2e-07) == "0.00000012"
    assert focus.csv_value(column, 12345678.5) == "12345678.5"
    assert focus.csv_value(column, 0.0) == "0.0"
    when = focus.SPEC_BY_NAME["ChargePeriodStart"]
    assert focus.csv_value(when, MONTH_START) == "2026-11-01T00:00:00Z"

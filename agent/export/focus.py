"""FOCUS 1.2 export: one UTC month of the store as FinOps cost and usage rows.

FOCUS (the FinOps Open Cost and Usage Specification) is what FinOps tools
ingest, so the chargeback of inference can sit beside the cloud bills. This
module keeps the specification's column list (``SPEC_COLUMNS``, with its
source), maps the store onto it, and writes CSV or Parquet.

Mapping decisions (contrib/sql/README.md has the table):

- One row per UTC hour x model x tenant, read from the hourly rollups
  (``usage_hourly``), which the agent keeps after raw shares are pruned.
  Rows whose model is NULL are the energy no model explains: the idle
  baseline, work of unknown processes, and processes with no model.
- Idle and keep-warm cost stay in the rows, never dropped or spread:
  keep-warm is in the row of the model (and tenant) that held the device,
  idle in the model-less row; ``x_IdleShare`` is the fraction of a row's
  cost that is idle or keep-warm. So the export's totals equal the store's.
- Costs: ``BilledCost = EffectiveCost = ListCost = ContractedCost`` = energy
  cost + capacity cost (an internal chargeback has no discounts or
  commitments). FOCUS forbids NULL costs: a row's cost is the sum of what is
  priced, ``x_UnpricedRows`` counts the hourly rows that lacked a price and
  ``x_CostBasis`` names the components the cost includes ("energy+capacity",
  "energy", "capacity" or "none"), so nothing unpriced passes as free.
- ``PricingQuantity``/``ConsumedQuantity`` are the device energy in kWh (both
  cost components are allocated by energy); ``x_EnergyKWh`` repeats it,
  ``x_CarbonKgCO2e`` is the carbon (PUE included), ``x_Requests``/``x_Items``
  the requests (calls sharing a request_id, counted once per model) that
  started in the hour, and the items they carried.
- Tokens stay custom columns: ``ConsumedUnit`` is the unit both cost
  components are allocated by (kWh), and a FOCUS row has one. ``x_TokensIn``
  / ``x_TokensOut`` are those requests' tokens (each request's once, its
  final counts), ``x_JPerToken`` the row's energy per token, and
  ``x_CostPer1MTokensIn`` / ``x_CostPer1MTokensOut`` the row's whole cost
  per million input (output) tokens, NULL without such tokens.
- Tenants are sub accounts (``SubAccountId``), models resources
  (``ResourceId`` ``model/<name>``); both are also in ``Tags``.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, and_, case, func, select

from infermeter.csv_out import RowWriter
from infermeter.errors import InfermeterError
from infermeter.store.models import ModelRow, PriceCardRow, RequestRow, UsageHourly
from infermeter.store.request_sql import hour_sql

FOCUS_VERSION = "1.2"
SPEC_SOURCE = (
    "FOCUS 1.2, https://focus.finops.org/focus-specification/v1-2/ ; the column files "
    "specification/columns/*.md of github.com/FinOps-Open-Cost-and-Usage-Spec/FOCUS_Spec "
    "(tag v1.2), requirement text of each column; presence levels checked against the "
    "CostAndUsage-D-* presence rules of github.com/finopsfoundation/focus_validator "
    "focus_validator/rules/model-1.2.json (FOCUSVersion 1.2)"
)
J_PER_KWH = 3_600_000.0


class Level(StrEnum):
    MANDATORY = "Mandatory"
    RECOMMENDED = "Recommended"
    CONDITIONAL = "Conditional"


class DataType(StrEnum):
    DECIMAL = "Decimal"
    STRING = "String"
    DATETIME = "Date/Time"
    KEY_VALUE = "Key-Value Format"
    INTEGER = "Integer"  # custom x_ columns only; FOCUS itself has none


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    level: Level
    data_type: DataType
    nullable: bool
    allowed: tuple[str, ...] = ()  # empty: any value


M, R, C = Level.MANDATORY, Level.RECOMMENDED, Level.CONDITIONAL
DEC, STR, DT, KV = DataType.DECIMAL, DataType.STRING, DataType.DATETIME, DataType.KEY_VALUE

SERVICE_CATEGORIES = (
    "AI and Machine Learning",
    "Analytics",
    "Business Applications",
    "Compute",
    "Databases",
    "Developer Tools",
    "Multicloud",
    "Identity",
    "Integration",
    "Internet of Things",
    "Management and Governance",
    "Media",
    "Migration",
    "Mobile",
    "Networking",
    "Security",
    "Storage",
    "Web",
    "Other",
)
# The subcategories of "AI and Machine Learning", the only category this exporter uses.
AI_SUBCATEGORIES = (
    "AI Platforms",
    "Bots",
    "Generative AI",
    "Machine Learning",
    "Natural Language Processing",
    "Other (AI and Machine Learning)",
)

# Every column of FOCUS 1.2 (57), alphabetical as the specification lists them.
# Levels are the 1.2 presence rules: "MUST be present" is Mandatory, "MUST be present
# ... when <the provider supports X>" Conditional, "is RECOMMENDED to be present"
# Recommended (InvoiceId, new in 1.2, is Recommended, not Conditional). ``nullable``
# follows the requirement text, which wins where 1.2's Content Constraints table
# disagrees: PricingCurrency and PricingCurrencyEffectiveCost say "MUST NOT be null"
# although their tables say "Allows nulls: True" (a slip: a later revision of the
# PricingCurrency file changes its table to False).
SPEC_COLUMNS: tuple[Column, ...] = (
    Column("AvailabilityZone", R, STR, True),
    Column("BilledCost", M, DEC, False),
    Column("BillingAccountId", M, STR, False),
    Column("BillingAccountName", M, STR, True),
    Column("BillingAccountType", C, STR, True),
    Column("BillingCurrency", M, STR, False),
    Column("BillingPeriodEnd", M, DT, False),
    Column("BillingPeriodStart", M, DT, False),
    Column("CapacityReservationId", C, STR, True),
    Column("CapacityReservationStatus", C, STR, True, ("Used", "Unused")),
    Column("ChargeCategory", M, STR, False, ("Usage", "Purchase", "Tax", "Credit", "Adjustment")),
    Column("ChargeClass", M, STR, True, ("Correction",)),
    Column("ChargeDescription", M, STR, True),
    Column("ChargeFrequency", R, STR, False, ("One-Time", "Recurring", "Usage-Based")),
    Column("ChargePeriodEnd", M, DT, False),
    Column("ChargePeriodStart", M, DT, False),
    Column("CommitmentDiscountCategory", C, STR, True, ("Spend", "Usage")),
    Column("CommitmentDiscountId", C, STR, True),
    Column("CommitmentDiscountName", C, STR, True),
    Column("CommitmentDiscountQuantity", C, DEC, True),
    Column("CommitmentDiscountStatus", C, STR, True, ("Used", "Unused")),
    Column("CommitmentDiscountType", C, STR, True),
    Column("CommitmentDiscountUnit", C, STR, True),
    Column("ConsumedQuantity", C, DEC, True),
    Column("ConsumedUnit", C, STR, True),
    Column("ContractedCost", M, DEC, False),
    Column("ContractedUnitPrice", C, DEC, True),
    Column("EffectiveCost", M, DEC, False),
    Column("InvoiceId", R, STR, True),
    Column("InvoiceIssuerName", M, STR, False),
    Column("ListCost", M, DEC, False),
    Column("ListUnitPrice", C, DEC, True),
    Column("PricingCategory", C, STR, True, ("Standard", "Dynamic", "Committed", "Other")),
    Column("PricingCurrency", C, STR, False),
    Column("PricingCurrencyContractedUnitPrice", C, DEC, True),
    Column("PricingCurrencyEffectiveCost", C, DEC, False),
    Column("PricingCurrencyListUnitPrice", C, DEC, True),
    Column("PricingQuantity", M, DEC, True),
    Column("PricingUnit", M, STR, True),
    Column("ProviderName", M, STR, False),
    Column("PublisherName", M, STR, False),
    Column("RegionId", C, STR, True),
    Column("RegionName", C, STR, True),
    Column("ResourceId", C, STR, True),
    Column("ResourceName", C, STR, True),
    Column("ResourceType", C, STR, True),
    Column("ServiceCategory", M, STR, False, SERVICE_CATEGORIES),
    Column("ServiceName", M, STR, False),
    Column("ServiceSubcategory", R, STR, False, AI_SUBCATEGORIES),
    Column("SkuId", C, STR, True),
    Column("SkuMeter", C, STR, True),
    Column("SkuPriceDetails", C, KV, True),
    Column("SkuPriceId", C, STR, True),
    Column("SubAccountId", C, STR, True),
    Column("SubAccountName", C, STR, True),
    Column("SubAccountType", C, STR, True),
    Column("Tags", C, KV, True),
)
SPEC_BY_NAME = {c.name: c for c in SPEC_COLUMNS}

# The optional columns this export fills; every Mandatory column is always there.
# InvoiceId (Recommended) is left out: an internal chargeback issues no invoice, and
# 1.2 requires InvoiceId to be null for charges without one, so it would be all empty.
# ServiceSubcategory and ChargeFrequency, the other Recommended columns that apply,
# are filled.
EMITTED_OPTIONAL = (
    "ChargeFrequency",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceSubcategory",
    "SubAccountId",
    "SubAccountName",
    "SubAccountType",
    "Tags",
)
X = Level.CONDITIONAL  # custom columns: the level is meaningless, kept for one record type
CUSTOM_COLUMNS: tuple[Column, ...] = (
    Column("x_EnergyKWh", X, DEC, False),
    Column("x_EnergyCost", X, DEC, True),
    Column("x_CapacityCost", X, DEC, True),
    Column("x_CarbonKgCO2e", X, DEC, True),
    Column("x_Requests", X, DataType.INTEGER, False),
    Column("x_Items", X, DataType.INTEGER, False),
    Column("x_IdleShare", X, DEC, True),
    Column("x_CostBasis", X, STR, False, ("energy+capacity", "energy", "capacity", "none")),
    Column("x_UnpricedRows", X, DataType.INTEGER, False),
    Column("x_EnergyMethod", X, STR, False, ("measured", "integrated", "estimated")),
    Column("x_TokensIn", X, DataType.INTEGER, False),
    Column("x_TokensOut", X, DataType.INTEGER, False),
    Column("x_JPerToken", X, DEC, True),
    Column("x_CostPer1MTokensIn", X, DEC, True),
    Column("x_CostPer1MTokensOut", X, DEC, True),
)
# FOCUS columns first (the specification's order), then the custom ones.
EXPORT_COLUMNS: tuple[Column, ...] = (
    *(c for c in SPEC_COLUMNS if c.level is Level.MANDATORY or c.name in EMITTED_OPTIONAL),
    *CUSTOM_COLUMNS,
)

_METHOD_RANK = {"estimated": 0, "integrated": 1, "measured": 2}


@dataclass(frozen=True, slots=True)
class ExportOptions:
    provider: str = "infermeter"  # ProviderName, PublisherName, InvoiceIssuerName
    billing_account: str = "infermeter"  # BillingAccountId and BillingAccountName
    service_name: str = "AI Inference"
    currency: str | None = None  # None: the stored price cards' currency


def parse_month(text: str) -> tuple[float, float]:
    """``YYYY-MM`` as the UTC epoch seconds of its first instant and of the next month's."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1970:
        raise InfermeterError(f"--month must be a UTC calendar month as YYYY-MM, not {text!r}")
    year, month = int(m.group(1)), int(m.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


@dataclass
class _Group:
    energy_j: float = 0.0
    energy_cost: float = 0.0
    capacity_cost: float = 0.0
    carbon_g: float = 0.0
    idle_cost: float = 0.0
    energy_priced: int = 0
    capacity_priced: int = 0
    carbon_known: int = 0
    rows: int = 0
    unpriced_rows: int = 0
    method: str = "measured"
    requests: int = 0
    items: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the month, as the store has them and as the export wrote them."""

    energy_j: float
    energy_cost: float | None
    capacity_cost: float | None
    carbon_g: float | None
    rows: int


@dataclass
class FocusExport:
    month_start: float
    month_end: float
    currency: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def totals(self) -> Totals:
        def total(col: str) -> float | None:
            values = [r[col] for r in self.rows if r[col] is not None]
            return math.fsum(values) if values else None

        return Totals(
            energy_j=math.fsum(r["x_EnergyKWh"] for r in self.rows) * J_PER_KWH,
            energy_cost=total("x_EnergyCost"),
            capacity_cost=total("x_CapacityCost"),
            carbon_g=(lambda c: None if c is None else c * 1000.0)(total("x_CarbonKgCO2e")),
            rows=len(self.rows),
        )


def _currency(engine: Engine, wanted: str | None) -> str:
    if wanted:
        return wanted
    with engine.connect() as conn:
        currencies = sorted(set(conn.execute(select(PriceCardRow.currency)).scalars()))
    if len(currencies) > 1:
        raise InfermeterError(
            f"the store holds price cards in {', '.join(currencies)}: one FOCUS dataset has "
            "one billing currency; pass --currency"
        )
    return currencies[0] if currencies else "USD"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_export(
    engine: Engine,
    month: str,
    options: ExportOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FocusExport:
    """Read one UTC month of the store into FOCUS rows (``progress(done, total)``)."""
    options = options or ExportOptions()
    start, end = parse_month(month)
    currency = _currency(engine, options.currency)
    groups: dict[tuple[float, str | None, str | None], _Group] = {}
    h = UsageHourly
    with engine.connect() as conn:
        total = int(
            conn.execute(
                select(func.count()).select_from(h).where(h.hour >= start, h.hour < end)
            ).scalar_one()
        )
        q = (
            select(
                h.hour,
                ModelRow.name,
                h.tenant,
                h.bucket,
                h.method,
                h.energy_j,
                h.energy_cost,
                h.capacity_cost,
                h.carbon_g,
            )
            .outerjoin(ModelRow, ModelRow.id == h.model_id)
            .where(h.hour >= start, h.hour < end)
        )
        done = 0
        for part in conn.execution_options(yield_per=20_000).execute(q).partitions():
            for r in part:
                _add_usage(groups, r)
            done += len(part)
            if progress is not None:
                progress(done, total)
        for model, tenant, hour, requests, items, tokens_in, tokens_out in conn.execute(
            _requests_query(start, end, conn.dialect.name)
        ):
            g = groups.setdefault((float(hour), model, tenant), _Group())
            g.requests += int(requests)
            g.items += int(items or 0)
            g.tokens_in += int(tokens_in or 0)
            g.tokens_out += int(tokens_out or 0)
    export = FocusExport(start, end, currency)
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "", k[2] or "")):
        export.rows.append(_row(key, groups[key], export, options))
    return export


def _add_usage(groups: dict[tuple[float, str | None, str | None], _Group], r: Any) -> None:
    g = groups.setdefault((float(r.hour), r.name, r.tenant), _Group())
    g.rows += 1
    g.energy_j += r.energy_j
    if r.energy_cost is not None:
        g.energy_cost += r.energy_cost
        g.energy_priced += 1
    if r.capacity_cost is not None:
        g.capacity_cost += r.capacity_cost
        g.capacity_priced += 1
    if r.carbon_g is not None:
        g.carbon_g += r.carbon_g
        g.carbon_known += 1
    if r.energy_cost is None or r.capacity_cost is None or r.carbon_g is None:
        g.unpriced_rows += 1
    if r.bucket in ("idle", "keepwarm"):
        g.idle_cost += (r.energy_cost or 0.0) + (r.capacity_cost or 0.0)
    if _METHOD_RANK.get(r.method, 0) < _METHOD_RANK[g.method]:
        g.method = r.method


def _requests_query(start: float, end: float, dialect: str) -> Any:
    """Requests per model, tenant and the hour their first call in the month started.

    Rows: (model, tenant, hour, requests, items, tokens_in, tokens_out); a
    request's tokens are the largest any of its calls carries. Calls are grouped into
    requests, then requests counted per hour, both in the database: a
    month of millions of calls reaches Python as a few thousand rows.
    """
    r = RequestRow
    per_request = (
        select(
            ModelRow.name.label("model"),
            func.min(r.tenant).label("tenant"),
            func.min(r.t0).label("t0"),
            func.sum(r.items).label("items"),
            func.max(r.tokens_in).label("tokens_in"),
            func.max(r.tokens_out).label("tokens_out"),
        )
        .join(ModelRow, ModelRow.id == r.model_id)
        .where(and_(r.t0 >= start, r.t0 < end))
        .group_by(r.model_id, ModelRow.name, r.request_id, case((r.request_id.is_(None), r.id)))
        .subquery()
    )
    q = per_request.c
    hour = hour_sql(q.t0, dialect).label("hour")
    return select(
        q.model,
        q.tenant,
        hour,
        func.count(),
        func.sum(q["items"]),
        func.sum(q.tokens_in),
        func.sum(q.tokens_out),
    ).group_by(q.model, q.tenant, hour)


def _row(
    key: tuple[float, str | None, str | None],
    g: _Group,
    export: FocusExport,
    options: ExportOptions,
) -> dict[str, Any]:
    hour, model, tenant = key
    energy_cost = g.energy_cost if g.energy_priced else None
    capacity_cost = g.capacity_cost if g.capacity_priced else None
    cost = (energy_cost or 0.0) + (capacity_cost or 0.0)
    basis = "+".join(
        name
        for name, on in (("energy", energy_cost), ("capacity", capacity_cost))
        if on is not None
    )
    kwh = g.energy_j / J_PER_KWH
    tokens = g.tokens_in + g.tokens_out
    tags = {k: v for k, v in (("model", model), ("tenant", tenant)) if v is not None}
    if model is not None:
        what = f"model {model}" + (f" for tenant {tenant}" if tenant else "")
        description = f"Inference energy and device capacity of {what}, keep-warm included"
    else:
        description = (
            "Device energy and capacity no model explains (idle baseline, unknown work)"
            + (f" for tenant {tenant}" if tenant else "")
        )
    return {
        "BilledCost": cost,
        "BillingAccountId": options.billing_account,
        "BillingAccountName": options.billing_account,
        "BillingCurrency": export.currency,
        "BillingPeriodEnd": export.month_end,
        "BillingPeriodStart": export.month_start,
        "ChargeCategory": "Usage",
        "ChargeClass": None,
        "ChargeDescription": description,
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": hour + 3600.0,
        "ChargePeriodStart": hour,
        "ConsumedQuantity": kwh,
        "ConsumedUnit": "kWh",
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": options.provider,
        "ListCost": cost,
        "PricingQuantity": kwh,
        "PricingUnit": "kWh",
        "ProviderName": options.provider,
        "PublisherName": options.provider,
        "ResourceId": f"model/{model}" if model is not None else None,
        "ResourceName": model,
        "ResourceType": "Model" if model is not None else None,
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": options.service_name,
        "ServiceSubcategory": "Machine Learning",
        "SubAccountId": tenant,
        "SubAccountName": tenant,
        "SubAccountType": "Tenant" if tenant is not None else None,
        "Tags": tags or None,
        "x_EnergyKWh": kwh,
        "x_EnergyCost": energy_cost,
        "x_CapacityCost": capacity_cost,
        "x_CarbonKgCO2e": g.carbon_g / 1000.0 if g.carbon_known else None,
        "x_Requests": g.requests,
        "x_Items": g.items,
        "x_IdleShare": g.idle_cost / cost if cost > 0 else None,
        "x_CostBasis": basis or "none",
        "x_UnpricedRows": g.unpriced_rows,
        "x_EnergyMethod": g.method,
        "x_TokensIn": g.tokens_in,
        "x_TokensOut": g.tokens_out,
        "x_JPerToken": g.energy_j / tokens if tokens else None,
        "x_CostPer1MTokensIn": cost * 1e6 / g.tokens_in if g.tokens_in and basis else None,
        "x_CostPer1MTokensOut": cost * 1e6 / g.tokens_out if g.tokens_out and basis else None,
    }


# ----- writing -------------------------------------------------------------------------


def _decimal_text(value: float) -> str:
    """A float as plain decimal notation (FOCUS numbers carry no exponent)."""
    return format(Decimal(repr(float(value))), "f")


def csv_value(column: Column, value: Any) -> str:
    if value is None:
        return ""
    if column.data_type is DataType.DATETIME:
        return _iso(float(value))
    if column.data_type is DataType.DECIMAL:
        return _decimal_text(value)
    if column.data_type is DataType.KEY_VALUE:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def write_csv(export: FocusExport, out: IO[str]) -> None:
    writer = RowWriter(out)  # quotes a "\r" in a label too: every reader gets it back
    writer.writerow([c.name for c in EXPORT_COLUMNS])
    for row in export.rows:
        writer.writerow([csv_value(c, row[c.name]) for c in EXPORT_COLUMNS])


def write_parquet(export: FocusExport, path: Path) -> None:
    """Parquet through pyarrow (the ``parquet`` extra), typed per the column list."""
    try:
        pa: Any = importlib.import_module("pyarrow")
        pq: Any = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise InfermeterError(
            "writing Parquet needs pyarrow: pip install 'infermeter[parquet]'"
        ) from None
    types = {
        DataType.DECIMAL: pa.float64(),
        DataType.STRING: pa.string(),
        DataType.KEY_VALUE: pa.string(),
        DataType.DATETIME: pa.timestamp("ms", tz="UTC"),
        DataType.INTEGER: pa.int64(),
    }
    arrays = []
    for c in EXPORT_COLUMNS:
        values = [_parquet_value(c, r[c.name]) for r in export.rows]
        arrays.append(pa.array(values, type=types[c.data_type]))
    schema = pa.schema(
        [pa.field(c.name, types[c.data_type], nullable=c.nullable) for c in EXPORT_COLUMNS],
        metadata={"FocusVersion": FOCUS_VERSION, "DataGenerator": "infermeter"},
    )
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), str(path))


def _parquet_value(column: Column, value: Any) -> Any:
    if value is None:
        return None
    if column.data_type is DataType.DATETIME:
        return datetime.fromtimestamp(float(value), tz=UTC)
    if column.data_type is DataType.KEY_VALUE:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value

"""A report as JSON-ready data and as CSV rows: the machine-readable outputs.

``report_json`` is the ``--json`` output, version ``SCHEMA_VERSION``, every
field documented in docs/report.json.md (a test keeps the two in step).
Its shape only grows: a field that changes meaning or goes away is a new
version. ``csv_rows`` flattens one group per row under ``CSV_COLUMNS``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from infermeter.report.build import Amount, Costs, Report, RequestStats
from infermeter.store import histogram as cost_histogram

SCHEMA = "infermeter.report"
SCHEMA_VERSION = 1


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _amount_json(a: Amount | None) -> dict[str, Any] | None:
    if a is None:
        return None
    return {"value": a.value, "unpriced_kwh": a.unpriced_kwh}


def _costs_json(c: Costs) -> dict[str, Any]:
    return {
        "energy_kwh": c.energy_kwh,
        "cost": _amount_json(c.cost),
        "energy_cost": _amount_json(c.energy_cost),
        "capacity_cost": _amount_json(c.capacity_cost),
        "carbon_g": _amount_json(c.carbon_g),
        "idle_cost": _amount_json(c.idle_cost),
        "keepwarm_cost": _amount_json(c.keepwarm_cost),
    }


def _requests_json(s: RequestStats | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "requests": s.requests,
        "calls": s.calls,
        "items": s.items,
        "tokens_in": s.tokens_in,
        "tokens_out": s.tokens_out,
        "unpriced": s.unpriced,
        "cost_p50": s.cost_p50,
        "cost_p95": s.cost_p95,
    }


def report_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data; docs/report.json.md documents every field."""
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "generated_at": iso(report.generated_at),
        "range": {
            "from": iso(report.t_from),
            "to": iso(report.t_to),
            "from_s": report.t_from,
            "to_s": report.t_to,
        },
        "by": report.by,
        "share_idle": report.share_idle,
        "currency": report.currency,
        "price_cards": list(report.price_cards),
        "totals": {
            "costs": _costs_json(report.totals),
            "requests": _requests_json(report.total_requests),
            "utilisation": report.utilisation,
            "methods": dict(report.methods),
            "bases": dict(report.bases),
            "served_active_j": report.served_active_j,
            "request_energy_j": report.request_energy_j,
            "overhead_j": report.overhead_j,
        },
        "groups": [
            {
                "key": g.key,
                "label": g.label,
                "kind": g.kind,
                "costs": _costs_json(g.costs),
                "requests": _requests_json(g.requests),
                "j_per_item": g.j_per_item,
                "cost_per_1k_requests": _amount_json(g.cost_per_1k_requests),
                "j_per_token": g.j_per_token,
                "cost_per_1m_tokens_in": _amount_json(g.cost_per_1m_tokens_in),
                "cost_per_1m_tokens_out": _amount_json(g.cost_per_1m_tokens_out),
                "utilisation": g.utilisation,
                "methods": dict(g.methods),
                "bases": dict(g.bases),
            }
            for g in report.groups
        ],
        "recommendations": [
            {
                "kind": r.kind,
                "subject_kind": r.subject_kind,
                "subject": r.subject,
                "savings_usd_month": r.savings_usd_month,
                "savings_kwh_month": r.savings_kwh_month,
                "savings_kgco2e_month": r.savings_kgco2e_month,
                "confidence": r.confidence,
                "how_to_apply": r.how_to_apply,
            }
            for r in report.recommendations
        ],
        "percentiles": {
            "method": "log-spaced histogram, 8 buckets per doubling",
            "resolution": cost_histogram.RESOLUTION,
        },
        "read": {
            "rollup_host_hours": report.rollup_hours,
            "rollup_host_days": report.rollup_days,
            "raw_ranges": [[lo, hi] for lo, hi in report.raw_ranges],
        },
        "stored": None
        if report.stored is None
        else {"from_s": report.stored[0], "to_s": report.stored[1]},
    }


CSV_COLUMNS = (
    "by", "key", "label", "kind", "energy_kwh", "cost", "energy_cost", "capacity_cost",
    "carbon_g", "idle_cost", "keepwarm_cost", "unpriced_kwh", "requests", "calls", "items",
    "tokens_in", "tokens_out", "j_per_item", "cost_per_1k_requests", "cost_p50", "cost_p95",
    "utilisation", "measured", "integrated", "estimated", "bases", "j_per_token",
    "cost_per_1m_tokens_in", "cost_per_1m_tokens_out",
)  # fmt: skip


def csv_rows(report: Report) -> list[list[str]]:
    """One row per group under CSV_COLUMNS; unpriced money is the word "unpriced"."""

    def money(a: Amount | None) -> str:
        if a is None:
            return ""
        return "unpriced" if a.value is None else repr(a.value)

    def num(x: float | int | None) -> str:
        return "" if x is None else repr(x)

    out = []
    for g in report.groups:
        c, s = g.costs, g.requests
        out.append(
            [
                report.by,
                g.key or "",
                g.label,
                g.kind,
                repr(c.energy_kwh),
                money(c.cost),
                money(c.energy_cost),
                money(c.capacity_cost),
                money(c.carbon_g),
                money(c.idle_cost),
                money(c.keepwarm_cost),
                repr(c.cost.unpriced_kwh),
                num(s.requests if s else None),
                num(s.calls if s else None),
                num(s.items if s else None),
                num(s.tokens_in if s else None),
                num(s.tokens_out if s else None),
                num(g.j_per_item),
                money(g.cost_per_1k_requests),
                num(s.cost_p50 if s else None),
                num(s.cost_p95 if s else None),
                num(g.utilisation),
                num(g.methods.get("measured", 0.0)),
                num(g.methods.get("integrated", 0.0)),
                num(g.methods.get("estimated", 0.0)),
                ";".join(f"{k}={v:.4f}" for k, v in g.bases.items()),
                num(g.j_per_token),
                money(g.cost_per_1m_tokens_in),
                money(g.cost_per_1m_tokens_out),
            ]
        )
    return out

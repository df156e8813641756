"""The stored recommendations: one row per stable id, kept across runs.

Each run upserts what the recommenders said: the numbers and the evidence
are replaced by the newest, while the operator's decision (``status``:
open, dismissed, applied) and ``first_seen`` are kept, so dismissed advice
stays dismissed when the same advice comes back the next hour. Advice that
a run no longer gives is not deleted: its ``last_seen`` tells how stale it
is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine, insert, select, update

from infermeter.errors import InfermeterError
from infermeter.records import Recommendation, Savings
from infermeter.store.models import RecommendationRow

STATUSES = ("open", "dismissed", "applied")
_RANGE_KEY = "savings_range"  # where the energy and carbon ranges live in the evidence


@dataclass(frozen=True, slots=True)
class StoredRecommendation:
    """A recommendation as stored, with the operator's status and when it was seen."""

    stable_id: str
    recommendation: Recommendation
    status: str
    first_seen: float
    last_seen: float

    def as_json(self) -> dict[str, Any]:
        r = self.recommendation
        s = r.savings
        return {
            "id": self.stable_id,
            "kind": r.kind,
            "subject_kind": r.subject_kind,
            "subject": r.subject,
            "savings_month": {
                "usd": s.usd,
                "usd_low": s.usd_low,
                "usd_high": s.usd_high,
                "kwh": s.kwh,
                "kwh_low": s.kwh_low,
                "kwh_high": s.kwh_high,
                "kgco2e": s.kgco2e,
                "kgco2e_low": s.kgco2e_low,
                "kgco2e_high": s.kgco2e_high,
            },
            "confidence": r.confidence,
            "confidence_reason": r.confidence_reason,
            "how_to_apply": r.how_to_apply,
            "evidence": dict(r.evidence),
            "status": self.status,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


def _row_values(rec: Recommendation) -> dict[str, Any]:
    s = rec.savings
    evidence = dict(rec.evidence)
    evidence[_RANGE_KEY] = {
        "kwh": [s.kwh_low, s.kwh_high],
        "kgco2e": [s.kgco2e_low, s.kgco2e_high],
    }
    return {
        "kind": rec.kind,
        "subject_kind": rec.subject_kind,
        "subject": rec.subject[:255],
        "evidence": evidence,
        "savings_usd_month": s.usd,
        "savings_usd_low": s.usd_low,
        "savings_usd_high": s.usd_high,
        "savings_kwh_month": s.kwh,
        "savings_kgco2e_month": s.kgco2e,
        "confidence": rec.confidence,
        "confidence_reason": rec.confidence_reason,
        "how_to_apply": rec.how_to_apply,
    }


def upsert(engine: Engine, recs: Iterable[Recommendation], now: float) -> int:
    """Store a run's recommendations in one transaction; returns how many are new."""
    new = 0
    with engine.begin() as conn:
        for rec in recs:
            values = _row_values(rec)
            done = conn.execute(
                update(RecommendationRow)
                .where(RecommendationRow.stable_id == rec.stable_id)
                .values(**values, last_seen=now)
            )
            if not done.rowcount:
                conn.execute(
                    insert(RecommendationRow).values(
                        stable_id=rec.stable_id,
                        status="open",
                        first_seen=now,
                        last_seen=now,
                        **values,
                    )
                )
                new += 1
    return new


def _from_row(r: Any) -> StoredRecommendation:
    evidence = dict(r.evidence or {})
    ranges = evidence.pop(_RANGE_KEY, {}) or {}
    kwh = ranges.get("kwh") or [None, None]
    kg = ranges.get("kgco2e") or [None, None]
    savings = Savings(
        usd=r.savings_usd_month,
        usd_low=r.savings_usd_low,
        usd_high=r.savings_usd_high,
        kwh=r.savings_kwh_month,
        kgco2e=r.savings_kgco2e_month,
        kwh_low=kwh[0],
        kwh_high=kwh[1],
        kgco2e_low=kg[0],
        kgco2e_high=kg[1],
    )
    rec = Recommendation(
        kind=r.kind,
        subject_kind=r.subject_kind,
        subject=r.subject,
        evidence=evidence,
        savings=savings,
        confidence=r.confidence,
        confidence_reason=r.confidence_reason,
        how_to_apply=r.how_to_apply,
    )
    return StoredRecommendation(r.stable_id, rec, r.status, r.first_seen, r.last_seen)


def listing(
    engine: Engine, statuses: Sequence[str] = ("open",), host: str | None = None
) -> list[StoredRecommendation]:
    """Stored recommendations with these statuses, largest saving first."""
    q = (
        select(RecommendationRow)
        .where(RecommendationRow.status.in_(list(statuses)))
        .order_by(RecommendationRow.savings_usd_month.desc(), RecommendationRow.stable_id)
    )
    with engine.connect() as conn:
        rows = [_from_row(r) for r in conn.execute(q)]
    if host is not None:
        rows = [r for r in rows if r.recommendation.evidence.get("host") == host]
    return rows


def find(engine: Engine, ident: str) -> StoredRecommendation:
    """The recommendation whose id is ``ident`` or starts with it (at least 4 characters)."""
    ident = ident.strip().lower()
    if len(ident) < 4:
        raise InfermeterError(f"recommendation id {ident!r} is too short (4 characters at least)")
    q = select(RecommendationRow).where(RecommendationRow.stable_id.startswith(ident))
    with engine.connect() as conn:
        rows = [_from_row(r) for r in conn.execute(q)]
    if not rows:
        raise InfermeterError(f"no recommendation with id {ident}")
    if len(rows) > 1:
        raise InfermeterError(f"id {ident} is ambiguous: {', '.join(r.stable_id for r in rows)}")
    return rows[0]


def set_status(engine: Engine, ident: str, status: str) -> StoredRecommendation:
    """Dismiss or mark applied (or reopen) one recommendation; returns it as now stored."""
    if status not in STATUSES:
        raise InfermeterError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    found = find(engine, ident)
    with engine.begin() as conn:
        conn.execute(
            update(RecommendationRow)
            .where(RecommendationRow.stable_id == found.stable_id)
            .values(status=status)
        )
    return replace(found, status=status)

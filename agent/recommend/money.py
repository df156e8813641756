"""Turning a saving measured over a window into a monthly Savings, safely.

Every recommender goes through ``monthly_savings`` so that the same rules
hold for all of them, and a property test can check them once:

- the window's figures scale to 30 days at the rate observed (the assumption
  is written into the evidence by ``evidence_base``);
- a saving is never negative, and never above the measured cost of its
  subject scaled the same way (a change cannot save more than the thing
  costs); when the cap binds, energy and carbon shrink in proportion;
- the range around the point widens with lower confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infermeter.recommend.stats import Prices, Window
from infermeter.records import Recommendation, Savings

# Relative half-width of the money range per confidence level: what the
# estimate's inputs can be off by (high: measured on this deployment; medium:
# measured elsewhere or a fitted curve; low: a documented default).
SPREAD = {"high": 0.15, "medium": 0.35, "low": 0.6}
CONFIDENCES = tuple(SPREAD)


@dataclass(frozen=True, slots=True)
class WindowSaving:
    """A saving over the observed window, before it is scaled to a month."""

    energy_j: float  # energy at the meter that would not be drawn
    other_usd: float = 0.0  # money that is not energy (device-hours released)


def monthly_savings(
    saving: WindowSaving,
    cap_usd: float,
    window: Window,
    prices: Prices,
    confidence: str,
) -> Savings:
    """The monthly Savings of a window's saving, capped at the subject's window cost."""
    factor = window.month_factor
    energy_j = max(saving.energy_j, 0.0) * factor
    energy_usd = prices.energy_usd(energy_j) or 0.0
    usd = energy_usd + max(saving.other_usd, 0.0) * factor
    cap = max(cap_usd, 0.0) * factor
    scale = 1.0
    if usd > cap:
        scale = cap / usd if usd > 0 else 0.0
        usd = cap
    energy_j *= scale
    spread = SPREAD.get(confidence, SPREAD["low"])
    kwh = prices.kwh(energy_j)
    kg = prices.kgco2e(energy_j)
    return Savings(
        usd=usd,
        usd_low=usd * (1 - spread),
        usd_high=min(usd * (1 + spread), cap),
        kwh=kwh,
        kgco2e=kg,
        kwh_low=kwh * (1 - spread),
        kwh_high=kwh * (1 + spread),
        kgco2e_low=kg * (1 - spread),
        kgco2e_high=kg * (1 + spread),
    )


def evidence_base(window: Window, cost_usd: float, currency: str) -> dict[str, Any]:
    """The evidence every recommendation carries: the window and the subject's cost."""
    return {
        "window": {"t0": window.t0, "t1": window.t1, "seconds": round(window.seconds, 3)},
        "extrapolation": window.assumption,
        "measured_cost_window": round(cost_usd, 6),
        "measured_cost_month": round(cost_usd * window.month_factor, 4),
        "currency": currency,
    }


def rounded(value: float | None, digits: int = 4) -> float | None:
    """A figure for the evidence: rounded to what it means, None kept."""
    if value is None:
        return None
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True, slots=True)
class Subject:
    """What a recommendation is about, and what it measurably cost over the window."""

    kind: str  # model | target | device | host
    name: str
    host: str
    cost_usd: float  # measured over the window, in the card's currency


def advice(
    kind: str,
    subject: Subject,
    saving: WindowSaving,
    window: Window,
    prices: Prices,
    confidence: str,
    reason: str,
    how_to_apply: str,
    evidence: dict[str, Any],
) -> Recommendation:
    """A Recommendation with the common evidence, its savings scaled and capped."""
    base = evidence_base(window, subject.cost_usd, prices.currency)
    return Recommendation(
        kind=kind,
        subject_kind=subject.kind,
        subject=subject.name,
        evidence={"host": subject.host, **base, **evidence},
        savings=monthly_savings(saving, subject.cost_usd, window, prices, confidence),
        confidence=confidence,
        confidence_reason=reason,
        how_to_apply=how_to_apply,
    )

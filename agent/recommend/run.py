"""The recommend step: statistics in, ranked and stored recommendations out.

``run`` builds the statistics of one host over the recommend window
(``recommend_build``), hands them to every ``infermeter_recommend``
implementation, keeps what is well formed, ranks it by monthly saving and
upserts it (``recommend_store``). The daemon's recommend job, ``infermeter
recommend`` and the report all go through here, so they agree.

The core also holds the line for plugins it did not write: a
recommendation whose saving is negative, whose range does not contain its
point, or whose confidence is not high/medium/low is dropped with a
warning; one whose saving exceeds the measured monthly cost it states
(``evidence["measured_cost_month"]``) is capped there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, func, select

from infermeter.config import Config
from infermeter.recommend.build import build_stats
from infermeter.recommend.money import CONFIDENCES
from infermeter.recommend.stats import Stats
from infermeter.recommend.stored import upsert
from infermeter.records import Device, PriceCard, Recommendation
from infermeter.store.models import Host, UsageShare

log = logging.getLogger(__name__)


def _well_formed(rec: Any) -> str | None:
    """What is wrong with a plugin's answer, or None."""
    if not isinstance(rec, Recommendation):
        return f"not a Recommendation: {type(rec).__name__}"
    s = rec.savings
    figures = (s.usd, s.usd_low, s.usd_high, s.kwh, s.kgco2e)
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in figures):
        return "a saving is not a finite number"
    if min(figures) < 0:
        return "a saving is negative"
    if not s.usd_low <= s.usd <= s.usd_high:
        return "the point saving is outside its range"
    if rec.confidence not in CONFIDENCES:
        return f"confidence {rec.confidence!r} is not one of {', '.join(CONFIDENCES)}"
    return None


def _capped(rec: Recommendation) -> Recommendation:
    cost = rec.evidence.get("measured_cost_month")
    # The evidence rounds the cost for reading: a hair above it is not a breach.
    if not isinstance(cost, (int, float)) or rec.savings.usd_high <= cost * (1 + 1e-6) + 1e-4:
        return rec
    s = rec.savings
    scale = cost / s.usd if s.usd > cost and s.usd > 0 else 1.0
    log.warning("%s saving on %s capped at its measured cost", rec.kind, rec.subject)
    savings = replace(
        s,
        usd=min(s.usd, cost),
        usd_low=min(s.usd_low, cost),
        usd_high=cost,
        kwh=s.kwh * scale,
        kgco2e=s.kgco2e * scale,
    )
    return replace(rec, savings=savings)


def collect(pm: Any, stats: Stats, config: Config) -> list[Recommendation]:
    """Every recommender's answer for ``stats``, checked, deduplicated and ranked."""
    raw = pm.collect("infermeter_recommend", stats=stats, config=config)
    floor = float(config["recommend.min_savings_usd_month"])
    best: dict[str, Recommendation] = {}
    for rec in raw:
        problem = _well_formed(rec)
        if problem is not None:
            log.warning("a recommender's answer was dropped: %s", problem)
            continue
        rec = _capped(rec)
        if rec.savings.usd < floor:
            continue
        if rec.stable_id not in best or rec.savings.usd > best[rec.stable_id].savings.usd:
            best[rec.stable_id] = rec
    return sorted(best.values(), key=lambda r: (-r.savings.usd, r.stable_id))


def newest_time(engine: Engine, host: str) -> float | None:
    """The end of the newest flush window stored for ``host``."""
    with engine.connect() as conn:
        value = conn.execute(
            select(func.max(UsageShare.t1))
            .join(Host, Host.id == UsageShare.host_id)
            .where(Host.name == host)
        ).scalar_one_or_none()
    return float(value) if value is not None else None


def hosts(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(h) for h in conn.execute(select(Host.name).order_by(Host.name)).scalars()]


def statistics(
    engine: Engine,
    host: str,
    config: Config,
    card: PriceCard | None,
    until: float,
    live_devices: Mapping[str, Device] | None = None,
) -> Stats:
    window_s = float(config["recommend.window_s"])
    profile_s = float(config["recommend.profile_s"])
    return build_stats(
        engine,
        host,
        until - window_s,
        until,
        card,
        profile_t0=until - max(profile_s, window_s),
        live_devices=live_devices,
    )


def run(
    engine: Engine,
    host: str,
    config: Config,
    pm: Any,
    card: PriceCard | None,
    until: float | None = None,
    live_devices: Mapping[str, Device] | None = None,
    now: float | None = None,
) -> list[Recommendation]:
    """Recommend for ``host`` over the window ending at ``until`` (default: its newest data)."""
    now = time.time() if now is None else now
    end = until if until is not None else newest_time(engine, host)
    if end is None:
        return []
    stats = statistics(engine, host, config, card, end, live_devices)
    recs = collect(pm, stats, config)
    upsert(engine, recs, now)
    return recs

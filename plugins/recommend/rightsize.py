"""Right-size advice: a GPU whose memory and utilisation stay far below the card's.

Rule. A GPU observed for at least ``min_observed_s`` speaks when a cheaper
card on the price card (an entry with ``memory_gb``, ``tflops`` and
``memory_bw_gbps``, not ``edge``) would hold and serve what was measured:

- memory: the peak the processes held, times ``memory_headroom``, fits in
  the card's memory (GiB as datasheets count them, less 5 % the driver
  keeps);
- throughput: the ``busy_quantile`` utilisation, scaled by how much slower
  the smaller card is at whichever it is weaker in (dense tensor TFLOPS or
  memory bandwidth, so it holds whether the work is compute- or
  memory-bound), stays at or under ``max_busy_after``. NVML's utilisation
  counts any running kernel as busy, so this overstates the work: advice
  that passes it is conservative.

Saving: the difference in hourly rates for the hours observed, plus the
idle and keep-warm energy scaled by the two cards' board power (the floor a
smaller card draws less of); the active energy is taken as unchanged. The
cheapest card that fits is suggested; the others that fit are in the
evidence. Needs the device's own card entry (to compare speeds) and rate.
"""

from __future__ import annotations

from infermeter.config import Option
from infermeter.plugins.recommend._rule import Advice, Options, Pass, devices, hooks
from infermeter.recommend.money import Subject, WindowSaving, rounded
from infermeter.recommend.stats import DeviceStats, Stats
from infermeter.records import DeviceRate

OPTIONS: tuple[Option, ...] = (
    Option(
        "recommend_rightsize",
        "min_observed_s",
        3600.0,
        "Seconds a device must have been observed: the low use must be sustained.",
    ),
    Option(
        "recommend_rightsize",
        "memory_headroom",
        1.2,
        "The measured peak memory times this must fit in the smaller card.",
    ),
    Option(
        "recommend_rightsize",
        "busy_quantile",
        0.95,
        "Which quantile of utilisation (time-weighted) the smaller card must absorb.",
    ),
    Option(
        "recommend_rightsize",
        "max_busy_after",
        0.8,
        "Utilisation the smaller card may reach at that quantile.",
    ),
)

USABLE = 0.95  # of a card's memory, what processes can hold


def _complete(rate: DeviceRate | None) -> bool:
    return bool(rate and rate.memory_gb and rate.tflops and rate.memory_bw_gbps and not rate.edge)


def recommend_one(d: DeviceStats, stats: Stats, opt: Options) -> Advice | None:
    prices = stats.prices
    card = prices.card
    info = d.info
    if info.kind != "gpu" or card is None or d.cost_usd is None or info.hourly_usd is None:
        return None
    if d.observed_s < float(opt["min_observed_s"]):
        return None
    mine = card.device_rate(info.name)
    peak = d.memory_peak_bytes
    busy = d.busy_quantile(float(opt["busy_quantile"]))
    if not _complete(mine) or mine is None or peak is None or busy is None:
        return None
    fits = []
    for rate in card.device_rates:
        if not _complete(rate) or rate is mine or rate.hourly >= info.hourly_usd:
            continue
        assert rate.memory_gb and rate.tflops and rate.memory_bw_gbps  # _complete said so
        assert mine.tflops and mine.memory_bw_gbps
        memory = rate.memory_gb * 2**30 * USABLE
        slowdown = max(mine.tflops / rate.tflops, mine.memory_bw_gbps / rate.memory_bw_gbps, 1.0)
        after = busy * slowdown
        if peak * float(opt["memory_headroom"]) <= memory and after <= float(opt["max_busy_after"]):
            fits.append((rate, slowdown, after))
    if not fits:
        return None
    rate, slowdown, after = min(fits, key=lambda f: f[0].hourly)
    hours = d.observed_s / 3600
    floor_j = d.idle_j + d.keepwarm_j
    board = (rate.tdp_w / mine.tdp_w) if rate.tdp_w and mine.tdp_w else 1.0
    saving = WindowSaving(
        energy_j=floor_j * max(1.0 - board, 0.0),
        other_usd=(info.hourly_usd - rate.hourly) * hours,
    )
    evidence = {
        "device": info.short,
        "card_memory_gib": rounded((info.memory_total_bytes or 0) / 2**30),
        "peak_memory_gib": rounded(peak / 2**30),
        "busy_quantile": opt["busy_quantile"],
        "busy_at_quantile": rounded(busy),
        "observed_s": rounded(d.observed_s),
        "hourly_now": info.hourly_usd,
        "suggested": rate.label,
        "suggested_hourly": rounded(rate.hourly),
        "slowdown_bound": rounded(slowdown),
        "busy_after_bound": rounded(after),
        "cards_that_fit": [
            {"name": r.label, "hourly": rounded(r.hourly), "busy_after": rounded(a)}
            for r, _, a in sorted(fits, key=lambda f: f[0].hourly)
        ],
    }
    quantile = round(100 * float(opt["busy_quantile"]))
    how = (
        f"Move what runs on {info.short} to a {rate.label} ({rate.memory_gb:g} GB, "
        f"{rate.hourly:g}/h against {info.hourly_usd:g}/h): the measured peak of "
        f"{peak / 2**30:.1f} GiB fits with headroom, and its p{quantile} "
        f"utilisation would be at most {after:.0%} on it."
    )
    return Advice(
        "right-size",
        Subject("device", f"{info.name} {info.uid[:12]}@{info.host}", info.host, d.cost_usd),
        saving,
        "medium",
        "measured memory and utilisation against datasheet speeds (bounded by the weaker one)",
        how,
        evidence,
    )


infermeter_config_options, infermeter_recommend = hooks(OPTIONS, Pass(devices, recommend_one))

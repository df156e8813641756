"""Keep-warm advice: processes that hold a GPU, drawing keep-warm power, while serving nothing.

Rule. A process speaks for a GPU when it held the GPU (it had a keep-warm
share) without making a single call for stretches of at least
``min_stretch_s`` each (at flush-window resolution). The saving is what
those stretches cost it: its keep-warm energy and its part of the card's
hourly rate, per month at the rate seen. The threshold sits well above the
time the recorded servers took to load their models (1-6 s in the shared
H100 serving trace), so scaling to zero would not trade the saving for
cold starts on every request.

A device speaks when every process holding it was idle at once: releasing
the card then also saves its idle draw, and, when the card is rented
(``cloud_hourly`` on the price card), its hourly rate for those stretches;
an owned card keeps costing its purchase. The process-level advice claims
the keep-warm part, the device-level the idle part, so they never count the
same joule twice.
"""

from __future__ import annotations

from infermeter.config import Option
from infermeter.plugins.recommend._rule import Advice, Options, Pass, hooks
from infermeter.recommend.money import Subject, WindowSaving, rounded
from infermeter.recommend.stats import DeviceStats, Stats, TargetStats

OPTIONS: tuple[Option, ...] = (
    Option(
        "recommend_idle",
        "min_stretch_s",
        20.0,
        "Seconds a device must be held without any call for the stretch to count.",
    ),
)

_REASON = "measured keep-warm draw and cost; assumes the idle stretches recur at the rate seen"


def _gpus(stats: Stats) -> dict[str, DeviceStats]:
    return {d.info.uid: d for d in stats.devices if d.info.kind == "gpu"}


def _held(stats: Stats) -> list[tuple[TargetStats, DeviceStats]]:
    """Each process with the GPU it held."""
    gpus = _gpus(stats)
    return [(t, gpus[t.device_uid]) for t in stats.targets if t.device_uid in gpus]


def for_target(held: tuple[TargetStats, DeviceStats], stats: Stats, opt: Options) -> Advice | None:
    t, device = held
    min_s = float(opt["min_stretch_s"])
    prices = stats.prices
    stretches = [s for s in t.idle_stretches if s.seconds >= min_s]
    if not stretches or t.cost_usd is None or any(s.cost_usd is None for s in stretches):
        return None
    energy = sum(s.keepwarm_j for s in stretches)
    cost = sum(s.cost_usd or 0.0 for s in stretches)
    idle_s = sum(s.seconds for s in stretches)
    evidence = {
        "pid": t.pid,
        "model": t.model,
        "framework": t.framework,
        "device": device.info.short,
        "idle_stretches": [
            {
                "t0": s.t0,
                "t1": s.t1,
                "seconds": rounded(s.seconds),
                "keepwarm_j": rounded(s.keepwarm_j),
            }
            for s in stretches
        ],
        "idle_held_s": rounded(idle_s),
        "keepwarm_j": rounded(energy),
        "keepwarm_cost_window": rounded(cost),
        "calls": t.calls,
        "first_call_t": t.first_call_t,
        "keepwarm_power_w": device.info.keepwarm_power_w,
    }
    how = (
        f"pid {t.pid} ({t.model or 'no model'}) held {device.info.short} for {idle_s:.0f} s "
        f"without a call: unload its model when idle (free the CUDA context), or scale the server "
        f"to zero after ~{min_s:.0f} s idle (KServe/Knative minScale 0, Ray Serve min_replicas 0, "
        f"a socket-activated unit); where several processes each hold a GPU lightly, "
        f"consolidate them onto one device."
    )
    return Advice(
        "keep-warm",
        Subject("target", t.key, t.host, t.cost_usd),
        WindowSaving(
            energy_j=energy, other_usd=max(cost - (prices.energy_usd(energy) or 0.0), 0.0)
        ),
        "medium",
        _REASON,
        how,
        evidence,
    )


def for_device(d: DeviceStats, stats: Stats, opt: Options) -> Advice | None:
    min_s = float(opt["min_stretch_s"])
    prices = stats.prices
    gaps = [g for g in d.gaps if g.seconds >= min_s]
    if not gaps or d.cost_usd is None or any(g.idle_cost_usd is None for g in gaps):
        return None
    card = prices.card
    rate = card.device_rate(d.info.name) if card is not None else None
    rented = rate is not None and rate.basis == "cloud"
    idle_j = sum(g.idle_j for g in gaps)
    idle_cost = sum(g.idle_cost_usd or 0.0 for g in gaps)
    energy_usd = prices.energy_usd(idle_j) or 0.0
    other = max(idle_cost - energy_usd, 0.0) if rented else 0.0
    seconds = sum(g.seconds for g in gaps)
    evidence = {
        "device": d.info.short,
        "gaps": [
            {"t0": g.t0, "t1": g.t1, "seconds": rounded(g.seconds), "held_by": list(g.held_by)}
            for g in gaps
        ],
        "held_unused_s": rounded(seconds),
        "idle_j": rounded(idle_j),
        "idle_cost_window": rounded(idle_cost),
        "rate_basis": rate.basis if rate is not None else None,
    }
    release = "release the instance" if rented else "power the card down or lend it out"
    how = (
        f"{d.info.short} was held for {seconds:.0f} s with no process serving: scale the "
        f"deployment (and the node) to zero when idle and {release}; the holders' own keep-warm "
        f"draw is in their keep-warm advice."
    )
    return Advice(
        "keep-warm",
        Subject(
            "device", f"{d.info.name} {d.info.uid[:12]}@{d.info.host}", d.info.host, d.cost_usd
        ),
        WindowSaving(energy_j=idle_j, other_usd=other),
        "medium" if rented else "low",
        _REASON if rented else _REASON + "; an owned card's purchase is not saved",
        how,
        evidence,
    )


infermeter_config_options, infermeter_recommend = hooks(
    OPTIONS, Pass(_held, for_target), Pass(lambda s: _gpus(s).values(), for_device)
)

"""Power-cap advice, and the one action the agent takes on hardware: setting it, with consent.

Rule. A GPU observed for at least ``min_observed_s`` whose mean utilisation
is at most ``max_mean_busy`` (lightly loaded) speaks when a power limit at
least ``min_cut`` below the current one, inside the range the driver
accepts, would still let every flush window's work finish: its busy time,
stretched by the slower clocks, stays at or under ``max_busy_after``.

Model (not a measurement, hence low confidence). In each window the card
draws its floor (idle plus keep-warm) while not busy, and while busy the
power that makes the window's average: ``floor + (P - floor) / busy``.
Above the cap the clocks drop; with dynamic power growing as f**3 (voltage
following frequency), busy time grows by ``(P_dyn / cap_dyn) ** (1/3)`` and
the dynamic energy of the same work shrinks by ``(cap_dyn / P_dyn) ** (2/3)``.
The suggestion is the lowest cap (in ``step_w`` steps) that every window
survives; the saving is the energy the busy periods would not draw. A cap
that never binds saves nothing and is not suggested.

The allowed range is NVML's (``nvmlDeviceGetPowerManagementLimitConstraints``)
when the agent read it; otherwise ``RANGES`` by product name, and the
evidence says so. ``apply_power_cap`` sets the limit through NVML; only
``infermeter apply ID --yes`` calls it, after re-reading the range.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from infermeter import hookimpl
from infermeter.config import Config, Option
from infermeter.errors import InfermeterError
from infermeter.plugins.recommend._rule import Advice, Options, Pass, devices, hooks
from infermeter.recommend.money import Subject, WindowSaving, rounded
from infermeter.recommend.stats import DeviceSample, DeviceStats, Stats
from infermeter.records import Recommendation

OPTIONS: tuple[Option, ...] = (
    Option(
        "recommend_powercap",
        "min_observed_s",
        600.0,
        "Seconds a GPU must have been observed before a cap is suggested.",
    ),
    Option(
        "recommend_powercap",
        "max_mean_busy",
        0.5,
        "Mean utilisation (0-1) at or under which a GPU counts as lightly loaded.",
    ),
    Option(
        "recommend_powercap",
        "max_busy_after",
        0.9,
        "Utilisation any window may reach once its busy time is stretched by the cap.",
    ),
    Option(
        "recommend_powercap",
        "min_cut",
        0.1,
        "A cap must be at least this fraction below the current limit to be worth setting.",
    ),
    Option("recommend_powercap", "step_w", 25.0, "Caps are suggested in steps of this many W."),
)

# (substring of the product name, lowest limit in W) when NVML's range was
# not read: the H100 SXM accepts 200-700 W (NVIDIA DGX H100 user guide,
# "PowerLimitWatts": AllowableMin 200, AllowableMax 700; the shared
# fixtures' nvml_api.json: [200000, 700000] mW).
RANGES: tuple[tuple[str, float], ...] = (("H100", 200.0),)
_MIN_BUSY = 0.02  # a window less busy than this says nothing about peak power


def allowed_range(d: DeviceStats) -> tuple[float, float, str] | None:
    info = d.info
    high = info.max_power_limit_w or info.power_limit_w
    if info.min_power_limit_w is not None and high:
        return info.min_power_limit_w, high, "nvml"
    for needle, low in RANGES:
        if needle.lower() in info.name.lower() and high:
            return low, high, "table"
    return None


def _busy_power(s: DeviceSample, floor_w: float, limit_w: float) -> float:
    busy = s.busy_fraction or 0.0
    return min(floor_w + max(s.power_w - floor_w, 0.0) / busy, limit_w)


def effect(
    samples: Sequence[DeviceSample], cap_w: float, idle_w: float, floor_w: float, limit_w: float
) -> tuple[float, float]:
    """(worst busy fraction after the cap, dynamic joules saved) over the samples."""
    worst = saved = 0.0
    for s in samples:
        busy = s.busy_fraction
        if busy is None or busy < _MIN_BUSY:
            continue
        p = _busy_power(s, floor_w, limit_w)
        dyn, cap_dyn = p - idle_w, cap_w - idle_w
        if p <= cap_w or dyn <= 0 or cap_dyn <= 0:
            worst = max(worst, busy)
            continue
        worst = max(worst, busy * (dyn / cap_dyn) ** (1 / 3))
        saved += busy * (s.t1 - s.t0) * dyn * (1 - (cap_dyn / dyn) ** (2 / 3))
    return worst, saved


def recommend_one(d: DeviceStats, stats: Stats, opt: Options) -> Advice | None:
    info = d.info
    if info.kind != "gpu" or d.cost_usd is None or not info.power_limit_w:
        return None
    if d.observed_s < float(opt["min_observed_s"]):
        return None
    known = [s for s in d.samples if s.busy_fraction is not None]
    total = sum(s.t1 - s.t0 for s in known)
    if not known or total <= 0:
        return None
    mean = sum((s.busy_fraction or 0.0) * (s.t1 - s.t0) for s in known) / total
    if mean > float(opt["max_mean_busy"]):
        return None
    found = allowed_range(d)
    if found is None:
        return None
    low, high, source = found
    limit = min(info.power_limit_w, high)
    idle = info.idle_power_w or 0.0
    floor = idle + (info.keepwarm_power_w or 0.0)
    step = float(opt["step_w"])
    cap = None
    c = math.ceil(low / step) * step
    while c <= limit * (1 - float(opt["min_cut"])):
        worst, _ = effect(known, c, idle, floor, limit)
        if worst <= float(opt["max_busy_after"]):
            cap = c
            break
        c += step
    if cap is None:
        return None
    worst, saved_j = effect(known, cap, idle, floor, limit)
    if saved_j <= 0:
        return None
    evidence = {
        "device": info.short,
        "device_uid": info.uid,
        "device_index_name": info.name,
        "power_limit_w": limit,
        "suggested_limit_w": cap,
        "allowed_range_w": [low, high],
        "range_source": source,
        "mean_busy": rounded(mean),
        "worst_busy_after_cap": rounded(worst),
        "peak_window_power_w": rounded(max(s.power_w for s in known)),
        "model": "dynamic power ~ f^3: busy time x (P/cap)^(1/3), energy x (cap/P)^(2/3)",
    }
    advice = Advice(
        "power-cap",
        Subject("device", f"{info.name} {info.uid[:12]}@{info.host}", info.host, d.cost_usd),
        WindowSaving(energy_j=saved_j),
        "low",
        "modelled from window power and utilisation, not measured under a cap; "
        "check throughput after setting it",
        "",
        evidence,
    )
    how = (
        f"Run `infermeter apply {advice.stable_id} --yes` on {info.host} (sets {cap:g} W through "
        f"NVML; needs root), or `nvidia-smi -i {info.uid} -pl {cap:g}`. Revert with "
        f"`nvidia-smi -i {info.uid} -pl {limit:g}`; a limit set this way lasts until reboot."
    )
    return replace(advice, how_to_apply=how)


infermeter_config_options, infermeter_recommend = hooks(OPTIONS, Pass(devices, recommend_one))


# ----- applying it ------------------------------------------------------------


def nvml_module() -> Any:
    """The NVML that applying advice talks to (a seam for tests: the stand-in)."""
    import pynvml  # only applying advice needs it, not advising

    return pynvml


@hookimpl(trylast=True)
def infermeter_apply(recommendation: Recommendation, config: Config, dry_run: bool) -> str | None:
    """A power cap is set through NVML on this host; other advice is not ours to carry out."""
    if recommendation.kind != "power-cap":
        return None
    evidence = recommendation.evidence
    uid = str(evidence.get("device_uid", ""))
    watts = float(evidence.get("suggested_limit_w", 0.0))
    if dry_run:
        return (
            f"would set the power limit of GPU {uid} to {watts:g} W "
            f"(now {evidence.get('power_limit_w')} W). Nothing was set: rerun with --yes to set it."
        )
    got = apply_power_cap(nvml_module(), uid, watts)
    return f"set the power limit of GPU {uid} to {got:g} W"


def apply_power_cap(nvml: Any, device_uid: str, limit_w: float) -> float:
    """Set a GPU's power limit through ``nvml`` (pynvml, or a stand-in); returns it as read back.

    Every failure is an InfermeterError of one line: no NVML on this host,
    no such GPU here, a limit outside the range the driver reports now, or
    no permission (setting a limit needs root).
    """
    import pynvml  # only applying advice needs it, not advising

    try:
        nvml.nvmlInit()
    except pynvml.NVMLError as e:
        if isinstance(e, (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded)):
            raise InfermeterError(
                f"cannot set a power limit: no NVIDIA driver or NVML on this host ({e})"
            ) from None
        raise InfermeterError(f"cannot set a power limit: NVML did not start ({e})") from None
    try:
        handle = None
        for index in range(int(nvml.nvmlDeviceGetCount())):
            candidate = nvml.nvmlDeviceGetHandleByIndex(index)
            if str(nvml.nvmlDeviceGetUUID(candidate)) == device_uid:
                handle = candidate
                break
        if handle is None:
            raise InfermeterError(f"cannot set a power limit: GPU {device_uid} is not on this host")
        low_mw, high_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
        if not low_mw / 1000 <= limit_w <= high_mw / 1000:
            raise InfermeterError(
                f"cannot set {limit_w:g} W: GPU {device_uid} accepts "
                f"{low_mw / 1000:g}-{high_mw / 1000:g} W"
            )
        nvml.nvmlDeviceSetPowerManagementLimit(handle, round(limit_w * 1000))
        return float(nvml.nvmlDeviceGetPowerManagementLimit(handle)) / 1000
    except pynvml.NVMLError_NoPermission:
        raise InfermeterError(
            "cannot set a power limit: NVML says no permission (run as root)"
        ) from None
    except pynvml.NVMLError as e:
        raise InfermeterError(f"cannot set a power limit: NVML error ({e})") from None
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            nvml.nvmlShutdown()

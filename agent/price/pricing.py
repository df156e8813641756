"""Energy into money and carbon: the price card and the pricing of shares.

cost   = energy_kWh x PUE x electricity price at that time (time-of-use)
       + device hourly rate x hours, split over the device's shares of the
         window by energy (capacity cost: what holding the hardware costs);
carbon = energy_kWh x PUE x grid intensity.

The card lives in the config's ``[prices]`` section and carries a version;
every stored row names the card that priced it. A figure the card does not
know (no rate for a device, no electricity price) is None, stored as NULL
and shown as unpriced, never as 0. The built-in pricing is a ``trylast``
implementation of ``infermeter_price``, so a plugin can price the devices it
knows better (a cloud bill, a spot market) and leave the rest to the card.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from infermeter.config import Config, Option
from infermeter.errors import ConfigError
from infermeter.hookspecs import hookimpl
from infermeter.records import (
    Device,
    DeviceRate,
    Price,
    PriceCard,
    Share,
    TimeOfUse,
)

J_PER_KWH = 3_600_000.0


# The example card's figures and where they come from: contrib/price_card.example.toml.
CARD_OPTIONS: tuple[Option, ...] = (
    Option("prices", "version", "example-2026-11", "Name of this card; bump it on every change."),
    Option("prices", "currency", "USD", "ISO 4217 code of every price on the card."),
    Option("prices", "timezone", "UTC", "IANA zone the time-of-use periods are written in."),
    Option(
        "prices",
        "electricity_per_kwh",
        0.13,
        "Price of a kWh; 0 or negative: unknown.",
        (int, float),
    ),
    Option(
        "prices",
        "time_of_use",
        [],
        "Periods [{start = 'HH:MM', end = 'HH:MM', days = "
        "[0-6, Monday 0], per_kwh}] that override electricity_per_kwh.",
        list,
    ),
    Option("prices", "pue", 1.58, "Facility power usage effectiveness (>= 1)."),
    Option("prices", "carbon_g_per_kwh", 475.0, "Grid intensity, gCO2e per kWh; 0: unknown."),
    Option("prices", "cpu_core_hour", 0.045, "Price of a logical CPU (vCPU) hour; 0: unknown."),
    Option(
        "prices",
        "devices",
        {
            "H100": {
                "cloud_hourly": 3.0,
                "name": "NVIDIA H100 SXM 80GB",
                "memory_gb": 80,
                "tdp_w": 700,
                "tflops": 989,
                "memory_bw_gbps": 3350,
            },
            "L40S": {
                "cloud_hourly": 1.861,
                "name": "NVIDIA L40S",
                "memory_gb": 48,
                "tdp_w": 350,
                "tflops": 362,
                "memory_bw_gbps": 864,
            },
            "A10G": {
                "cloud_hourly": 1.006,
                "name": "NVIDIA A10G",
                "memory_gb": 24,
                "tdp_w": 150,
                "tflops": 70,
                "memory_bw_gbps": 600,
            },
            r"\bL4\b": {
                "cloud_hourly": 0.8048,
                "name": "NVIDIA L4",
                "memory_gb": 24,
                "tdp_w": 72,
                "tflops": 121,
                "memory_bw_gbps": 300,
            },
            "Orin Nano": {
                "purchase": 499,
                "years": 3,
                "name": "NVIDIA Jetson Orin Nano 8GB",
                "memory_gb": 8,
                "tdp_w": 15,
                "tflops": 10,
                "memory_bw_gbps": 68,
                "edge": True,
            },
        },
        "Per-device rates keyed by a regex of the device name: {cloud_hourly} or "
        "{purchase, years, upkeep_per_year}, and optionally what the card is "
        "{name, memory_gb, tdp_w, tflops, memory_bw_gbps, edge} for advice that names cards.",
        dict,
    ),
)


def _minutes(value: Any, where: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"\d{1,2}:\d{2}", value):
        raise ConfigError(f"config key `{where}` must be 'HH:MM', not {value!r}")
    h, m = (int(x) for x in value.split(":"))
    if h > 24 or m > 59 or h * 60 + m > 24 * 60:
        raise ConfigError(f"config key `{where}` is not a time of day: {value!r}")
    return h * 60 + m


def _number(table: Mapping[str, Any], key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"config key `{where}.{key}` must be a number >= 0, not {value!r}")
    return float(value)


_CARD_FIGURES = ("memory_gb", "tdp_w", "tflops", "memory_bw_gbps")


def _describe(rate: DeviceRate, table: Mapping[str, Any], where: str) -> DeviceRate:
    """The optional figures of a device entry: what the card is, not what it costs."""
    name = table.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"config key `{where}.name` must be a string, not {name!r}")
    edge = table.get("edge", False)
    if not isinstance(edge, bool):
        raise ConfigError(f"config key `{where}.edge` must be true or false, not {edge!r}")
    figures = {k: _number(table, k, where) for k in _CARD_FIGURES if k in table}
    return replace(
        rate,
        name=name,
        edge=edge,
        memory_gb=figures.get("memory_gb"),
        tdp_w=figures.get("tdp_w"),
        tflops=figures.get("tflops"),
        memory_bw_gbps=figures.get("memory_bw_gbps"),
    )


def _device_rate(pattern: str, table: Any) -> DeviceRate:
    where = f"prices.devices.{pattern}"
    if not isinstance(table, dict):
        raise ConfigError(f"config key `{where}` must be a table")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"config key `{where}`: not a valid regex: {e}") from None
    if "cloud_hourly" in table:
        rate = DeviceRate(pattern, _number(table, "cloud_hourly", where), "cloud")
        return _describe(rate, table, where)
    if "purchase" in table:
        purchase = _number(table, "purchase", where)
        years = _number(table, "years", where) if "years" in table else 4.0
        upkeep = _number(table, "upkeep_per_year", where) if "upkeep_per_year" in table else 0.0
        if years <= 0:
            raise ConfigError(f"config key `{where}.years` must be > 0")
        hourly = (purchase / years + upkeep) / (365.25 * 24)
        return _describe(DeviceRate(pattern, hourly, "amortised"), table, where)
    raise ConfigError(f"config key `{where}` needs cloud_hourly or purchase")


def card_from_config(config: Config) -> PriceCard:
    """Build and check the card; a bad value is a ConfigError naming its key."""
    p = config.section("prices")
    try:
        ZoneInfo(p["timezone"])
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"config key `prices.timezone`: unknown zone {p['timezone']!r}") from None
    if p["pue"] < 1.0:
        raise ConfigError(f"config key `prices.pue` must be >= 1, not {p['pue']}")
    periods = []
    for i, raw in enumerate(p["time_of_use"]):
        where = f"prices.time_of_use[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"config key `{where}` must be a table")
        days = raw.get("days", list(range(7)))
        if not isinstance(days, list) or not all(isinstance(d, int) and 0 <= d <= 6 for d in days):
            raise ConfigError(f"config key `{where}.days` must be a list of 0-6 (Monday 0)")
        periods.append(
            TimeOfUse(
                _minutes(raw.get("start"), f"{where}.start"),
                _minutes(raw.get("end"), f"{where}.end"),
                frozenset(days),
                _number(raw, "per_kwh", where),
            )
        )
    rates = tuple(_device_rate(pattern, table) for pattern, table in p["devices"].items())
    electricity = float(p["electricity_per_kwh"])
    carbon = float(p["carbon_g_per_kwh"])
    core_hour = float(p["cpu_core_hour"])
    return PriceCard(
        version=str(p["version"]),
        currency=str(p["currency"]),
        timezone=str(p["timezone"]),
        electricity_per_kwh=electricity if electricity > 0 else None,
        time_of_use=tuple(periods),
        pue=float(p["pue"]),
        carbon_g_per_kwh=carbon if carbon > 0 else None,
        device_rates=rates,
        cpu_core_hour=core_hour if core_hour > 0 else None,
        body={k: p[k] for k in sorted(p)},
    )


def price_share(share: Share, device: Device, card: PriceCard, window_j: float) -> Price:
    """Price one share; ``window_j`` is all the energy of its device in its window."""
    kwh = share.energy_j / J_PER_KWH * card.pue
    mid = (share.t0 + share.t1) / 2
    per_kwh = card.electricity_at(mid)
    energy_cost = kwh * per_kwh if per_kwh is not None else None
    carbon = kwh * card.carbon_g_per_kwh if card.carbon_g_per_kwh is not None else None
    hourly = card.hourly_rate(device)
    capacity = None
    if hourly is not None and window_j > 0:
        capacity = hourly * (share.t1 - share.t0) / 3600 * (share.energy_j / window_j)
    return Price(energy_cost, capacity, carbon)


def price_shares(
    shares: Sequence[Share], devices: Mapping[str, Device], card: PriceCard, pm: Any
) -> list[Price]:
    """Price a flush's shares through the ``infermeter_price`` hook (first result wins)."""
    totals: dict[tuple[str, float], float] = {}
    for s in shares:
        totals[(s.device_uid, s.t0)] = totals.get((s.device_uid, s.t0), 0.0) + s.energy_j
    out = []
    for s in shares:
        price = pm.hook.infermeter_price(
            share=s,
            device=devices[s.device_uid],
            card=card,
            window_j=totals[(s.device_uid, s.t0)],
        )
        out.append(price if price is not None else Price(None, None, None))
    return out


def price_calls(
    calls: Sequence[Any], shares: Sequence[Share], share_prices: Sequence[Price], card: PriceCard
) -> list[Price]:
    """Price model calls: energy and carbon from their own energy and time; the
    capacity cost at their target's capacity cost per joule in the same flush."""
    energy_by_target: dict[Any, float] = {}
    capacity_by_target: dict[Any, float | None] = {}
    for share, price in zip(shares, share_prices, strict=True):
        if share.target is None:
            continue
        energy_by_target[share.target] = energy_by_target.get(share.target, 0.0) + share.energy_j
        if price.capacity_cost is None:
            capacity_by_target[share.target] = None  # one unpriced device: unknown
        elif share.target not in capacity_by_target or capacity_by_target[share.target] is not None:
            capacity_by_target[share.target] = (
                capacity_by_target.get(share.target) or 0.0
            ) + price.capacity_cost
    out = []
    for call in calls:
        kwh = call.energy_j / J_PER_KWH * card.pue
        per_kwh = card.electricity_at((call.span.t0 + call.span.t1) / 2)
        capacity = capacity_by_target.get(call.target)
        energy = energy_by_target.get(call.target, 0.0)
        out.append(
            Price(
                kwh * per_kwh if per_kwh is not None else None,
                capacity * call.energy_j / energy if capacity is not None and energy > 0 else None,
                kwh * card.carbon_g_per_kwh if card.carbon_g_per_kwh is not None else None,
            )
        )
    return out


def card_or_none(config: Config) -> PriceCard | None:
    """The config's card, or None when the pricing plugin is disabled."""
    return card_from_config(config) if "prices.version" in config.values else None


@hookimpl(trylast=True)
def infermeter_price(share: Share, device: Device, card: PriceCard, window_j: float) -> Price:
    return price_share(share, device, card, window_j)


@hookimpl
def infermeter_config_options() -> Sequence[Option]:
    return CARD_OPTIONS

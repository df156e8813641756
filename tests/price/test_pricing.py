from __future__ import annotations

from datetime import UTC, datetime

import pytest
from support import ROOT

from infermeter.config import CORE_OPTIONS, build_config, load_config
from infermeter.errors import ConfigError
from infermeter.plugin_manager import make_plugin_manager
from infermeter.price import pricing
from infermeter.price.pricing import CARD_OPTIONS, card_from_config, price_share
from infermeter.records import Bucket, Device, DeviceKind, Method, Share

H100 = Device(uid="GPU-0", kind=DeviceKind.GPU, name="NVIDIA H100 80GB HBM3")
CPU = Device(uid="cpu", kind=DeviceKind.CPU, name="AMD EPYC x16 (estimated)", cores=16)
EXAMPLE = ROOT / "contrib" / "price_card.example.toml"


def card(**prices: object) -> pricing.PriceCard:
    return card_from_config(
        build_config([*CORE_OPTIONS, *CARD_OPTIONS], {"prices": prices}, environ={})
    )


def share(energy_j: float, t0: float = 0.0, t1: float = 3600.0) -> Share:
    return Share(t0, t1, "GPU-0", Bucket.ACTIVE, Method.MEASURED, energy_j)


def test_the_example_card_is_the_default() -> None:
    shipped = card_from_config(
        load_config([*CORE_OPTIONS, *CARD_OPTIONS], str(EXAMPLE), environ={})
    )
    assert shipped == card()
    assert shipped.digest == card().digest


def test_energy_capacity_and_carbon_of_one_kwh() -> None:
    c = card(
        electricity_per_kwh=0.10,
        pue=1.5,
        carbon_g_per_kwh=400.0,
        devices={"H100": {"cloud_hourly": 4.0}},
    )
    # 1 kWh of a 2 kWh device-hour: half of the hour's rate.
    p = price_share(share(3_600_000.0), H100, c, window_j=7_200_000.0)
    assert p.energy_cost == pytest.approx(0.15)
    assert p.carbon_g == pytest.approx(600.0)
    assert p.capacity_cost == pytest.approx(2.0)


def test_unknown_prices_are_none_never_zero() -> None:
    c = card(electricity_per_kwh=0, carbon_g_per_kwh=0, cpu_core_hour=0, devices={})
    p = price_share(share(1000.0), H100, c, window_j=1000.0)
    assert (p.energy_cost, p.capacity_cost, p.carbon_g) == (None, None, None)


def test_amortised_purchase_and_cpu_core_hours() -> None:
    c = card(
        devices={"H100": {"purchase": 35064.0, "years": 4, "upkeep_per_year": 0}},
        cpu_core_hour=0.05,
    )
    assert c.hourly_rate(H100) == pytest.approx(35064.0 / 4 / (365.25 * 24))
    assert c.hourly_rate(CPU) == pytest.approx(0.8)


def test_time_of_use_in_the_card_timezone() -> None:
    c = card(
        timezone="America/New_York",
        electricity_per_kwh=0.10,
        time_of_use=[
            {"start": "08:00", "end": "20:00", "days": [0, 1, 2, 3, 4], "per_kwh": 0.20},
            {"start": "20:00", "end": "08:00", "per_kwh": 0.05},
        ],
    )
    # Wednesday 2026-11-25 15:00 UTC is 10:00 in New York: the weekday peak.
    wed_peak = datetime(2026, 11, 25, 15, 0, tzinfo=UTC).timestamp()
    assert c.electricity_at(wed_peak) == 0.20
    # 03:00 UTC is 22:00 the evening before in New York: the night rate.
    assert c.electricity_at(datetime(2026, 11, 25, 3, 0, tzinfo=UTC).timestamp()) == 0.05
    # Saturday noon: no period matches, the flat price.
    assert c.electricity_at(datetime(2026, 11, 28, 17, 0, tzinfo=UTC).timestamp()) == 0.10


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"pue": 0.9}, "prices.pue"),
        ({"timezone": "Mars/Olympus"}, "prices.timezone"),
        ({"time_of_use": [{"start": "25:00", "end": "08:00", "per_kwh": 1}]}, "time_of_use[0]"),
        ({"devices": {"H100": {"hourly": 3}}}, "prices.devices.H100"),
        ({"devices": {"(": {"cloud_hourly": 3}}}, "not a valid regex"),
    ],
)
def test_bad_cards_name_the_key(prices: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        card(**prices)


def test_a_plugin_can_override_the_card_for_its_devices() -> None:
    pm = make_plugin_manager()
    from infermeter import hookimpl

    class Spot:
        @hookimpl
        def infermeter_price(self, share, device, card, window_j):  # type: ignore[no-untyped-def]
            if device.kind is DeviceKind.GPU:
                return pricing.Price(0.0, 0.5, 0.0)
            return None

    plugin = Spot()
    pm.register(plugin, name="spot")
    try:
        c = card()
        cpu_share = Share(0.0, 10.0, "cpu", Bucket.ACTIVE, Method.ESTIMATED, 100.0)
        prices = pricing.price_shares([share(100.0), cpu_share], {"GPU-0": H100, "cpu": CPU}, c, pm)
        assert prices[0] == pricing.Price(0.0, 0.5, 0.0)
        assert prices[1].energy_cost == pytest.approx(100 / 3.6e6 * 1.58 * 0.13)
    finally:
        pm.unregister(plugin)

"""Stats records for the recommenders: an H100 serving a ResNet-50-like model for an hour.

Each builder returns a plain record with documented defaults; a test changes
the one field it is about (``model(busy_fraction=0.1)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from infermeter.config import Config, build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.price.pricing import card_from_config
from infermeter.recommend.stats import (
    BatchPoint,
    DeviceInfo,
    DeviceSample,
    DeviceStats,
    IdleStretch,
    ModelStats,
    Prices,
    Stats,
    TargetStats,
    Window,
)
from infermeter.records import Recommendation

PM = make_plugin_manager()


def config(**sections: Mapping[str, Any]) -> Config:
    return build_config(PM.config_options(), dict(sections), environ={})


CONFIG = config()
CARD = card_from_config(CONFIG)
PRICES = Prices(
    currency="USD",
    per_kwh=0.13,
    pue=1.58,
    carbon_g_per_kwh=475.0,
    cpu_core_hour=0.045,
    card=CARD,
)
WINDOW = Window(0.0, 3600.0)
GPU = DeviceInfo(
    uid="GPU-00000000-test",
    kind="gpu",
    name="NVIDIA H100 80GB HBM3",
    host="h",
    memory_total_bytes=85520809984,
    power_limit_w=700.0,
    min_power_limit_w=200.0,
    max_power_limit_w=700.0,
    compute_capability=(9, 0),
    idle_power_w=70.0,
    keepwarm_power_w=48.0,
    hourly_usd=3.0,
)
CPU = DeviceInfo(uid="cpu", kind="cpu", name="EPYC x16 (estimated)", host="h", cores=16)


def model(**changes: Any) -> ModelStats:
    """A ResNet-50-like fp32 deployment served at batch 1 for an hour, measured at 1 and 32."""
    base = ModelStats(
        model="resnet50",
        dtype="fp32",
        framework="torch",
        parameters=None,
        device=GPU,
        pids=(1,),
        calls=10_000,
        items=10_000,
        batch_calls={1: 10_000},
        energy_j=2500.0,
        energy_cost_usd=0.00014,
        capacity_cost_usd=0.5,
        carbon_g=0.5,
        loaded_cost_usd=3.0,
        loaded_energy_j=600_000.0,
        busy_fraction=0.5,
        device_power_w=170.0,
        active_s=3600.0,
        profile=(
            BatchPoint(1, 10_000, 10_000, 2500.0, 5.0, 7.0),
            BatchPoint(32, 500, 16_000, 2700.0, 14.0, 24.0),
        ),
    )
    return replace(base, **changes)


def device(**changes: Any) -> DeviceStats:
    """An H100 at 5 % busy holding 4 GiB for two hours, at 120 W."""
    samples = tuple(DeviceSample(t, t + 10.0, 1200.0, 0.05, 4 * 2**30) for t in range(0, 7200, 10))
    base = DeviceStats(
        info=GPU,
        samples=samples,
        energy_j=864_000.0,
        cost_usd=6.05,
        energy_cost_usd=0.05,
        idle_j=504_000.0,
        keepwarm_j=345_600.0,
        active_j=14_400.0,
    )
    return replace(base, **changes)


def target(**changes: Any) -> TargetStats:
    base = TargetStats(
        host="h",
        pid=7,
        start_time=0.0,
        framework="torch",
        model="encoder",
        device_uid=GPU.uid,
        calls=100,
        energy_j=5000.0,
        cost_usd=1.0,
        keepwarm_j=2000.0,
        idle_stretches=(IdleStretch(0.0, 600.0, 1440.0, 0.3),),
    )
    return replace(base, **changes)


def stats(
    models: Sequence[ModelStats] = (),
    devices: Sequence[DeviceStats] = (),
    targets: Sequence[TargetStats] = (),
    window: Window = WINDOW,
    prices: Prices = PRICES,
) -> Stats:
    return Stats("h", window, prices, tuple(models), tuple(devices), tuple(targets))


def run(plugin: Any, s: Stats, cfg: Config = CONFIG) -> list[Recommendation]:
    return list(plugin.infermeter_recommend(stats=s, config=cfg))


def tiny(**changes: Any) -> ModelStats:
    """A tiny MLP at 12 % busy, 60k items in 5 s, 0.1 mJ per item."""
    base = model(
        model="mlp",
        calls=60_000,
        items=60_000,
        batch_calls={1: 60_000},
        energy_j=6.0,
        loaded_cost_usd=0.0042,
        loaded_energy_j=600.0,
        busy_fraction=0.12,
        active_s=5.0,
        profile=(BatchPoint(1, 60_000, 60_000, 6.0, 0.072, 0.2),),
    )
    return replace(base, **changes)


def bursty(busy: float = 0.3, power_w: float = 400.0, n: int = 120) -> DeviceStats:
    """Lightly loaded: bursts at `busy` drawing `power_w` on average, idle in between."""
    samples = tuple(
        DeviceSample(
            t * 10.0,
            t * 10.0 + 10.0,
            (power_w if t % 2 else 118.0) * 10.0,
            busy if t % 2 else 0.0,
            2**30,
        )
        for t in range(n)
    )
    return device(samples=samples)

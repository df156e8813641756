"""The agent's last guard on readings: what no device could draw is refused and counted.

The meter here is a plugin registered with the agent's plugin manager, as a
third-party meter would be; it hands over one sane reading a tick and, on
some ticks, one that no card could draw. The truth for the stored total is
the sum of the sane readings the meter produced, kept by the meter itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from infermeter import hookimpl
from infermeter.attribute.readings import implausible
from infermeter.config import build_config
from infermeter.plugin_manager import make_plugin_manager
from infermeter.records import Device, DeviceKind, Method, Reading, Target
from infermeter.sidecar.agent import Agent
from infermeter.store import migrate
from infermeter.store.engine import open_engine
from infermeter.store.models import UsageShare
from infermeter.store.writer import Store

GPU = Device("GPU-test", DeviceKind.GPU, "Test GPU", power_limit_w=700.0)


def reading(t0: float, t1: float, energy_j: float, device: Device = GPU) -> Reading:
    return Reading(device, t0, t1, energy_j, Method.MEASURED)


@pytest.mark.parametrize(
    ("r", "why"),
    [
        (reading(0, 1, 1e9), "W, above"),  # 1e9 W on a 700 W card
        (reading(0, 1, -5.0), "non-negative"),
        (reading(0, 1, math.nan), "non-negative"),
        (reading(0, 1, math.inf), "non-negative"),
        (reading(1, 0, 5.0), "not an interval"),
        (reading(0, math.inf, 5.0), "not an interval"),
    ],
)
def test_what_no_device_draws_is_implausible(r: Reading, why: str) -> None:
    problem = implausible(r)
    assert problem is not None and why in problem


def test_what_a_device_can_draw_is_plausible() -> None:
    assert implausible(reading(0, 1, 700.0)) is None  # at the limit
    assert implausible(reading(0, 1, 1300.0)) is None  # a brief excursion
    assert implausible(reading(0, 0, 0.0)) is None
    # With no limit known, any finite non-negative energy is believed.
    cpu = Device("cpu", DeviceKind.CPU, "CPU")
    assert implausible(reading(0, 1, 1e6, cpu)) is None


class SpikyMeter:
    """200 J a second, and every third tick a spike no 700 W card can draw."""

    name = "spiky"

    def __init__(self) -> None:
        self.last: float | None = None
        self.sane_j = 0.0
        self.spikes = 0

    def read(self, now: float, targets: Mapping[int, Target]) -> Sequence[Reading]:
        if self.last is None:
            self.last = now
            return []
        t0, self.last = self.last, now
        out = [reading(t0, now, 200.0 * (now - t0))]
        self.sane_j += out[0].energy_j
        if round(now) % 3 == 0:
            out.append(reading(t0, now, 1e12))
            self.spikes += 1
        return out

    def close(self) -> None:
        pass


class SpikyPlugin:
    def __init__(self) -> None:
        self.meter = SpikyMeter()
        self.called = 0

    @hookimpl
    def infermeter_meters(self, config: object) -> list[SpikyMeter]:
        self.called += 1
        return [self.meter]


def test_the_agent_refuses_a_spike_and_stores_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = open_engine(url, create_dir=True)
    migrate.upgrade(engine)
    pm = make_plugin_manager(load=False)
    plugin = SpikyPlugin()
    pm.register(plugin, name="spiky")
    config = build_config(pm.config_options(), {"agent": {"host": "h"}}, environ={})
    agent = Agent(config, pm, Store(engine, "h"), targets=lambda _now: {}, span_sources=[])
    agent.start()
    assert plugin.called == 1
    caplog.set_level(logging.WARNING, logger="infermeter.sidecar.agent")
    for now in range(1_000_000, 1_000_031):
        agent.tick(float(now))
    agent.flush(1_000_030.0, final=True)
    with engine.connect() as conn:
        stored = conn.execute(select(func.sum(UsageShare.energy_j))).scalar_one()
    assert plugin.meter.spikes == 10
    assert agent.refused_readings == {"spiky": plugin.meter.spikes}
    assert stored == pytest.approx(plugin.meter.sane_j, abs=1e-6)
    said = [r for r in caplog.records if "refused a reading" in r.getMessage()]
    assert len(said) == 1 and "above 2 x the 700 W limit" in said[0].getMessage()
    agent.close()
    engine.dispose()

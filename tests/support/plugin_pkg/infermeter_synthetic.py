"""A third-party plugin as a user would write one: a meter of constant power.

It reports ``[synthetic] devices`` devices drawing ``power_w`` watts each, all
of it busy work of pids nobody knows, and appends one line per flushed batch
to ``[synthetic] marker`` so a test can see its export hook called.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from infermeter import hookimpl
from infermeter.config import Config, Option
from infermeter.records import Device, DeviceKind, Method, Reading, Recommendation, Share, Target


class ConstantMeter:
    name = "synthetic"

    def __init__(self, devices: int, power_w: float, idle_w: float) -> None:
        self.devices = [
            Device(
                uid=f"synthetic-{i}",
                kind=DeviceKind.GPU,
                name="Synthetic",
                index=i,
                idle_power_w=idle_w,
            )
            for i in range(devices)
        ]
        self.power_w = power_w
        self.last: float | None = None

    def read(self, now: float, targets: Mapping[int, Target]) -> Sequence[Reading]:
        last, self.last = self.last, now
        if last is None:
            return []
        dt = now - last
        return [
            Reading(
                device=d,
                t0=last,
                t1=now,
                energy_j=self.power_w * dt,
                method=Method.ESTIMATED,
                weights={-1: 1.0},
                weight_basis="synthetic",
            )
            for d in self.devices
        ]

    def close(self) -> None:
        pass


@hookimpl
def infermeter_config_options() -> list[Option]:
    return [
        Option("synthetic", "devices", 1, "How many synthetic devices."),
        Option("synthetic", "power_w", 100.0, "Power of each, in watts."),
        Option("synthetic", "idle_w", 40.0, "Idle baseline of each, in watts."),
        Option("synthetic", "marker", "", "File to append a line to on every export."),
    ]


@hookimpl
def infermeter_meters(config: Config) -> list[ConstantMeter]:
    s = config.section("synthetic")
    return [ConstantMeter(s["devices"], s["power_w"], s["idle_w"])]


@hookimpl
def infermeter_export(batch: Sequence[Share], config: Config) -> None:
    marker = config["synthetic.marker"]
    if marker:
        with open(marker, "a") as f:
            f.write(
                json.dumps({"shares": len(batch), "energy_j": sum(s.energy_j for s in batch)})
                + "\n"
            )


@hookimpl
def infermeter_apply(recommendation: Recommendation, config: Config, dry_run: bool) -> str | None:
    """Carries out its own kind of advice: appends the subject to the file the evidence names."""
    if recommendation.kind != "synthetic-restart":
        return None
    marker = str(recommendation.evidence["marker"])
    if dry_run:
        return f"would restart {recommendation.subject}"
    with open(marker, "a") as f:
        f.write(recommendation.subject + "\n")
    return f"restarted {recommendation.subject}"

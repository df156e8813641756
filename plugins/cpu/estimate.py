"""CPU energy where no counter exists (VMs, most clouds): estimated from utilisation.

Each interval's energy is ``power_w(busy_fraction) * duration`` with the
linear model of ``cpu_power`` (idle to full-load power of this host's CPUs),
reported as one device ``cpu`` with Method.ESTIMATED on every reading. The
device's ``idle_power_w`` is the model's idle power, so attribution puts the
idle part in the idle bucket and splits only the utilisation-driven part by
CPU-seconds (``cpu_weights``); no keep-warm draw (a CPU has no context to
hold).

The estimate stands aside when RAPL can measure: with ``[cpu] estimate =
"auto"`` (default) it is offered only if the rapl plugin is loaded, not
disabled, and finds no readable package domain (the same ``rapl.scan`` it
uses). ``"always"`` offers it next to RAPL (to compare), ``"never"`` not at
all.

Replay and record: the same meter class runs over a recorded
``cpu_times.jsonl`` (``cpu_trace``), and ``infermeter record`` writes that
file for the targets the procfs plugin finds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from infermeter import hookimpl
from infermeter.config import Config, Option
from infermeter.plugins.cpu import rapl
from infermeter.plugins.cpu.power import CpuPower, cpu_model_name, logical_cpus, power_model
from infermeter.plugins.cpu.trace import (
    CPU_TIMES,
    CpuTimesRecorder,
    RecordedTimes,
    check_files,
    model_name_of,
    recorded_targets,
)
from infermeter.plugins.cpu.weights import WEIGHT_BASIS, CpuTimesSource, CpuWeights, PsutilTimes
from infermeter.records import Device, DeviceKind, Method, Reading, Target
from infermeter.sidecar.trace_check import TraceProblem

log = logging.getLogger(__name__)

DEVICE_UID = "cpu"
ESTIMATE_CHOICES = ("auto", "always", "never")


class CpuEstimateMeter:
    """One whole-host CPU device whose energy is modelled from utilisation."""

    name = "cpu_estimate"

    def __init__(self, source: CpuTimesSource, power: CpuPower) -> None:
        self.power = power
        self._weights = CpuWeights(source)
        self.device = Device(
            uid=DEVICE_UID,
            kind=DeviceKind.CPU,
            name=f"{power.model_name} x{power.ncpu} (estimated)",
            power_limit_w=power.max_w,
            idle_power_w=power.idle_w,
            keepwarm_power_w=0.0,
            cores=power.ncpu,
        )

    def read(self, now: float, targets: Mapping[int, Target]) -> list[Reading]:
        interval = self._weights.update(now, targets)
        if interval is None:
            return []
        u = interval.busy_fraction
        return [
            Reading(
                device=self.device,
                t0=interval.t0,
                t1=interval.t1,
                energy_j=self.power.power_w(u) * interval.duration_s,
                method=Method.ESTIMATED,
                weights=dict(interval.weights),
                weight_basis=WEIGHT_BASIS,
                busy_fraction=u,
                note=f"linear model, {self.power.source}",
            )
        ]

    def close(self) -> None:
        pass


def estimate_mode(config: Config) -> str:
    """auto, always or never: the option declares its choices, so the config holds one."""
    return str(config["cpu.estimate"])


def rapl_measures(config: Config) -> bool:
    """Whether the rapl plugin will offer a package meter with this config."""
    if "rapl.root" not in config.options:
        return False  # the rapl plugin is not loaded: its options were never declared
    if "core.rapl" in config["plugins.disabled"]:
        return False
    return rapl.scan(config["rapl.root"]).has_package


def host_power(config: Config, model_name: str, ncpu: int) -> CpuPower:
    return power_model(model_name, ncpu, float(config["cpu.tdp_w"]), float(config["cpu.idle_w"]))


@hookimpl
def infermeter_config_options() -> Sequence[Option]:
    return [
        Option(
            "cpu",
            "tdp_w",
            0.0,
            "Whole-host CPU power at 100 % load, watts; 0: from the "
            "CPU table (per logical CPU x logical CPUs).",
        ),
        Option("cpu", "idle_w", 0.0, "Whole-host CPU power at idle, watts; 0: from the table."),
        Option(
            "cpu",
            "estimate",
            "auto",
            "auto: estimate CPU energy only where RAPL cannot measure it; always; never.",
            choices=ESTIMATE_CHOICES,
        ),
    ]


@hookimpl
def infermeter_meters(config: Config) -> Sequence[CpuEstimateMeter]:
    mode = estimate_mode(config)
    if mode == "never" or (mode == "auto" and rapl_measures(config)):
        return []
    power = host_power(config, cpu_model_name(), logical_cpus())
    log.info(
        "CPU energy estimated from utilisation: %.1f W idle to %.1f W at full load (%s)",
        power.idle_w,
        power.max_w,
        power.source,
    )
    return [CpuEstimateMeter(PsutilTimes(), power)]


@hookimpl
def infermeter_replay_meters(trace_dir: Path, config: Config) -> Sequence[CpuEstimateMeter]:
    path = Path(trace_dir) / CPU_TIMES
    if not path.is_file() or estimate_mode(config) == "never":
        return []
    source = _load(path)
    if source is None:
        return []
    power = host_power(config, model_name_of(Path(trace_dir)), source.ncpu)
    return [CpuEstimateMeter(source, power)]


def _load(path: Path) -> RecordedTimes | None:
    if not path.is_file():
        return None
    try:
        return RecordedTimes.load(path)
    except ValueError:
        log.warning("%s holds no usable row; no CPU replay", path)
        return None


@hookimpl
def infermeter_replay_check(trace_dir: Path) -> Sequence[TraceProblem]:
    return check_files(Path(trace_dir))


@hookimpl
def infermeter_replay_window(trace_dir: Path) -> tuple[float, float] | None:
    source = _load(Path(trace_dir) / CPU_TIMES)
    return source.window if source else None


@hookimpl
def infermeter_replay_targets(trace_dir: Path, config: Config) -> Sequence[Target]:
    if _load(Path(trace_dir) / CPU_TIMES) is None:
        return []
    return recorded_targets(Path(trace_dir), config.host)


@hookimpl
def infermeter_recorders(out_dir: Path, config: Config) -> Sequence[CpuTimesRecorder]:
    return [CpuTimesRecorder(Path(out_dir), config)]

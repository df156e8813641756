"""NVIDIA GPUs through NVML: live meters, the recorder, and replay of traces.

The hooks here only wire things up; the work is in:

- devices: listing GPUs (and MIG instances) as records.Device, with
  idle and keep-warm defaults by product name;
- meter: NvmlMeter, energy per tick (counter at most once a second,
  instant power for the shape inside), per-process weights and holders;
- query: nvml_query, one guarded NVML call with a default;
- samples: the pure parts (power integral, weights from what polls saw);
- record: NvmlRecorder, writing the shared fixtures' file format;
- replay: NvmlStandIn, which answers like pynvml from a trace, and
  ReplayNvmlMeter, the same meter over it;
- trace: the trace files (each line checked), the replay window and targets.

Live, NVML is initialised once when the meters are created and shut down by
the meter's ``close()``: one ``nvmlInit`` for the agent's life. No driver, no
library, no permission or no GPU is not an error: ``infermeter_meters``
returns nothing and logs one line saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infermeter import hookimpl
from infermeter.config import Config, Option

# Every process that loads plugins loads this one, most of them never to
# meter a GPU (a report, an instrumented application): pynvml and the meter
# modules are imported by the hooks that use them.
if TYPE_CHECKING:
    from infermeter.hookspecs import Meter, Recorder
    from infermeter.plugins.nvml.devices import Gpu
    from infermeter.plugins.nvml.meter import NvmlMeter
    from infermeter.records import Target
    from infermeter.sidecar.trace_check import TraceProblem

log = logging.getLogger("infermeter.plugins.nvml")

OPTIONS = (
    Option("nvml", "enabled", True, "Meter NVIDIA GPUs through NVML."),
    Option(
        "nvml",
        "process_poll_s",
        0.2,
        "Seconds between polls of instant power and per-process GPU utilisation "
        "(the time-share signal); the energy counter is read at most once a second.",
    ),
)
_HINTS = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver library (libnvidia-ml.so.1) on this host",
    "NVMLError_DriverNotLoaded": "the NVIDIA driver is not loaded",
    "NVMLError_NoPermission": "no permission to use NVML: run the agent with access to "
    "/dev/nvidiactl",
}


def open_nvml(nvml: Any) -> list[Gpu] | None:
    """nvmlInit and list the GPUs; None (logged once, NVML released) when there are none."""
    import pynvml

    from infermeter.plugins.nvml.devices import open_gpus
    from infermeter.plugins.nvml.query import nvml_query
    from infermeter.plugins.nvml.samples import why

    try:
        nvml.nvmlInit()
    except pynvml.NVMLError as e:
        hint = next(
            (h for name, h in _HINTS.items() if isinstance(e, getattr(pynvml, name))),
            "NVML cannot start",
        )
        # A host without the library is a CPU host, not a fault; anything else is.
        level = logging.INFO if isinstance(e, pynvml.NVMLError_LibraryNotFound) else logging.WARNING
        log.log(level, "no NVIDIA GPU metering: %s (%s)", hint, why(e))
        return None
    try:
        gpus = open_gpus(nvml)
    except pynvml.NVMLError as e:
        gpus = []
        log.warning("no NVIDIA GPU metering: NVML cannot list the GPUs (%s)", why(e))
    else:
        if not gpus:
            log.info("no NVIDIA GPU metering: NVML lists no usable GPU")
    if not gpus:
        nvml_query(nvml.nvmlShutdown)
        return None
    return gpus


def open_meters(nvml: Any, config: Config) -> list[NvmlMeter]:
    """The live meter over ``nvml`` (pynvml), polling in its own thread; [] without GPUs."""
    from infermeter.plugins.nvml.meter import NvmlMeter

    if not config["nvml.enabled"]:
        return []
    gpus = open_nvml(nvml)
    if gpus is None:
        return []
    poll_s = float(config["nvml.process_poll_s"])
    if poll_s <= 0:
        log.warning("nvml.process_poll_s must be > 0, not %s: using 0.2", poll_s)
        poll_s = 0.2
    meter = NvmlMeter(nvml, gpus)
    meter.start_polling(poll_s)
    return [meter]


@hookimpl
def infermeter_config_options() -> Sequence[Option]:
    return OPTIONS


@hookimpl
def infermeter_meters(config: Config) -> Sequence[Meter]:
    import pynvml

    return open_meters(pynvml, config)


@hookimpl
def infermeter_recorders(out_dir: Path, config: Config) -> Sequence[Recorder]:
    import pynvml

    from infermeter.plugins.nvml.record import NvmlRecorder

    if not config["nvml.enabled"]:
        return []
    gpus = open_nvml(pynvml)
    return [] if gpus is None else [NvmlRecorder(pynvml, gpus, out_dir)]


@hookimpl
def infermeter_replay_meters(trace_dir: Path, config: Config) -> Sequence[Meter]:
    from infermeter.plugins.nvml.replay import NvmlStandIn, ReplayNvmlMeter
    from infermeter.plugins.nvml.trace import device_indices

    if not config["nvml.enabled"] or not device_indices(trace_dir):
        return []
    standin = NvmlStandIn.from_trace(trace_dir)
    return [ReplayNvmlMeter(standin)] if standin.gpus else []


@hookimpl
def infermeter_replay_check(trace_dir: Path) -> Sequence[TraceProblem]:
    from infermeter.plugins.nvml.trace import check_files

    return check_files(trace_dir)


@hookimpl
def infermeter_replay_targets(trace_dir: Path, config: Config) -> Sequence[Target]:
    from infermeter.plugins.nvml.trace import replay_targets

    return replay_targets(trace_dir)


@hookimpl
def infermeter_replay_window(trace_dir: Path) -> tuple[float, float] | None:
    from infermeter.plugins.nvml.trace import trace_window

    return trace_window(trace_dir)

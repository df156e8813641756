"""RAPL: the CPU packages' and DRAM's own energy counters, via Linux powercap.

Layout (Documentation/power/powercap/powercap.rst): each zone is a folder
under /sys/class/powercap named ``<control type>:<package>`` or
``<control type>:<package>:<subzone>`` with ``name``, ``energy_uj`` (a
cumulative counter in microjoules) and ``max_energy_range_uj`` (where it
wraps to 0). The control type is ``intel-rapl`` for Intel and also for AMD
Zen (Linux 5.11 added AMD Fam17h/19h support to the same intel_rapl_msr
driver, so AMD shows the same names, with no DRAM domain); newer Intel parts
may expose the same domains again as ``intel-rapl-mmio`` or
``intel-rapl-tpmi``, read here only for domains the MSR tree lacks.

Metered: ``package-N`` zones (DeviceKind.CPU_PACKAGE) and ``dram`` subzones
(DeviceKind.DRAM). ``core`` and ``uncore`` are parts of the package and
``psys`` covers the platform including the package: metering them too would
count the same joules twice.

Wraparound: a counter that wrapped between two polls is wrap-corrected
(``range - prev + cur``); one that wrapped twice cannot be. The counter
wraps after ``range / power`` seconds: Intel's usual range is 262,143 J
(2^32 energy units of 61 uJ), AMD's 65,712 J (15.3 uJ units). One poller
thread per meter reads every domain every ``range / (2 * rapl.max_power_w)``
seconds (default 1000 W: 131 s on Intel, 33 s on AMD), half the shortest
wrap time at a power no single domain reaches, so it never misses a wrap
even when ticks are long or the scheduler stalls; ``read()`` also polls.

Since the fix for CVE-2020-8694 (PLATYPUS) ``energy_uj`` is readable only by
root. Then this plugin offers no meter, says once how to grant access, and
the CPU estimate (``cpu_estimate``) takes over.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infermeter import hookimpl
from infermeter.config import Config, Option
from infermeter.plugins.cpu.power import (
    PER_THREAD_W,
    cpu_model_name,
    logical_cpus,
    micro_architecture,
)
from infermeter.plugins.cpu.weights import WEIGHT_BASIS, CpuTimesSource, CpuWeights, PsutilTimes
from infermeter.records import Device, DeviceKind, Method, Reading, Target

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/class/powercap"
_ZONE = re.compile(r"^(intel-rapl|intel-rapl-tpmi|intel-rapl-mmio):(\d+)(?::(\d+))?$")
_PREFERENCE = {"intel-rapl": 0, "intel-rapl-tpmi": 1, "intel-rapl-mmio": 2}


@dataclass(frozen=True, slots=True)
class Domain:
    """One readable RAPL zone."""

    path: Path
    name: str  # as the kernel names it: package-0, dram
    uid: str  # rapl:package-0, rapl:dram-0
    kind: DeviceKind
    package: int
    max_range_uj: int


@dataclass(frozen=True, slots=True)
class RaplScan:
    """What a powercap tree offers: readable domains, and those we may not read."""

    domains: tuple[Domain, ...]
    denied: tuple[Path, ...]

    @property
    def has_package(self) -> bool:
        return any(d.kind is DeviceKind.CPU_PACKAGE for d in self.domains)


def _read_int(path: Path) -> int:
    with open(path, "rb", buffering=0) as f:
        return int(f.read())


def scan(root: str | Path = DEFAULT_ROOT) -> RaplScan:
    """Find the package and DRAM domains under ``root`` and try to read each counter."""
    base = Path(root)
    try:
        entries = sorted(p.name for p in base.iterdir())
    except OSError:
        return RaplScan((), ())
    zones = []
    for entry in entries:
        m = _ZONE.match(entry)
        if m:
            zones.append((_PREFERENCE[m.group(1)], int(m.group(2)), entry))
    domains: dict[str, Domain] = {}
    denied: list[Path] = []
    for _pref, package, entry in sorted(zones):
        zone = base / entry
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if name.startswith("package"):
            kind = DeviceKind.CPU_PACKAGE
        elif name == "dram":
            kind = DeviceKind.DRAM
        else:
            continue  # core, uncore, psys: inside or around a package we already meter
        uid = f"rapl:{name}" if re.search(r"-\d+$", name) else f"rapl:{name}-{package}"
        if uid in domains:
            continue  # the same domain through a less preferred interface
        try:
            max_range = _read_int(zone / "max_energy_range_uj")
            _read_int(zone / "energy_uj")
        except PermissionError:
            denied.append(zone / "energy_uj")
            continue
        except (OSError, ValueError) as e:
            log.debug("RAPL zone %s unreadable: %s", zone, e)
            continue
        if max_range <= 0:
            continue
        domains[uid] = Domain(zone, name, uid, kind, package, max_range)
    return RaplScan(tuple(domains.values()), tuple(denied))


def wrap_delta(prev_uj: int, cur_uj: int, max_range_uj: int) -> int:
    """Energy between two counter values that may have wrapped once at ``max_range_uj``."""
    return cur_uj - prev_uj if cur_uj >= prev_uj else max_range_uj - prev_uj + cur_uj


def poll_period_s(domains: Sequence[Domain], max_power_w: float) -> float:
    """Half the shortest time any domain takes to wrap at ``max_power_w``."""
    return min(d.max_range_uj / 1e6 / max_power_w for d in domains) / 2


class RaplMeter:
    """All RAPL domains of the host, read together and split by CPU-seconds."""

    name = "rapl"

    def __init__(
        self,
        domains: Sequence[Domain],
        source: CpuTimesSource,
        max_power_w: float = 1000.0,
        package_idle_w: float | None = None,
        cpu_name: str = "",
    ) -> None:
        if not domains:
            raise ValueError("a RAPL meter needs at least one domain")
        self.domains = tuple(domains)
        self._weights = CpuWeights(source)
        self._lock = threading.Lock()
        self._last = {d.uid: _read_int(d.path / "energy_uj") for d in self.domains}
        self._acc_uj = dict.fromkeys(self._last, 0)
        self._failed: set[str] = set()
        self.polls = 0
        self.devices = {
            d.uid: Device(
                uid=d.uid,
                kind=d.kind,
                name=f"RAPL {d.name}" + (f" ({cpu_name})" if cpu_name else ""),
                index=d.package,
                idle_power_w=package_idle_w if d.kind is DeviceKind.CPU_PACKAGE else None,
                keepwarm_power_w=0.0,
            )
            for d in self.domains
        }
        self.poll_s = poll_period_s(self.domains, max_power_w)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infermeter-rapl-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        """Fold every counter's progress since the last poll into the running totals."""
        with self._lock:
            for d in self.domains:
                try:
                    cur = _read_int(d.path / "energy_uj")
                except (OSError, ValueError) as e:
                    if d.uid not in self._failed:
                        self._failed.add(d.uid)
                        log.warning("RAPL %s stopped answering (%s); its readings pause", d.uid, e)
                    continue
                self._failed.discard(d.uid)
                self._acc_uj[d.uid] += wrap_delta(self._last[d.uid], cur, d.max_range_uj)
                self._last[d.uid] = cur
            self.polls += 1

    def read(self, now: float, targets: Mapping[int, Target]) -> list[Reading]:
        self.poll()
        interval = self._weights.update(now, targets)
        with self._lock:
            energy_uj, self._acc_uj = self._acc_uj, dict.fromkeys(self._acc_uj, 0)
            failed = set(self._failed)
        if interval is None:
            return []  # the baseline: counters since start are not this interval's
        return [
            Reading(
                device=self.devices[d.uid],
                t0=interval.t0,
                t1=interval.t1,
                energy_j=energy_uj[d.uid] / 1e6,
                method=Method.MEASURED,
                weights=dict(interval.weights),
                weight_basis=WEIGHT_BASIS,
                busy_fraction=interval.busy_fraction,
            )
            for d in self.domains
            if d.uid not in failed
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def permission_hint(root: str | Path) -> str:
    return (
        f"RAPL energy counters under {root} are readable only by root (kernel fix for "
        "CVE-2020-8694): no RAPL meter, the CPU estimate is used instead. To measure, run the "
        f"agent as root, or grant read access: sudo chmod o+r {root}/intel-rapl:*/energy_uj "
        '(until reboot; to keep it, a udev rule: ACTION=="add", SUBSYSTEM=="powercap", '
        'RUN+="/bin/chmod o+r /sys%p/energy_uj")'
    )


def package_idle_w(n_packages: int, model_name: str | None = None) -> float | None:
    """Default idle draw of one package: the table's per-thread idle x its threads.

    The table's figures are whole-server wall power per thread (SPECpower),
    so this overstates a bare package somewhat; None when the CPU is not in
    the table, and the core learns the baseline from quiet intervals.
    """
    arch = micro_architecture(cpu_model_name() if model_name is None else model_name)
    if arch is None or n_packages <= 0:
        return None
    return PER_THREAD_W[arch][0] * logical_cpus() / n_packages


@hookimpl
def infermeter_config_options() -> Sequence[Option]:
    return [
        Option(
            "rapl",
            "root",
            DEFAULT_ROOT,
            "Where the powercap zones are (tests point it at a fake tree).",
        ),
        Option(
            "rapl",
            "max_power_w",
            1000.0,
            "Highest power one RAPL domain can draw; sets "
            "the poll period so no counter wrap is missed.",
        ),
        Option(
            "rapl",
            "idle_w",
            0.0,
            "Idle power of one CPU package; 0: from the CPU table "
            "when the model is known, else learned.",
        ),
    ]


@hookimpl
def infermeter_meters(config: Config) -> Sequence[RaplMeter]:
    root = config["rapl.root"]
    found = scan(root)
    if not found.has_package:
        if found.denied:
            log.warning("%s", permission_hint(root))
        else:
            log.info("no readable RAPL package domain under %s; no RAPL meter", root)
        return []
    if found.denied:
        log.warning(
            "RAPL: %s not readable; metering the other domains",
            ", ".join(str(p) for p in found.denied),
        )
    n_packages = sum(d.kind is DeviceKind.CPU_PACKAGE for d in found.domains)
    idle = float(config["rapl.idle_w"]) or package_idle_w(n_packages)
    try:
        meter = RaplMeter(
            found.domains,
            PsutilTimes(),
            max_power_w=float(config["rapl.max_power_w"]),
            package_idle_w=idle,
            cpu_name=cpu_model_name(),
        )
    except (OSError, ValueError) as e:
        log.warning("RAPL counters under %s could not be read: %s; no RAPL meter", root, e)
        return []
    log.info("RAPL: %s, polled every %.1f s", ", ".join(d.uid for d in found.domains), meter.poll_s)
    return [meter]

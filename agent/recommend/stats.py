"""What the recommenders see: plain frozen records built from the store for a window.

A recommender never queries the store. It receives ``infermeter_recommend``'s
``stats``, a ``Stats`` record holding the others, and reads their fields as
they are typed, so a third-party recommender sees exactly what the built-in
ones see and a test can build them by hand.

Money figures are in the price card's currency and are None when the card
could not price them (never 0 for "unknown"). Energy is joules over the
window; ``Window.month_factor`` turns a window figure into a month.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from infermeter.price.pricing import J_PER_KWH
from infermeter.records import PriceCard

MONTH_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Window:
    """The span of measurements the statistics cover, and how it scales to a month."""

    t0: float
    t1: float

    @property
    def seconds(self) -> float:
        return max(self.t1 - self.t0, 0.0)

    @property
    def month_factor(self) -> float:
        """Multiply a figure measured over the window to get it per 30-day month."""
        return MONTH_S / self.seconds if self.seconds > 0 else 0.0

    @property
    def assumption(self) -> str:
        return (
            f"monthly figures extrapolate the {self.seconds:.0f} s observed "
            f"({self.t0:.0f}-{self.t1:.0f}) to 30 days at the same rate"
        )


@dataclass(frozen=True, slots=True)
class Prices:
    """The price card's figures the recommenders need to value energy."""

    currency: str = "USD"
    per_kwh: float | None = None  # at the window's midpoint (time-of-use aware)
    pue: float = 1.0
    carbon_g_per_kwh: float | None = None
    cpu_core_hour: float | None = None
    card: PriceCard | None = None

    def kwh(self, energy_j: float) -> float:
        """Energy at the meter, as kWh drawn from the grid (PUE included)."""
        return energy_j / J_PER_KWH * self.pue

    def energy_usd(self, energy_j: float) -> float | None:
        return None if self.per_kwh is None else self.kwh(energy_j) * self.per_kwh

    def kgco2e(self, energy_j: float) -> float:
        return (
            0.0
            if self.carbon_g_per_kwh is None
            else self.kwh(energy_j) * self.carbon_g_per_kwh / 1000
        )


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as the store (and, live, NVML) describes it, with its price."""

    uid: str
    kind: str  # gpu | cpu | cpu-package | dram
    name: str
    host: str = ""
    memory_total_bytes: int | None = None
    power_limit_w: float | None = None
    min_power_limit_w: float | None = None  # from NVML when known, else None
    max_power_limit_w: float | None = None
    compute_capability: tuple[int, int] | None = None
    idle_power_w: float | None = None
    keepwarm_power_w: float | None = None
    cores: int | None = None
    hourly_usd: float | None = None

    @property
    def short(self) -> str:
        return f"{self.name} {self.uid[:12]}"


@dataclass(frozen=True, slots=True)
class BatchPoint:
    """One batch size as measured: calls, energy per item and latency per call."""

    batch: int
    calls: int
    items: int
    energy_j: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    shared: bool = False  # measured while other targets time-shared the device

    @property
    def j_per_item(self) -> float:
        return self.energy_j / self.items if self.items > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ModelStats:
    """One model deployment: a model at one precision on one device.

    Window figures (calls, items, histogram, energy, costs) cover the window;
    ``profile`` covers the longer profile lookback, so a deployment that has
    served several batch sizes in the past can be judged on its own curve.
    ``cost_usd`` is what its calls were charged (energy and the device's
    hourly rate split by energy); ``loaded_cost_usd`` adds its part of the
    device's idle and keep-warm cost while it ran, i.e. what holding the
    device for it cost (the figure to compare with moving it elsewhere).
    """

    model: str
    dtype: str | None
    framework: str | None
    parameters: int | None
    device: DeviceInfo
    pids: tuple[int, ...]
    calls: int
    items: int
    batch_calls: Mapping[int, int] = field(hash=False)  # batch size -> calls, in the window
    energy_j: float = 0.0
    energy_cost_usd: float | None = None
    capacity_cost_usd: float | None = None
    carbon_g: float | None = None
    loaded_cost_usd: float | None = None
    loaded_energy_j: float = 0.0  # its part of all the device drew while it ran
    busy_fraction: float | None = None  # the device's, while the deployment ran
    device_power_w: float | None = None  # the device's mean power while it ran
    active_s: float = 0.0  # time covered by its calls in the window
    profile: tuple[BatchPoint, ...] = ()
    first_t: float = 0.0
    last_t: float = 0.0

    @property
    def cost_usd(self) -> float | None:
        if self.energy_cost_usd is None or self.capacity_cost_usd is None:
            return None
        return self.energy_cost_usd + self.capacity_cost_usd

    @property
    def j_per_item(self) -> float:
        return self.energy_j / self.items if self.items > 0 else 0.0

    @property
    def key(self) -> str:
        """The subject string: stable across runs for the same deployment."""
        dtype = self.dtype or "?"
        return f"{self.model}:{dtype}@{self.device.host}/{self.device.uid[:12]}"

    def point(self, batch: int) -> BatchPoint | None:
        return next((p for p in self.profile if p.batch == batch), None)


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One flush window of a device: power, how busy, memory held."""

    t0: float
    t1: float
    energy_j: float
    busy_fraction: float | None
    memory_used_bytes: int | None

    @property
    def power_w(self) -> float:
        return self.energy_j / (self.t1 - self.t0) if self.t1 > self.t0 else 0.0


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch in which a device was held by processes but served no call."""

    t0: float
    t1: float
    held_by: tuple[int, ...]  # pids holding it
    energy_j: float  # all the device's energy in the stretch
    idle_j: float
    keepwarm_j: float
    cost_usd: float | None  # all of it: energy and hourly rate
    idle_cost_usd: float | None  # the idle bucket's share (what only releasing it saves)

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


@dataclass(frozen=True, slots=True)
class DeviceStats:
    info: DeviceInfo
    samples: tuple[DeviceSample, ...]
    energy_j: float
    cost_usd: float | None
    energy_cost_usd: float | None
    idle_j: float
    keepwarm_j: float
    active_j: float
    gaps: tuple[Gap, ...] = ()

    @property
    def observed_s(self) -> float:
        return sum(s.t1 - s.t0 for s in self.samples)

    @property
    def memory_peak_bytes(self) -> int | None:
        known = [s.memory_used_bytes for s in self.samples if s.memory_used_bytes is not None]
        return max(known) if known else None

    def busy_quantile(self, q: float) -> float | None:
        """Time-weighted quantile of the busy fraction over the samples that know it."""
        known = sorted(
            (s.busy_fraction, s.t1 - s.t0) for s in self.samples if s.busy_fraction is not None
        )
        total = sum(w for _, w in known)
        if total <= 0:
            return None
        acc = 0.0
        for value, w in known:
            acc += w
            if acc >= q * total:
                return value
        return known[-1][0]


@dataclass(frozen=True, slots=True)
class IdleStretch:
    """A stretch in which one process held a device and made no call."""

    t0: float
    t1: float
    keepwarm_j: float
    cost_usd: float | None  # its keep-warm shares: energy and their part of the hourly rate

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


@dataclass(frozen=True, slots=True)
class TargetStats:
    """One process: what it held and what it cost, and when it held without serving."""

    host: str
    pid: int
    start_time: float
    framework: str
    model: str | None  # its label, or the model(s) its calls named, joined
    device_uid: str
    calls: int
    energy_j: float
    cost_usd: float | None  # all its shares on the device: active and keep-warm
    keepwarm_j: float
    idle_stretches: tuple[IdleStretch, ...] = ()
    first_call_t: float | None = None

    @property
    def key(self) -> str:
        return f"pid {self.pid} ({self.model or 'no model'})@{self.host}/{self.device_uid[:12]}"


@dataclass(frozen=True, slots=True)
class Stats:
    """Everything one recommend run knows about one host, over one window."""

    host: str
    window: Window
    prices: Prices
    models: tuple[ModelStats, ...] = ()
    devices: tuple[DeviceStats, ...] = ()
    targets: tuple[TargetStats, ...] = ()

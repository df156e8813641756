"""The plain records that flow between the agent's steps.

Every step of the agent (discover, read meters, attribute, price, store,
recommend) is a function from records to records. Keeping them frozen means a
plugin can never change what another plugin or the store has already seen.

Units are in the names: ``energy_j`` joules, ``power_w`` watts, ``t0``/``t1``
UTC seconds since the epoch, intervals half-open ``[t0, t1)``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo


class Method(StrEnum):
    """How an energy figure was obtained: its provenance, carried to every row."""

    MEASURED = "measured"  # a hardware energy counter (NVML total energy, RAPL)
    INTEGRATED = "integrated"  # power samples integrated over time
    ESTIMATED = "estimated"  # a model (utilisation x TDP), no sensor at all


class Bucket(StrEnum):
    """Where a share of a device's energy went (DESIGN.md, attribution)."""

    ACTIVE = "active"  # work done for a known target
    KEEPWARM = "keepwarm"  # extra draw of a device merely held by targets
    IDLE = "idle"  # the device's baseline with nothing on it
    OTHER = "other"  # work that no known target explains


class Framework(StrEnum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"
    LITERT = "litert"
    UNKNOWN = "unknown"


class DeviceKind(StrEnum):
    GPU = "gpu"
    CPU_PACKAGE = "cpu-package"
    DRAM = "dram"
    CPU = "cpu"  # a whole-host CPU figure, as the estimate gives


# The largest item or token count a span may carry: the store's INTEGER columns.
MAX_COUNT = 2**31 - 1

# (host, pid, process start time): pids are reused, this triple is not.
TargetKey = tuple[str, int, float]

# How energy was spread over an interval: (t_end, joules) pieces in time order.
Profile = tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class Target:
    """One process being metered."""

    host: str
    pid: int
    start_time: float
    framework: Framework = Framework.UNKNOWN
    cmdline: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    how_found: str = "runtime"  # runtime | rule | sdk

    @property
    def key(self) -> TargetKey:
        return (self.host, self.pid, self.start_time)

    @property
    def model(self) -> str | None:
        return self.labels.get("model")


@dataclass(frozen=True, slots=True)
class Device:
    """A metered device as its meter describes it once, not every reading."""

    uid: str  # stable across restarts: GPU UUID, MIG UUID, "rapl:package-0", "cpu"
    kind: DeviceKind
    name: str  # product name, e.g. "NVIDIA H100 80GB HBM3"
    index: int = 0
    memory_total_bytes: int | None = None
    power_limit_w: float | None = None
    idle_power_w: float | None = None  # bare baseline, nothing on the device
    keepwarm_power_w: float | None = None  # extra draw while a context is held
    parent_uid: str | None = None  # the physical GPU of a MIG instance
    cores: int | None = None  # logical CPUs, for a CPU device (core-hour pricing)
    compute_capability: tuple[int, int] | None = None  # a GPU's (major, minor)
    # The power limits the driver accepts (NVML's constraints), for power-cap advice.
    min_power_limit_w: float | None = None
    max_power_limit_w: float | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """One meter over one interval [t0, t1).

    ``weights`` are per-pid activity seen in the interval (GPU: smUtil-weighted
    sample counts; CPU: CPU-seconds) and ``weight_basis`` names which signal
    they are, so a report can say how a split was made. ``holders`` are the
    pids that held the device (a GPU context) whether or not they computed.
    ``busy_fraction`` is how busy the device was (0..1) when the meter knows.

    ``profile`` says how the energy was spread inside the interval, for a
    report whose range cuts it: ``(t_end, joules)`` pieces in time order,
    the first starting at ``t0``, the last ending at ``t1``, their joules
    summing to ``energy_j``. None: nothing finer is known (spread it by time).
    """

    device: Device
    t0: float
    t1: float
    energy_j: float
    method: Method
    weights: Mapping[int, float] = field(default_factory=dict, hash=False)
    weight_basis: str = "none"  # sm-util | gpu-memory | equal | cpu-seconds | none
    holders: frozenset[int] = frozenset()
    busy_fraction: float | None = None
    memory_used_bytes: int | None = None  # device memory held by processes (peak seen)
    note: str = ""  # why a reading is degraded, when it is
    profile: Profile | None = None

    @property
    def duration_s(self) -> float:
        return self.t1 - self.t0


@dataclass(frozen=True, slots=True)
class SpanPart:
    """One request's part of an engine step (continuous batching).

    A step span (one forward pass) serves several requests at once; each part
    names one of them and the tokens the step did for it: ``prefill_tokens``
    of its prompt (on its first step, or a chunk of it), ``decode_tokens``
    generated (1 per step while it decodes). The step's energy is split over
    its parts (infermeter.attribute.step_split).
    """

    request_id: str | None = None
    tenant: str | None = None
    prefill_tokens: int = 0
    decode_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Span:
    """One model call or one request inside a target.

    ``parts`` is non-empty for a step span: one engine step shared by several
    requests, each part one request's share of it (see SpanPart).

    ``t0``/``t1`` are wall-clock UTC seconds derived from a monotonic clock in
    the inference process; for work on an accelerator ``t1`` is when the
    device finished, not when the launch returned. The model metadata fields
    are what the instrumentation could see (None when it could not).
    """

    pid: int
    model: str
    t0: float
    t1: float
    items: int = 1
    tokens_in: int | None = None
    tokens_out: int | None = None
    request_id: str | None = None
    tenant: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict, hash=False)
    framework: str | None = None  # torch | onnxruntime | litert
    device: str | None = None  # "cpu", "cuda:0", ...
    dtype: str | None = None  # "float32", "bfloat16", ...
    parameters: int | None = None
    # Numbers spans of one pid and model that start at the same t0 (the
    # agent assigns it; it is not on the wire), so neither is lost.
    seq: int = 0
    parts: tuple[SpanPart, ...] = ()


@dataclass(frozen=True, slots=True)
class Share:
    """Energy of one reading assigned to one bucket.

    A share merged over a flush window (attribute.split.merge_shares) keeps
    in ``drawn_t0``/``drawn_t1`` the part of [t0, t1) its energy came from:
    the first and last interval that gave it any. A process that stops (or
    an ``other`` draw that starts) inside a window is then placed in time,
    for a report whose range cuts the window. None: all of [t0, t1).
    """

    t0: float
    t1: float
    device_uid: str
    bucket: Bucket
    method: Method
    energy_j: float
    target: TargetKey | None = None
    model: str | None = None
    tenant: str | None = None
    # How its energy was split: the reading's basis, or after a split between
    # processes energy-model | sm-util*power (attribute/target_split.py); baseline for idle.
    weight_basis: str = "none"
    drawn_t0: float | None = None
    drawn_t1: float | None = None


@dataclass(frozen=True, slots=True)
class Savings:
    """A monthly saving with its range; the point estimate lies inside it.

    ``usd`` is in the price card's currency. The energy and carbon ranges are
    optional (None: the same relative range as the money).
    """

    usd: float
    usd_low: float
    usd_high: float
    kwh: float
    kgco2e: float
    kwh_low: float | None = None
    kwh_high: float | None = None
    kgco2e_low: float | None = None
    kgco2e_high: float | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    kind: str  # batch | quantize | move-to-cpu | right-size | keep-warm | power-cap
    subject_kind: str  # model | target | device | host
    subject: str
    evidence: Mapping[str, Any] = field(hash=False)
    savings: Savings
    confidence: str  # high | medium | low
    confidence_reason: str
    how_to_apply: str

    @property
    def stable_id(self) -> str:
        return stable_id(self.kind, self.subject_kind, self.subject)


def stable_id(kind: str, subject_kind: str, subject: str) -> str:
    """Same advice about the same subject keeps its id across runs (a recommender can
    name it in its own advice before the Recommendation exists)."""
    raw = json.dumps([kind, subject_kind, subject])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# ----- what a flush stores beside the shares (the store writes these) -----


@dataclass(frozen=True, slots=True)
class CallEnergy:
    """One model call with all the energy attributed to it, on every device."""

    span: Span
    target: TargetKey
    energy_j: float
    method: Method  # the weakest provenance among its contributions


@dataclass(frozen=True, slots=True)
class CallEnergyModel:
    """The learned energy of one call class: what the split weighs calls by, as stored.

    J(call) = j_per_call x calls + j_per_item x items + per-token terms; see
    attribute/energy_model.py. ``windows`` is how many intervals the class
    was learned from, ``r2`` the quality of the whole fit it is part of.
    """

    model: str
    dtype: str
    device_kind: str
    j_per_call: float
    j_per_item: float
    j_per_prefill_token: float
    j_per_decode_token: float
    windows: int
    r2: float | None
    fit_windows: int


@dataclass(frozen=True, slots=True)
class DeviceWindowRecord:
    device_uid: str
    t0: float
    t1: float
    energy_j: float
    method: Method  # the weakest provenance among the window's readings
    busy_fraction: float | None  # time-weighted mean over the readings that knew it
    memory_used_bytes: int | None  # the peak any reading saw
    # The readings' profiles end to end (see Reading.profile); None: spread by time.
    profile: Profile | None = None


# ----- the price card and what it says of one share (the store keeps both) -----


@dataclass(frozen=True, slots=True)
class TimeOfUse:
    """A price that applies on some weekdays between two local times."""

    start_min: int  # minutes after local midnight, inclusive
    end_min: int  # exclusive; may be < start_min to wrap past midnight
    days: frozenset[int]  # 0 = Monday
    per_kwh: float

    def applies(self, local: datetime) -> bool:
        if local.weekday() not in self.days:
            return False
        m = local.hour * 60 + local.minute
        if self.start_min <= self.end_min:
            return self.start_min <= m < self.end_min
        return m >= self.start_min or m < self.end_min


@dataclass(frozen=True, slots=True)
class DeviceRate:
    """What one kind of device costs per hour, matched on its product name.

    The optional figures describe the card itself, so that advice can name a
    cheaper card that would still fit what was measured (right-size) or an
    edge device to move a small model to: its memory, its board power, its
    dense 16-bit tensor throughput and its memory bandwidth, from the
    vendor's datasheet. ``name`` is how advice calls it.
    """

    pattern: str  # a regular expression searched in Device.name
    hourly: float  # per device-hour (for a CPU: per core-hour x cores, see below)
    basis: str  # "cloud" | "amortised"
    name: str = ""
    memory_gb: float | None = None
    tdp_w: float | None = None
    tflops: float | None = None  # dense BF16/FP16 tensor TFLOPS
    memory_bw_gbps: float | None = None
    edge: bool = False  # an edge device (a place to move to), not a server card

    @property
    def label(self) -> str:
        return self.name or self.pattern


@dataclass(frozen=True, slots=True)
class PriceCard:
    version: str
    currency: str
    timezone: str
    electricity_per_kwh: float | None
    time_of_use: tuple[TimeOfUse, ...]
    pue: float
    carbon_g_per_kwh: float | None
    device_rates: tuple[DeviceRate, ...]
    cpu_core_hour: float | None
    body: Mapping[str, Any] = field(hash=False)  # the card as written, for the store

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.body, sort_keys=True).encode()).hexdigest()[:16]

    def electricity_at(self, t: float) -> float | None:
        local = datetime.fromtimestamp(t, tz=UTC).astimezone(ZoneInfo(self.timezone))
        for period in self.time_of_use:
            if period.applies(local):
                return period.per_kwh
        return self.electricity_per_kwh

    def device_rate(self, name: str) -> DeviceRate | None:
        """The first entry whose pattern is found in a product name."""
        for rate in self.device_rates:
            if re.search(rate.pattern, name):
                return rate
        return None

    def hourly_rate(self, device: Device) -> float | None:
        rate = self.device_rate(device.name)
        if rate is not None:
            return rate.hourly
        if device.kind in (DeviceKind.CPU, DeviceKind.CPU_PACKAGE) and self.cpu_core_hour:
            cores = device.cores or 0
            return self.cpu_core_hour * cores if cores else None
        return None


@dataclass(frozen=True, slots=True)
class Price:
    energy_cost: float | None
    capacity_cost: float | None
    carbon_g: float | None

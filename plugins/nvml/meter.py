"""The NVML meter: each GPU's energy per tick, with per-process weights and holders.

One class serves both worlds: it is built around an injected ``nvml`` object,
the pynvml module live and the replay stand-in (nvml_replay) in replay, and
calls only pynvml's functions and catches only pynvml's exception classes.

Two entry points share all the work:

- ``poll(now)`` is the cheap sampler, four NVML calls of a few µs per GPU:
  instant power (``nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)``,
  7 µs on an H100), utilisation, per-process utilisation samples and the
  context holders (``nvmlDeviceGetComputeRunningProcesses``, 9 µs). Live,
  a small daemon thread calls it every ``process_poll_s`` (0.2 s, as the
  fixtures were recorded); in replay the replay meter calls it at the
  recording's own row times, so the same code sees the same kind of samples.
- ``read(now, targets)`` closes the interval since the previous call with one
  more poll and turns what was seen into Readings.

Energy. The counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the
driver loaded) is the truth but costs ~3 ms and moves every ~100 ms, so it is
read at most once per ``counter_period_s`` (1 s; a tick that fires up to 10 %
early still reads it). A tick that comes sooner after the last counter read
returns nothing; its interval waits, and when the counter is next read the
delta is split over the waiting intervals by the integral of the instant power
samples inside each (by time when there are none): every interval keeps its
own weights and the sum stays the counter's to the microjoule (Method
MEASURED, the note says it was split). Without a counter (NotSupported,
NoPermission) every reading is the trapezoid integral of the power samples
(INTEGRATED); ``nvmlDeviceGetPowerUsage``, a 1 s average on Hopper, is the
power source only when instant power is unavailable.

The counter is cross-checked, not believed: each delta is held against what
the device can draw and against the power samples of the same interval. A
delta that goes back (driver reload, GPU reset), one whose implied power is
above the plausible ceiling (the power limit, or the highest settable one,
x ``POWER_MARGIN``, over the interval plus one counter step: a 1e12 mJ jump
would otherwise be 1e9 J on a 700 W card), a counter that does not move for
``FROZEN_MIN_DT_S`` while the power samples say the device draws more than
``FROZEN_MIN_W``, and after such a freeze every delta until one agrees with
the power samples again (a counter that catches up on the energy it held
back, or that moved for only part of the interval): each is replaced for
that interval by the power integral, Method INTEGRATED, with a note saying
why. The interval a freeze begins in keeps its (short) counter delta: one
slow second cannot be told from a freeze until the next. The baseline is
re-anchored at every read, so the next sane delta is MEASURED again. A power
sample outside [0, ceiling] is dropped. A counter that answered NotSupported
(or NoPermission, ...) is probed again every ``counter_probe_s``: when it
answers, the meter goes back to it. Each degradation is logged once per GPU
and reason, not every tick.

Profile. Each reading carries how its energy was spread inside its interval
(``Reading.profile``): the interval cut at the instant power samples into
pieces of at least ``PROFILE_PIECE_S``, each piece's share of the energy
its share of the power integral, summing to the reading's energy exactly.
A report whose range cuts a flush window takes the part inside by it; an
interval without power samples has none (spread by time).

Weights. ``nvmlDeviceGetProcessUtilization(handle, lastSeen)`` is polled with
the last seen timestamp carried forward; NotFound (no new sample) is the
normal idle answer. Under time-slicing it returns one sample per call, the
process running then, so the smUtil-weighted count of samples per pid over an
interval is its time share (``weight_basis`` "sm-util", normalised to sum
1). An interval too short to have caught a sample, inside a counter interval
that caught some, takes the counter interval's weights. When process
utilisation is unavailable the split is by ``usedGpuMemory`` from
``nvmlDeviceGetComputeRunningProcesses`` ("gpu-memory"), else equal among the
holders ("equal"). Holders are every pid that call listed in the interval.

Memory. Each reading carries the peak, over the interval's polls, of the
sum of the listed processes' ``usedGpuMemory`` (what the inference processes
hold, without the driver's own reserve that ``nvmlDeviceGetMemoryInfo``
counts): right-size advice compares it with the card's memory.

Errors. Every NVML error degrades only what it touches and is logged once per
device and reason; errors that are not expected to go away (NotSupported,
NoPermission, FunctionNotFound) switch that source off (the energy counter
only until its next probe). A GPU with no energy source left (lost, no power
either) gives no reading. ``read`` never raises.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml

from infermeter.attribute.split import split_exactly
from infermeter.plugins.nvml.devices import Gpu, View
from infermeter.plugins.nvml.query import nvml_query
from infermeter.plugins.nvml.samples import (
    FIELD_READERS,
    Piece,
    Seen,
    integrate,
    power_pieces,
    weights_of,
    why,
)
from infermeter.records import Device, Method, Profile, Reading, Target

log = logging.getLogger("infermeter.plugins.nvml")

COUNTER_SLACK = 0.9  # a 1 s tick that fires a little early still reads the counter
# The plausible ceiling of a GPU's draw: its power limit (or the highest one
# the driver accepts, whichever is higher) times this margin. An H100 at its
# 700 W limit showed instant samples of 712 W in the fixtures; 1.5x leaves
# room for transients and is still 1e6 times below a corrupt counter jump.
POWER_MARGIN = 1.5
# A GPU whose limit NVML does not give: no single NVIDIA device draws this.
UNKNOWN_LIMIT_CEILING_W = 3000.0
# The counter advances in steps (~100 ms on Hopper): a delta over a short
# interval may hold one step more than the interval drew. Two steps of slack.
COUNTER_QUANTUM_S = 0.2
# A counter that has not moved for this long while power says the device
# draws more than FROZEN_MIN_W is frozen (idle is 70 W on an H100).
FROZEN_MIN_DT_S = 0.5
FROZEN_MIN_W = 5.0
# After a freeze the counter is trusted again from the first delta within
# this ratio of the power integral, give or take one counter step at the
# interval's peak power (over 1 s the fixtures' counter and instant-power
# integral agree within 0.90-1.12).
AFTER_FREEZE_RATIO = 1.25
COUNTER_STEP_S = 0.1
# How often a counter that answered NotSupported/NoPermission is asked again.
COUNTER_PROBE_S = 30.0
# A reading's profile (Reading.profile) is cut at power samples into pieces of
# at least this long: fine enough for a report's range to cut a phase that
# starts at 118 W and runs at 400 W within a few watt-seconds, ten pieces a
# second at most (a 10 s window stores ~100 numbers, fewer once flat runs merge).
PROFILE_PIECE_S = 0.1
# Errors that asking again will not cure: the source is switched off for good.
PERMANENT = (
    pynvml.NVMLError_NotSupported,
    pynvml.NVMLError_NoPermission,
    pynvml.NVMLError_FunctionNotFound,
)


def profile_of(shape: Sequence[tuple[float, float]] | None, energy_j: float) -> Profile | None:
    """A reading's profile: its energy spread as the power samples spread theirs.

    ``shape`` is (t_end, joules of power) per piece; the profile's joules are
    ``energy_j`` split in those proportions, exactly. None without a shape or
    energy: a report then spreads the reading by time.
    """
    if shape is None or energy_j <= 0:
        return None
    parts = split_exactly(energy_j, [max(j, 0.0) for _t, j in shape])
    return tuple((t, j) for (t, _j), j in zip(shape, parts, strict=True))


def ceiling_w(device: Device) -> float:
    """The most a GPU can plausibly draw: its highest power limit x POWER_MARGIN."""
    limits = [w for w in (device.power_limit_w, device.max_power_limit_w) if w]
    return max(limits) * POWER_MARGIN if limits else UNKNOWN_LIMIT_CEILING_W


@dataclass(slots=True)
class ViewState:
    view: View
    last_seen: int = 0  # the newest process-utilisation timestamp (µs) seen
    procutil_ok: bool = True
    seen: Seen = field(default_factory=Seen)


@dataclass(slots=True)
class GpuState:
    gpu: Gpu
    views: list[ViewState]
    power: list[tuple[float, float]] = field(default_factory=list)  # (t, W)
    instant_ok: bool = True
    average_ok: bool = True
    util_ok: bool = True
    util_sum: float = 0.0
    util_n: int = 0
    ceiling_w: float = UNKNOWN_LIMIT_CEILING_W  # plausible draw at most (see POWER_MARGIN)
    counter_ok: bool = True
    counter_why: str = ""
    counter_probe_at: float = 0.0  # when a switched-off counter is asked again
    counter_mj: int | None = None
    counter_t: float | None = None
    counter_frozen: bool = False  # the last delta was refused as a frozen counter
    last_t: float | None = None
    pending: list[Piece] = field(default_factory=list)


class NvmlMeter:
    """Readings for every GPU (or MIG instance) of one ``nvml``; see the module doc."""

    name = "nvml"

    def __init__(
        self,
        nvml: Any,
        gpus: Sequence[Gpu],
        counter_period_s: float = 1.0,
        owns_init: bool = True,
        clock: Callable[[], float] = time.time,
        counter_probe_s: float = COUNTER_PROBE_S,
    ) -> None:
        self._nvml = nvml
        self._gpus = [
            GpuState(g, [ViewState(v) for v in g.views], ceiling_w=ceiling_w(g.device))
            for g in gpus
        ]
        self.counter_period_s = counter_period_s
        self.counter_probe_s = counter_probe_s
        self._owns_init = owns_init
        self._clock = clock
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    @property
    def devices(self) -> list[Device]:
        return [v.view.device for g in self._gpus for v in g.views]

    # -- sampling ---------------------------------------------------------

    def poll(self, now: float) -> None:
        """Take the cheap samples of every GPU at ``now``; never raises for NVML."""
        with self._lock:
            for g in self._gpus:
                self._poll_gpu(g, now)

    def start_polling(self, period_s: float) -> None:
        """Live mode: poll every ``period_s`` seconds from a daemon thread until close()."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(period_s):
                try:
                    self.poll(self._clock())
                except Exception:  # a bug must not kill the sampler silently, nor the agent
                    self._warn("meter", "poll-bug", "NVML poll failed", exc_info=True)

        self._thread = threading.Thread(target=loop, name="infermeter-nvml-poll", daemon=True)
        self._thread.start()

    def _warn(self, uid: str, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        if (uid, key) not in self._warned:
            self._warned.add((uid, key))
            log.warning("GPU %s: " + msg, uid, *args, exc_info=exc_info)

    def _info(self, uid: str, key: str, msg: str, *args: Any) -> None:
        if (uid, key) not in self._warned:
            self._warned.add((uid, key))
            log.info("GPU %s: " + msg, uid, *args)

    def _poll_gpu(self, g: GpuState, now: float) -> None:
        watts = self._power_w(g)
        if watts is not None and not 0.0 <= watts <= g.ceiling_w:  # NaN fails too
            self._warn(
                g.gpu.device.uid,
                "power-implausible",
                "power sample of %s W outside [0, %.0f W]: dropped",
                watts,
                g.ceiling_w,
            )
            watts = None
        if watts is not None:  # in time order even when read's `now` trails the poller's
            bisect.insort(g.power, (now, watts))
        if g.util_ok:
            try:
                g.util_sum += float(self._nvml.nvmlDeviceGetUtilizationRates(g.gpu.handle).gpu)
                g.util_n += 1
            except pynvml.NVMLError as e:
                g.util_ok = not isinstance(e, PERMANENT)
                self._warn(
                    g.gpu.device.uid,
                    "util:" + type(e).__name__,
                    "utilisation unavailable (%s): busy fraction left unknown",
                    why(e),
                )
        for v in g.views:
            self._poll_view(v)

    def _power_w(self, g: GpuState) -> float | None:
        nvml, handle, uid = self._nvml, g.gpu.handle, g.gpu.device.uid
        if g.instant_ok:
            try:
                fv = nvml.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
                if fv.nvmlReturn == pynvml.NVML_SUCCESS:
                    read = FIELD_READERS.get(fv.valueType, FIELD_READERS[1])
                    return read(fv.value) / 1000.0
                err: pynvml.NVMLError = pynvml.NVMLError(fv.nvmlReturn)
            except pynvml.NVMLError as e:
                err = e
            g.instant_ok = not isinstance(err, PERMANENT)
            self._warn(
                uid,
                "instant:" + type(err).__name__,
                "instant power unavailable (%s): using the 1 s average",
                why(err),
            )
        if g.average_ok:
            try:
                return float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0
            except pynvml.NVMLError as e:
                g.average_ok = not isinstance(e, PERMANENT)
                self._warn(uid, "power:" + type(e).__name__, "power unavailable (%s)", why(e))
        return None

    def _poll_view(self, v: ViewState) -> None:
        nvml, handle, uid = self._nvml, v.view.handle, v.view.device.uid
        seen = v.seen
        if v.procutil_ok:
            samples: Sequence[Any] = ()
            try:
                samples = nvml.nvmlDeviceGetProcessUtilization(handle, v.last_seen)
                seen.sm_ok = True
            except pynvml.NVMLError_NotFound:
                seen.sm_ok = True  # no new sample: nothing ran since the last one
            except pynvml.NVMLError as e:
                v.procutil_ok = not isinstance(e, PERMANENT)
                self._warn(
                    uid,
                    "procutil:" + type(e).__name__,
                    "per-process utilisation unavailable (%s): weights from GPU memory",
                    why(e),
                )
            newest = v.last_seen
            for s in samples:
                ts = int(s.timeStamp)
                if ts > v.last_seen:
                    seen.sm[int(s.pid)] = seen.sm.get(int(s.pid), 0.0) + float(s.smUtil)
                    newest = max(newest, ts)
            v.last_seen = newest
        try:
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except pynvml.NVMLError as e:
            self._warn(
                uid,
                "procs:" + type(e).__name__,
                "cannot list the processes holding it (%s)",
                why(e),
            )
            return
        used = [int(p.usedGpuMemory) for p in procs if p.usedGpuMemory is not None]
        for p in procs:
            seen.holders.add(int(p.pid))
            if p.usedGpuMemory is not None:
                seen.memory[int(p.pid)] = int(p.usedGpuMemory)
        if used or not procs:  # no process listed: none holds memory
            seen.memory_peak = max(seen.memory_peak or 0, sum(used))

    # -- reading ----------------------------------------------------------

    def read(self, now: float, targets: Mapping[int, Target] | None = None) -> list[Reading]:
        """Readings since the previous call (none on the first); never raises."""
        return self._read(now, force_counter=False)

    def _read(self, now: float, force_counter: bool) -> list[Reading]:
        out: list[Reading] = []
        for g in self._gpus:
            try:
                out.extend(self._read_gpu(g, now, force_counter))
            except Exception:  # a bug here must not stop the other GPUs or the agent
                self._warn(g.gpu.device.uid, "read-bug", "reading failed", exc_info=True)
        return out

    def _read_gpu(self, g: GpuState, now: float, force_counter: bool) -> list[Reading]:
        with self._lock:
            self._poll_gpu(g, now)
            t0 = g.last_t
            if t0 is not None and now <= t0:
                return []  # no time has passed: nothing to say
            g.last_t = now
            seen = [v.seen for v in g.views]
            for v in g.views:
                v.seen = Seen()
            busy = g.util_sum / g.util_n / 100.0 if g.util_n else None
            g.util_sum, g.util_n = 0.0, 0
        if t0 is None:  # the first call only sets the baselines
            if g.counter_ok:
                self._read_counter(g, now)
            self._trim_power(g, now)
            return []
        g.pending.append(Piece(t0, now, seen, busy))
        energies, method, note = self._energies(g, now, force_counter)
        if energies is None:
            return []  # waiting for the next counter read
        pieces, g.pending = g.pending, []
        shapes = self._shapes(g, pieces)
        self._trim_power(g, now)
        if all(e is None for e in energies):
            self._warn(
                g.gpu.device.uid,
                "no-energy",
                "no energy source answers (no counter, no power): no readings",
            )
            return []
        return self._readings(g, pieces, energies, shapes, method, note)

    def _read_counter(self, g: GpuState, now: float) -> tuple[int | None, str]:
        try:
            value = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(g.gpu.handle))
        except pynvml.NVMLError as e:
            g.counter_mj, g.counter_t = None, None  # a later value must not span the gap
            if isinstance(e, PERMANENT):
                g.counter_ok, g.counter_why = False, f"no energy counter ({why(e)})"
                g.counter_probe_at = now + self.counter_probe_s
            self._warn(
                g.gpu.device.uid,
                "counter:" + type(e).__name__,
                "energy counter unavailable (%s): integrating power",
                why(e),
            )
            return None, f"energy counter failed ({why(e)})"
        if not g.counter_ok:
            g.counter_ok, g.counter_why = True, ""
            self._info(g.gpu.device.uid, "counter-back", "energy counter answers again")
        g.counter_mj, g.counter_t = value, now
        return value, ""

    def _energies(
        self, g: GpuState, now: float, force: bool
    ) -> tuple[list[float | None] | None, Method, str]:
        """Energy of each pending piece, or None while waiting for the counter."""
        pieces = g.pending
        if not g.counter_ok and now < g.counter_probe_at:
            return self._integrated(g, pieces), Method.INTEGRATED, g.counter_why
        due = (
            force
            or g.counter_t is None
            or (now - g.counter_t >= self.counter_period_s * COUNTER_SLACK)
        )
        if not due:
            return None, Method.MEASURED, ""
        before, before_t = g.counter_mj, g.counter_t
        value, failed = self._read_counter(g, now)
        if value is None:
            return self._integrated(g, pieces), Method.INTEGRATED, g.counter_why or failed
        if before is None or before_t is None:
            return self._integrated(g, pieces), Method.INTEGRATED, "energy counter re-read"
        refused = self._implausible(g, pieces, before, before_t, value, now)
        if refused:
            return self._integrated(g, pieces), Method.INTEGRATED, refused
        total = (value - before) / 1000.0
        if len(pieces) == 1:
            return [total], Method.MEASURED, ""
        shape = self._integrated(g, pieces)
        if all(s is not None for s in shape) and sum(s or 0.0 for s in shape) > 0:
            parts = split_exactly(total, [s or 0.0 for s in shape])
            return list(parts), Method.MEASURED, "energy counter split over ticks by power"
        parts = split_exactly(total, [p.t1 - p.t0 for p in pieces])
        return list(parts), Method.MEASURED, "energy counter split over ticks by time"

    def _implausible(
        self,
        g: GpuState,
        pieces: Sequence[Piece],
        before: int,
        before_t: float,
        value: int,
        now: float,
    ) -> str:
        """Why the counter's delta since ``before`` cannot be this interval's energy, or ""."""
        uid = g.gpu.device.uid
        dt = max(now - before_t, 0.0)
        delta_mj = value - before
        if delta_mj < 0:
            g.counter_frozen = False
            self._warn(
                uid,
                "counter-reset",
                "energy counter went back (%d -> %d mJ): driver reload or reset",
                before,
                value,
            )
            return f"energy counter went back ({before} -> {value} mJ): integrated power"
        delta_j = delta_mj / 1000.0
        if delta_j > g.ceiling_w * (dt + COUNTER_QUANTUM_S):
            g.counter_frozen = False
            implied = delta_j / dt if dt > 0 else float("inf")
            self._warn(
                uid,
                "counter-jump",
                "energy counter jumped %d mJ in %.2f s (%.3g W, above the plausible %.0f W): "
                "integrating power for such intervals",
                delta_mj,
                dt,
                implied,
                g.ceiling_w,
            )
            return (
                f"energy counter jumped {delta_mj} mJ in {dt:.2f} s ({implied:.3g} W, "
                f"above the plausible {g.ceiling_w:.0f} W): integrated power"
            )
        shape = self._integrated(g, pieces)
        power_j = None if any(s is None for s in shape) else sum(s or 0.0 for s in shape)
        if power_j is None:
            g.counter_frozen = False
            return ""  # no power to check the counter against: it stands
        if delta_mj == 0 and dt >= FROZEN_MIN_DT_S and power_j > FROZEN_MIN_W * dt:
            g.counter_frozen = True
            self._warn(
                uid,
                "counter-frozen",
                "energy counter did not move in %.2f s while power says %.0f W: "
                "integrating power until it moves",
                dt,
                power_j / dt,
            )
            return (
                f"energy counter did not move in {dt:.2f} s while power averaged "
                f"{power_j / dt:.0f} W: integrated power"
            )
        if g.counter_frozen:
            # After a freeze the counter must show it is sane again: its delta
            # agrees with power (it may have caught up on what it held back, or
            # moved for only part of the interval).
            peak = max((w for _t, w in self._power_between(g, before_t, now)), default=0.0)
            slack = COUNTER_STEP_S * peak
            if (
                power_j / AFTER_FREEZE_RATIO - slack
                <= delta_j
                <= (power_j * AFTER_FREEZE_RATIO + slack)
            ):
                g.counter_frozen = False
                return ""
            self._warn(
                uid,
                "counter-after-freeze",
                "energy counter out of step with power after a freeze (%.1f J where power "
                "says %.1f J): integrating power until they agree",
                delta_j,
                power_j,
            )
            return (
                f"energy counter out of step with power after a freeze ({delta_j:.1f} J where "
                f"power says {power_j:.1f} J): integrated power"
            )
        return ""

    def _power_between(self, g: GpuState, t0: float, t1: float) -> list[tuple[float, float]]:
        with self._lock:
            return [(t, w) for t, w in g.power if t0 <= t <= t1]

    def _integrated(self, g: GpuState, pieces: Sequence[Piece]) -> list[float | None]:
        with self._lock:
            power = list(g.power)
        return [integrate(power, p.t0, p.t1) for p in pieces]

    def _shapes(
        self, g: GpuState, pieces: Sequence[Piece]
    ) -> list[list[tuple[float, float]] | None]:
        """How the power samples spread each piece's energy over time (see ``profile_of``)."""
        with self._lock:
            power = list(g.power)
        return [power_pieces(power, p.t0, p.t1, PROFILE_PIECE_S) for p in pieces]

    def _trim_power(self, g: GpuState, now: float) -> None:
        """Drop power samples before the last one at or before ``now``."""
        with self._lock:
            keep = 0
            for i, (t, _) in enumerate(g.power):
                if t <= now:
                    keep = i
            del g.power[:keep]

    def _readings(
        self,
        g: GpuState,
        pieces: Sequence[Piece],
        energies: Sequence[float | None],
        shapes: Sequence[Sequence[tuple[float, float]] | None],
        method: Method,
        note: str,
    ) -> list[Reading]:
        views = g.views
        if method is Method.INTEGRATED and not g.instant_ok:
            note = f"{note}; power from the 1 s average" if note else "power from the 1 s average"
        if g.gpu.mig:
            mig_note = "MIG: GPU energy allocated by instance memory share"
            note = f"{note}; {mig_note}" if note else mig_note
        # Weights of the whole counter interval, for a piece too short to see a sample.
        interval_sm: list[dict[int, float]] = [{} for _ in views]
        for p in pieces:
            for i, s in enumerate(p.seen):
                for pid, w in s.sm.items():
                    interval_sm[i][pid] = interval_sm[i].get(pid, 0.0) + w
        out: list[Reading] = []
        for p, energy, shape in zip(pieces, energies, shapes, strict=True):
            if energy is None:
                self._warn(g.gpu.device.uid, "gap", "no power sample in an interval: skipped")
                continue
            parts = (
                split_exactly(energy, [v.view.fraction for v in views])
                if len(views) > 1
                else [energy]
            )
            for v, seen, part, sm in zip(views, p.seen, parts, interval_sm, strict=True):
                weights, basis = weights_of(seen, sm)
                out.append(
                    Reading(
                        device=v.view.device,
                        t0=p.t0,
                        t1=p.t1,
                        energy_j=part,
                        method=method,
                        weights=weights,
                        weight_basis=basis,
                        holders=frozenset(seen.holders),
                        busy_fraction=None if g.gpu.mig else p.busy,
                        memory_used_bytes=seen.memory_peak,
                        note=note,
                        profile=profile_of(shape, part),
                    )
                )
        return out

    def close(self) -> None:
        """Stop the poller and release NVML (once)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._owns_init:
            nvml_query(self._nvml.nvmlShutdown, level=logging.INFO)

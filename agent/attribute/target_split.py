"""Attribution step 4 between processes: an interval's active energy, split by predicted energy.

The meter splits a device's active energy by what it can see per process,
SM time on a GPU, CPU-seconds on a CPU. Time is not energy: in the H100
recording a ResNet-50 fp32 process draws ~384 W where a bf16 encoder draws
~159 W, so a split by SM time charges the encoder about twice what it
caused. When several targets share an interval, their active energy is
split again, by the first of these that every one of them has (the basis
each share then names; the order is documented in README):

1. ``energy-model``: the predicted energy of the calls each target had in
   flight (energy_model.py);
2. ``sm-util*power``: the meter's share (its SM time) times the target's own
   power level, learned from the intervals where it was the only one active;
3. the meter's own split (``sm-util``, i.e. SM time; ``gpu-memory``;
   ``equal``), unchanged.

A split by CPU-seconds (``cpu-seconds``) is kept as the meter made it: each
process's own CPU time is measured, not sampled, and an estimated CPU
reading is itself computed from CPU time, so weighing it by calls would
only move energy away from the processes that used the cores.

The split is made over windows of ``SPLIT_WINDOW_S`` (1 s, the energy
counter's period), not per tick: under time-slicing NVML returns one
process sample per poll, so a 0.2 s tick usually sees one process although
both ran in that second; the window's proportions are applied to each of
its ticks (``spread_over_intervals``).

Only the split moves: the active energy of the interval is the same before
and after, to the microjoule, and idle, keep-warm and other are untouched.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import replace

from infermeter.attribute.split import split_exactly
from infermeter.records import Bucket, Share, TargetKey

ENERGY_MODEL = "energy-model"
SM_POWER = "sm-util*power"
SPLIT_WINDOW_S = 1.0
MIN_LEVEL_SAMPLES = 3  # intervals alone before a target's power level is used
LEVEL_WINDOW = 120  # the most recent intervals a level is the median of
MAX_LEVEL_TARGETS = 65_536

IntervalKey = tuple[str, float, float]  # (device uid, t0, t1)
# The meter's bases that time-share a device and so may be split again.
TIME_SHARE_BASES = frozenset({"sm-util", "gpu-memory", "equal"})


def by_interval(shares: Sequence[Share]) -> dict[IntervalKey, list[Share]]:
    """The shares of each device interval, in their order."""
    out: dict[IntervalKey, list[Share]] = {}
    for s in shares:
        out.setdefault((s.device_uid, s.t0, s.t1), []).append(s)
    return out


def active_targets(shares: Sequence[Share]) -> list[Share]:
    return [s for s in shares if s.bucket is Bucket.ACTIVE and s.target is not None]


def time_shared(shares: Sequence[Share]) -> bool:
    """Whether the meter split these active shares by a time-share basis (may be split again)."""
    return all(s.weight_basis in TIME_SHARE_BASES for s in shares)


class PowerLevels:
    """Each target's active power when it runs alone on a device: median of recent intervals."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, TargetKey], deque[float]] = {}

    def observe(self, device_uid: str, target: TargetKey, power_w: float) -> None:
        key = (device_uid, target)
        if key not in self._samples and len(self._samples) >= MAX_LEVEL_TARGETS:
            del self._samples[next(iter(self._samples))]
        self._samples.setdefault(key, deque(maxlen=LEVEL_WINDOW)).append(power_w)

    def level(self, device_uid: str, target: TargetKey) -> float | None:
        samples = self._samples.get((device_uid, target))
        if samples is None or len(samples) < MIN_LEVEL_SAMPLES:
            return None
        return statistics.median(samples)


def target_weights(
    totals: Mapping[TargetKey, float],
    predicted: Mapping[TargetKey, float | None],
    levels: Mapping[TargetKey, float | None],
) -> tuple[list[float], str] | None:
    """The weights of the targets (in ``totals``' order) and their basis; None: keep the meter's.

    ``totals`` is each target's active energy as the meter split it (its SM time).
    """
    keys = list(totals)
    predictions = [predicted.get(k) for k in keys]
    if all(p is not None and p > 0 for p in predictions):
        return [float(p or 0.0) for p in predictions], ENERGY_MODEL
    power = [levels.get(k) for k in keys]
    if all(p is not None and p > 0 for p in power):
        return [totals[k] * float(p or 0.0) for k, p in zip(keys, power, strict=True)], SM_POWER
    return None


def spread_over_intervals(
    intervals: Sequence[Sequence[Share]], weights: Sequence[float], basis: str
) -> list[Share]:
    """Each interval's active energy split in the same proportions (``weights``) of its targets.

    The targets are those active in any of the intervals, in order of first
    appearance (the order of ``weights``). A target the meter did not see in
    one interval of the window still ran in the window (its sample fell in
    another), so it gets its part of every interval; each interval's shares
    still sum to its energy, and each target's to its part of the window.
    """
    templates: dict[TargetKey, Share] = {}
    for group in intervals:
        for s in active_targets(group):
            templates.setdefault(s.target, s)  # type: ignore[arg-type]
    keys = list(templates)
    out: list[Share] = []
    for group in intervals:
        active = active_targets(group)
        out.extend(s for s in group if not (s.bucket is Bucket.ACTIVE and s.target is not None))
        energy = sum(s.energy_j for s in active)
        if not active or energy <= 0:
            out.extend(active)
            continue
        first = active[0]
        for key, part in zip(keys, split_exactly(energy, weights), strict=True):
            if part:
                out.append(
                    replace(
                        templates[key],
                        t0=first.t0,
                        t1=first.t1,
                        method=first.method,
                        energy_j=part,
                        weight_basis=basis,
                    )
                )
    return out

"""The pure parts of NVML metering: what polls saw, power integrals, weights.

Kept apart from the meter's state and threading so each piece can be read
(and checked) on its own; see nvml_meter for how they are used.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pynvml

FIELD_READERS: dict[int, Callable[[Any], float]] = {
    pynvml.NVML_VALUE_TYPE_DOUBLE: lambda v: float(v.dVal),
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: lambda v: float(v.uiVal),
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: lambda v: float(v.ulVal),
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: lambda v: float(v.ullVal),
    pynvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: lambda v: float(v.sllVal),
    pynvml.NVML_VALUE_TYPE_SIGNED_INT: lambda v: float(v.siVal),
}


def why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def integrate(samples: Sequence[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Joules in [t0, t1) from (t, W) samples: trapezoids, flat beyond the ends.

    None when no sample lies in (t0, t1]: the sample at t0 was the previous
    interval's last, and a value from outside the interval says nothing of it.
    """
    if t1 <= t0 or not any(t0 < t <= t1 for t, _ in samples):
        return None

    def at(t: float) -> float:
        prev = None
        for ts, w in samples:
            if ts >= t:
                if prev is None or ts == t:
                    return w
                return prev[1] + (w - prev[1]) * (t - prev[0]) / (ts - prev[0])
            prev = (ts, w)
        return samples[-1][1]

    points = [(t0, at(t0)), *((t, w) for t, w in samples if t0 < t < t1), (t1, at(t1))]
    return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in itertools.pairwise(points))


def power_pieces(
    samples: Sequence[tuple[float, float]], t0: float, t1: float, min_piece_s: float
) -> list[tuple[float, float]] | None:
    """[t0, t1) cut at power sample times into pieces of at least ``min_piece_s``.

    Each piece is (t_end, joules by the same trapezoids as ``integrate``), so
    the pieces add up to ``integrate(samples, t0, t1)``: cut only where a
    sample lies, no piece holds an interpolation of its own. None where
    ``integrate`` says nothing, or the power adds up to nothing to shape by.
    ``samples`` are in time order.
    """
    if t1 <= t0:
        return None
    lo = bisect.bisect_right(samples, (t0, math.inf))
    hi = bisect.bisect_left(samples, (t1, math.inf))
    inner = samples[lo:hi]  # t0 < t <= t1
    if not inner:
        return None
    before = samples[lo - 1] if lo > 0 else None
    after = samples[hi] if hi < len(samples) else None

    def at(t: float, a: tuple[float, float] | None, b: tuple[float, float] | None) -> float:
        if a is None:
            return b[1] if b is not None else 0.0
        if b is None or b[0] == a[0]:
            return a[1]
        return a[1] + (b[1] - a[1]) * (t - a[0]) / (b[0] - a[0])

    points = [(t0, at(t0, before, inner[0])), *(x for x in inner if x[0] < t1)]
    if points[-1][0] < t1:
        end = inner[-1] if inner[-1][0] >= t1 else None
        points.append((t1, end[1] if end is not None else at(t1, points[-1], after)))
    pieces: list[tuple[float, float]] = []
    start, joules = t0, 0.0
    for a, b in itertools.pairwise(points):
        joules += (b[0] - a[0]) * (a[1] + b[1]) / 2
        if (b[0] - start >= min_piece_s and t1 - b[0] >= min_piece_s) or b[0] >= t1:
            pieces.append((b[0], joules))
            start, joules = b[0], 0.0
    if sum(j for _t, j in pieces) <= 0:
        return None
    return pieces


def normalised(weights: Mapping[int, float]) -> dict[int, float]:
    total = sum(w for w in weights.values() if w > 0)
    return {pid: w / total for pid, w in weights.items() if w > 0} if total > 0 else {}


@dataclass(slots=True)
class Seen:
    """What one view's polls saw during one interval."""

    sm: dict[int, float] = field(default_factory=dict)  # pid -> sum of smUtil
    sm_ok: bool = False  # process utilisation answered (samples or NotFound)
    memory: dict[int, int] = field(default_factory=dict)  # pid -> usedGpuMemory
    holders: set[int] = field(default_factory=set)
    # Peak over the polls of the sum of the processes' usedGpuMemory; None
    # when no poll could list them (or NVML hid every process's memory).
    memory_peak: int | None = None


@dataclass(slots=True)
class Piece:
    """One tick's interval, waiting for its energy."""

    t0: float
    t1: float
    seen: list[Seen]
    busy: float | None


def weights_of(seen: Seen, interval_sm: Mapping[int, float]) -> tuple[dict[int, float], str]:
    """Per-pid weights of one interval and their basis: sm-util, gpu-memory, equal or none.

    ``interval_sm`` is the smUtil of the whole counter interval, for an interval
    too short to have caught a sample of its own.
    """
    if seen.sm_ok:
        return normalised(seen.sm) or normalised(interval_sm), "sm-util"
    memory = normalised({pid: float(m) for pid, m in seen.memory.items()})
    if memory:
        return memory, "gpu-memory"
    if seen.holders:
        return {pid: 1.0 / len(seen.holders) for pid in seen.holders}, "equal"
    return {}, "none"

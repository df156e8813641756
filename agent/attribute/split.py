"""Splitting each reading's energy into shares that add up to it exactly.

The buckets (DESIGN.md): ``idle`` is the device's bare baseline; ``keepwarm``
the extra draw of a device that processes merely hold, shared by the holders;
``active`` the rest, split by the interval's per-pid weights; ``other`` what
no known target explains. Every split hands the rounding remainder to its
last part, so the shares of a reading sum to its energy to the microjoule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infermeter.records import Bucket, Reading, Share, Target


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a device draws with nothing on it, and with a context merely held."""

    idle_power_w: float = 0.0
    keepwarm_power_w: float = 0.0


def split_exactly(total: float, weights: Sequence[float]) -> list[float]:
    """Split ``total`` in proportion to ``weights``; the parts sum to ``total``.

    Weights must be >= 0 with a positive sum. The part of the largest weight
    takes the floating-point remainder (so a tiny part is never pushed below
    zero), and ``sum(parts) == total`` up to one rounding of a sum.
    """
    wsum = float(sum(weights))
    if wsum <= 0:
        raise ValueError("weights must have a positive sum")
    parts = [total * (w / wsum) for w in weights]
    biggest = max(range(len(parts)), key=lambda i: weights[i])
    parts[biggest] = 0.0
    parts[biggest] = total - sum(parts)
    return parts


def attribute_reading(
    reading: Reading, targets: Mapping[int, Target], baseline: Baseline
) -> list[Share]:
    """Shares of one reading among idle, keep-warm, active targets and other."""
    energy = reading.energy_j
    dt = max(reading.t1 - reading.t0, 0.0)
    shares: list[Share] = []

    def add(bucket: Bucket, energy_j: float, pid: int | None = None) -> None:
        if energy_j == 0.0:
            return
        target = targets.get(pid) if pid is not None else None
        if bucket in (Bucket.ACTIVE, Bucket.KEEPWARM) and target is None:
            bucket = Bucket.OTHER  # never silently onto a target we do not know
        shares.append(
            Share(
                t0=reading.t0,
                t1=reading.t1,
                device_uid=reading.device.uid,
                bucket=bucket,
                method=reading.method,
                energy_j=energy_j,
                target=target.key if target else None,
                model=target.model if target else None,
                tenant=target.labels.get("tenant") if target else None,
                weight_basis=reading.weight_basis if bucket is not Bucket.IDLE else "baseline",
            )
        )

    if energy <= 0.0:
        # A counter that did not move (or a reset we refuse to guess across):
        # nothing to split, and a negative share would break every total.
        return []

    idle = min(energy, max(baseline.idle_power_w, 0.0) * dt)
    rest = energy - idle
    holders = sorted(reading.holders)
    keepwarm = min(rest, max(baseline.keepwarm_power_w, 0.0) * dt) if holders else 0.0
    active = rest - keepwarm

    parts: list[tuple[Bucket, float, int | None]] = [(Bucket.IDLE, idle, None)]
    if keepwarm > 0.0:
        for pid, part in zip(holders, split_exactly(keepwarm, [1.0] * len(holders)), strict=True):
            parts.append((Bucket.KEEPWARM, part, pid))
    weighted = sorted((pid, w) for pid, w in reading.weights.items() if w > 0)
    if active > 0.0 and weighted:
        pids = [pid for pid, _ in weighted]
        for pid, part in zip(pids, split_exactly(active, [w for _, w in weighted]), strict=True):
            parts.append((Bucket.ACTIVE, part, pid))
    elif active > 0.0:
        parts.append((Bucket.OTHER, active, None))

    # The parts were computed as differences of the total; fold the last
    # rounding error of their sum into the largest part.
    drift = energy - sum(p[1] for p in parts)
    if drift:
        i = max(range(len(parts)), key=lambda k: parts[k][1])
        b, e, who = parts[i]
        parts[i] = (b, e + drift, who)
    for bucket, energy_j, who in parts:
        add(bucket, energy_j, who)
    return shares


def merge_shares(shares: Sequence[Share], t0: float, t1: float) -> list[Share]:
    """Sum shares of one flush window by bucket, keyed as the store keys them.

    Each merged share says where in the window its energy was drawn
    (``drawn_t0``/``drawn_t1``: the first and last share that gave any).
    """
    totals: dict[tuple[object, ...], float] = {}
    first: dict[tuple[object, ...], Share] = {}
    drawn: dict[tuple[object, ...], tuple[float, float]] = {}
    for s in shares:
        key = (s.device_uid, s.target, s.model, s.tenant, s.bucket, s.method, s.weight_basis)
        totals[key] = totals.get(key, 0.0) + s.energy_j
        first.setdefault(key, s)
        if s.energy_j != 0.0:
            lo = s.t0 if s.drawn_t0 is None else s.drawn_t0
            hi = s.t1 if s.drawn_t1 is None else s.drawn_t1
            seen = drawn.get(key)
            drawn[key] = (lo, hi) if seen is None else (min(seen[0], lo), max(seen[1], hi))
    return [
        Share(
            t0=t0,
            t1=t1,
            device_uid=s.device_uid,
            bucket=s.bucket,
            method=s.method,
            energy_j=totals[key],
            target=s.target,
            model=s.model,
            tenant=s.tenant,
            weight_basis=s.weight_basis,
            drawn_t0=drawn[key][0] if key in drawn else None,
            drawn_t1=drawn[key][1] if key in drawn else None,
        )
        for key, s in first.items()
    ]

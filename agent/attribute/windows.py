"""One row per device and flush window: energy, how busy, memory held, its profile.

Shares say who used the energy; this says what the device itself did in the
same window, which is what utilisation-based advice (right-size, power cap)
and the live view need. Readings are summarised with the same window bounds
as the shares they produced.

The window's ``profile`` is its readings' profiles end to end (a reading
without one is one piece: spread by time), so that a report whose range
cuts the window can tell how much of its energy fell on each side
(report/edges.py). Runs of pieces that drew the same power within
``FLAT_W`` / ``FLAT_RATIO`` are merged: a steady phase stores a few pieces,
and the pieces where the power climbs or falls keep their ~0.1 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from infermeter.records import DeviceWindowRecord, Method, Profile, Reading

_WEAKNESS = {Method.MEASURED: 0, Method.INTEGRATED: 1, Method.ESTIMATED: 2}
# Two pieces draw "the same power" within the larger of these: watts, and a
# fraction of the run's mean power.
FLAT_W = 1.0
FLAT_RATIO = 0.01


def summarise(readings: Iterable[Reading]) -> list[DeviceWindowRecord]:
    by_device: dict[str, list[Reading]] = {}
    for r in readings:
        by_device.setdefault(r.device.uid, []).append(r)
    out = []
    for uid, group in by_device.items():
        known = [r for r in group if r.busy_fraction is not None and r.duration_s > 0]
        weight = sum(r.duration_s for r in known)
        busy = (
            sum((r.busy_fraction or 0.0) * r.duration_s for r in known) / weight
            if weight > 0
            else None
        )
        memory = [r.memory_used_bytes for r in group if r.memory_used_bytes is not None]
        out.append(
            DeviceWindowRecord(
                device_uid=uid,
                t0=min(r.t0 for r in group),
                t1=max(r.t1 for r in group),
                energy_j=sum(r.energy_j for r in group),
                method=max((r.method for r in group), key=lambda m: _WEAKNESS[m]),
                busy_fraction=busy,
                memory_used_bytes=max(memory) if memory else None,
                profile=window_profile(group),
            )
        )
    return out


def window_profile(readings: Sequence[Reading]) -> Profile | None:
    """One device's readings' profiles end to end, flat runs merged.

    None when no reading has a profile (nothing finer than time to go by),
    or when readings overlap (no single order of pieces to tell). A gap
    between readings is a piece of no energy.
    """
    if not any(r.profile for r in readings):
        return None
    ordered = sorted(readings, key=lambda r: r.t0)
    pieces: list[tuple[float, float]] = []
    at = ordered[0].t0
    for r in ordered:
        if r.t0 < at:
            return None
        if r.t0 > at:
            pieces.append((r.t0, 0.0))
        pieces.extend(r.profile or ((r.t1, r.energy_j),))
        at = r.t1
    return merge_flat(pieces, ordered[0].t0)


def merge_flat(pieces: Sequence[tuple[float, float]], t0: float) -> Profile:
    """Consecutive pieces of the same power (within FLAT_W / FLAT_RATIO) as one.

    ``pieces`` are (t_end, joules), the first starting at ``t0``. Energies
    are summed, never rescaled, so the merged profile adds up to what the
    pieces did.
    """
    out: list[tuple[float, float]] = []
    run: list[float] | None = None  # [start, end, joules] of the run being merged
    start = t0
    for t_end, joules in pieces:
        if run is not None and (t_end <= start or _same_power(run, t_end - start, joules)):
            run[1], run[2] = max(run[1], t_end), run[2] + joules
        else:
            if run is not None:
                out.append((run[1], run[2]))
            run = [start, t_end, joules]
        start = max(start, t_end)
    if run is not None:
        out.append((run[1], run[2]))
    return tuple(out)


def _same_power(run: Sequence[float], dt: float, joules: float) -> bool:
    length = run[1] - run[0]
    if length <= 0:
        return True
    run_w = run[2] / length
    return abs(joules / dt - run_w) <= max(FLAT_W, FLAT_RATIO * run_w)

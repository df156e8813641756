"""The share rows a report's range cuts: how much of each fell inside it.

Shares are stored per flush window (10 s by default) and the rest of the
report takes a row whole by its ``t0`` (report/query.py): a row starting in
[since, until) counts whole, one starting before ``since`` not at all. A
row whose window straddles ``since`` or ``until`` is therefore corrected
here: it adds ``factor`` times itself, the part of it inside the range less
what the plan already counted (1 or 0). A 7 s range inside one 10 s window
then reads the 7 s, not nothing, and ``--from``/``--to`` are exact to the
second. Rows wholly inside count whole, as before; the rollups are not
touched.

The part inside a window is not its share of the time: phases start and
stop steeply (118 W to 400 W within 0.1 s), so a second at the edge of a
window can hold a tenth of its energy or a third. The ``idle`` bucket is the
bare baseline, constant in time, and is taken by time. Every other bucket
(keep-warm, active, other: the draw above idle) is taken by the device
window's profile (Reading.profile, store.window_profile): the energy above
the window's idle power inside the overlap, over that of the whole window,
piece by piece (a piece cut by the bound, by time within it). A window
without a profile (a CPU meter, a row written before profiles existed) is
taken by time. Money and carbon follow their row's energy.

Only raw rows can be cut: a bound whose rows were pruned by retention
stays as the rollups count it, by ``t0``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from infermeter.records import Profile
from infermeter.store import schema, window_profile
from infermeter.store.request_sql import hour_floor

# Shares and windows longer than this are not looked for (the agent writes
# one window per flush, agent.flush_s, 10 s by default): it bounds the index
# range each bound reads to an hour of rows.
HORIZON_S = 3600.0


@dataclass(frozen=True, slots=True)
class Window:
    """One device window that a bound of the range cuts, and how much of it to add."""

    host_id: int
    device_id: int
    t0: float
    t1: float
    busy_fraction: float | None
    profile: Profile | None
    hour: float  # as EdgeShare.hour
    factor: float  # by time: the part inside the range less the part the plan counted


@dataclass(frozen=True, slots=True)
class EdgeShare:
    """One cut share row, and how much of it to add to what the plan read."""

    host_id: int
    device_id: int
    t0: float
    t1: float
    hour: float  # the hour it is counted in: of its t0, or of ``since`` for one before
    target_id: int | None
    model_id: int | None
    tenant: str | None
    bucket: str
    method: str
    weight_basis: str
    energy_j: float
    energy_cost: float | None
    capacity_cost: float | None
    carbon_g: float | None
    factor: float  # the part inside the range less the part the plan counted

    def column(self, name: str) -> Any:
        """The value of a usage_shares column the report groups by."""
        return getattr(self, name)


@dataclass(frozen=True, slots=True)
class Cut:
    """What the bounds of a range cut: share rows and device windows, with factors."""

    shares: tuple[EdgeShare, ...] = ()
    windows: tuple[Window, ...] = ()


def overlap(t0: float, t1: float, since: float, until: float) -> tuple[float, float]:
    return max(t0, since), min(t1, until)


def time_fraction(t0: float, t1: float, lo: float, hi: float) -> float:
    """The share of [t0, t1) that [lo, hi) covers, by time."""
    return max(hi - lo, 0.0) / (t1 - t0) if t1 > t0 else 0.0


def above_idle(profile: Profile, t0: float, idle_w: float, lo: float, hi: float) -> float:
    """Joules above ``idle_w`` that ``profile`` (starting at ``t0``) drew in [lo, hi).

    Each piece counts what it drew above idle (never below nothing); a
    piece the bounds cut counts the part of that they cover, by time.
    """
    total = 0.0
    start = t0
    for end, joules in profile:
        if end > start:
            above = max(joules - idle_w * (end - start), 0.0)
            total += above * time_fraction(start, end, max(lo, start), min(hi, end))
        start = max(start, end)
    return total


def part_inside(
    bucket: str,
    t0: float,
    t1: float,
    since: float,
    until: float,
    window: Window | None,
    idle_w: float,
) -> float:
    """The part (0..1) of a share row over [t0, t1) that fell inside [since, until)."""
    lo, hi = overlap(t0, t1, since, until)
    by_time = time_fraction(t0, t1, lo, hi)
    if bucket == "idle" or window is None or window.profile is None:
        return by_time
    whole = above_idle(window.profile, window.t0, idle_w, t0, t1)
    if whole <= 0:
        return by_time
    return min(above_idle(window.profile, window.t0, idle_w, lo, hi) / whole, 1.0)


def cut(conn: Connection, host_ids: Sequence[int], since: float, until: float) -> Cut:
    """Every share row and window of ``host_ids`` cut by ``since`` or ``until``, with factors."""
    if not host_ids:
        return Cut()
    bounds = sorted({since, until})
    windows = _windows(conn, host_ids, bounds)
    return Cut(
        tuple(_cut_shares(conn, host_ids, since, until, bounds, windows)),
        tuple(_counted(w, since, until) for ws in windows.values() for w in ws),
    )


def _counted(w: Window, since: float, until: float) -> Window:
    inside = time_fraction(w.t0, w.t1, *overlap(w.t0, w.t1, since, until))
    counted = 1.0 if since <= w.t0 < until else 0.0
    hour = hour_floor(max(w.t0, since))
    return Window(
        w.host_id, w.device_id, w.t0, w.t1, w.busy_fraction, w.profile, hour, inside - counted
    )


def _cut_shares(
    conn: Connection,
    host_ids: Sequence[int],
    since: float,
    until: float,
    bounds: Sequence[float],
    windows: dict[int, list[Window]],
) -> list[EdgeShare]:
    s = schema.usage_shares.c
    rows: dict[int, Any] = {}
    for bound in bounds:
        q = select(
            s.id,
            s.host_id,
            s.device_id,
            s.t0,
            s.t1,
            s.target_id,
            s.model_id,
            s.tenant,
            s.bucket,
            s.method,
            s.weight_basis,
            s.energy_j,
            s.energy_cost,
            s.capacity_cost,
            s.carbon_g,
        ).where(*_cut_by(s, host_ids, bound))
        rows.update((int(r.id), r) for r in conn.execute(q))
    if not rows:
        return []
    idle_w = _idle_power(rows.values())
    out: list[EdgeShare] = []
    for r in rows.values():
        t0, t1 = float(r.t0), float(r.t1)
        device_id = int(r.device_id)
        window = _window_of(windows.get(device_id, ()), t0, t1)
        inside = part_inside(
            str(r.bucket), t0, t1, since, until, window, idle_w.get((device_id, t0, t1), 0.0)
        )
        counted = 1.0 if since <= t0 < until else 0.0
        if inside == counted:
            continue
        out.append(
            EdgeShare(
                host_id=int(r.host_id),
                device_id=device_id,
                t0=t0,
                t1=t1,
                hour=hour_floor(max(t0, since)),
                target_id=None if r.target_id is None else int(r.target_id),
                model_id=None if r.model_id is None else int(r.model_id),
                tenant=None if r.tenant is None else str(r.tenant),
                bucket=str(r.bucket),
                method=str(r.method),
                weight_basis=str(r.weight_basis),
                energy_j=float(r.energy_j),
                energy_cost=None if r.energy_cost is None else float(r.energy_cost),
                capacity_cost=None if r.capacity_cost is None else float(r.capacity_cost),
                carbon_g=None if r.carbon_g is None else float(r.carbon_g),
                factor=inside - counted,
            )
        )
    return out


def _cut_by(table_c: Any, host_ids: Sequence[int], bound: float) -> list[Any]:
    """Rows of ``host_ids`` that start before ``bound`` and end after it (t0 index)."""
    return [
        table_c.host_id.in_(list(host_ids)),
        table_c.t0 >= bound - HORIZON_S,
        table_c.t0 < bound,
        table_c.t1 > bound,
    ]


def _windows(
    conn: Connection, host_ids: Sequence[int], bounds: Iterable[float]
) -> dict[int, list[Window]]:
    """The device windows the bounds cut, per device."""
    w = schema.device_windows.c
    out: dict[int, list[Window]] = {}
    seen: set[tuple[int, float]] = set()
    for bound in bounds:
        q = select(w.host_id, w.device_id, w.t0, w.t1, w.busy_fraction, w.profile).where(
            *_cut_by(w, host_ids, bound)
        )
        for r in conn.execute(q):
            key = (int(r.device_id), float(r.t0))
            if key in seen:
                continue
            seen.add(key)
            t0 = float(r.t0)
            busy = None if r.busy_fraction is None else float(r.busy_fraction)
            profile = window_profile.decode(r.profile, t0)
            window = Window(int(r.host_id), key[0], t0, float(r.t1), busy, profile, 0.0, 0.0)
            out.setdefault(key[0], []).append(window)
    return out


def _window_of(windows: Sequence[Window], t0: float, t1: float) -> Window | None:
    """The window a share row was written with: the same device, overlapping it most."""
    best: Window | None = None
    best_s = 0.0
    for w in windows:
        common = min(w.t1, t1) - max(w.t0, t0)
        if common > best_s:
            best, best_s = w, common
    return best


def _idle_power(rows: Iterable[Any]) -> dict[tuple[int, float, float], float]:
    """Watts of the ``idle`` bucket per cut row's device and window: the baseline it held."""
    idle_j: dict[tuple[int, float, float], float] = {}
    for r in rows:
        if str(r.bucket) == "idle":
            key = (int(r.device_id), float(r.t0), float(r.t1))
            idle_j[key] = idle_j.get(key, 0.0) + float(r.energy_j)
    return {k: j / (k[2] - k[1]) for k, j in idle_j.items() if k[2] > k[1]}

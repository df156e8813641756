"""The share rows a report's range cuts: how much of each fell inside it.

Shares are stored per flush window (10 s by default) and the report takes a
row whole by its ``t0`` (report/query.py): a row starting in [since, until)
counts whole, one starting before ``since`` not at all. A row whose window
straddles ``since`` or ``until`` is corrected here: it adds ``factor``
times itself, the part of it inside the range less what the plan counted
already (1 or 0). A 7 s range inside one 10 s window then reads those 7 s,
not nothing, and ``--from``/``--to`` are exact to the second. Rows wholly
inside count whole, as before; the rollups are not touched.

The part inside is not the share of the time: phases start and stop
steeply (118 W to 400 W within 0.1 s), so the second at the edge of a
window can hold a tenth of its energy or a third. Each row is placed where
it was drawn (``drawn_t0``/``drawn_t1``, records.Share; all of its window
when NULL), and inside that as attribution split it (``Shape``):

- ``idle``, the bare baseline, is constant in time: taken by time;
- ``keepwarm`` is a fixed draw capped at what the device drew above idle:
  it follows that capped level through the window's profile
  (store.window_profile);
- ``active`` and ``other``, the rest, follow what the profile drew above
  idle and keep-warm, shared at each moment by the rows drawn then;

a piece of the profile that a bound cuts is taken by time within it. A
window without a profile (a CPU meter's, one written before profiles
existed), or a row with nothing of the profile under it, is taken by time.

Money and carbon follow their row's energy. Only raw rows can be cut: a
bound whose rows retention has pruned stays as the rollups count it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from infermeter.records import Profile
from infermeter.store import schema, window_profile
from infermeter.store.request_sql import hour_floor

# Rows longer than this are not looked for (the agent writes one window per
# flush, agent.flush_s, 10 s by default): it bounds the index range that each
# bound reads to an hour of rows.
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
    hour: float = 0.0  # as EdgeShare.hour
    factor: float = 0.0  # by time: the part inside the range less the part the plan counted


@dataclass(frozen=True, slots=True)
class EdgeShare:
    """One cut share row, and how much of it to add to what the plan read."""

    host_id: int
    device_id: int
    t0: float
    t1: float
    hour: float  # the hour it counts in: of its t0, or of ``since`` for a row before it
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


@dataclass(frozen=True, slots=True)
class CutRow:
    """A cut share row as read: its window, bucket, energy and where it was drawn."""

    raw: Any
    t0: float
    t1: float
    bucket: str
    energy_j: float
    lo: float  # drawn from
    hi: float  # drawn until


def covered(t0: float, t1: float, lo: float, hi: float) -> float:
    """The share (0..1) of [t0, t1) that [lo, hi) covers."""
    return max(min(hi, t1) - max(lo, t0), 0.0) / (t1 - t0) if t1 > t0 else 0.0


class Shape:
    """How the rows of one cut window drew its energy, piece by piece, as attribution splits it.

    Attribution (attribute.split) takes idle first, then a fixed keep-warm
    draw capped at what is left, and calls the rest active (or other). The
    window's profile gives each piece's excess over idle. While keep-warm
    rows were drawn, their level ``keepwarm_w`` is the one constant draw,
    so capped, that adds up to the keep-warm they hold (found by bisection);
    a keep-warm row follows min(excess, level). What lies above is shared,
    piece by piece, by the active and other rows drawn at that moment, each
    with a weight scaled until every row gets its own energy (iterative
    proportional fitting): a process that stopped early in the window takes
    nothing after it stopped, and one that ran alone at the end takes all
    of the end.
    """

    def __init__(self, profile: Profile, t0: float, idle_w: float, rows: Sequence[CutRow]):
        pieces = []
        start = t0
        for end, joules in profile:
            if end > start:
                pieces.append((start, end, max(joules - idle_w * (end - start), 0.0)))
            start = max(start, end)
        self.pieces = pieces
        keepwarm = [r for r in rows if r.bucket == "keepwarm" and r.energy_j > 0]
        self.held = (
            (min(r.lo for r in keepwarm), max(r.hi for r in keepwarm)) if keepwarm else (t0, t0)
        )
        self.keepwarm_w = self._level(sum(r.energy_j for r in keepwarm))
        self.rest = [r for r in rows if r.bucket not in ("idle", "keepwarm") and r.energy_j > 0]
        self.above = [x - self._flat(a, b, x, self.keepwarm_w) for a, b, x in pieces]
        self.cover = [[covered(a, b, r.lo, r.hi) for a, b, _x in pieces] for r in self.rest]
        self.drawn = self._shares(self._fit())  # per active/other row, its joules per piece

    def _flat(self, a: float, b: float, excess: float, level: float) -> float:
        """The keep-warm part of a piece's excess."""
        if level <= 0 or b <= self.held[0] or a >= self.held[1]:
            return 0.0
        return min(excess, level * (b - a)) * covered(a, b, *self.held)

    def _level(self, target: float) -> float:
        if target <= 0:
            return 0.0

        def held(level: float) -> float:
            return sum(self._flat(a, b, x, level) for a, b, x in self.pieces)

        if held(math.inf) <= target:
            return math.inf  # keep-warm took every piece's excess
        lo, hi = 0.0, max((x / (b - a) for a, b, x in self.pieces), default=0.0)
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if held(mid) < target else (lo, mid)
        return (lo + hi) / 2

    def _fit(self, rounds: int = 30) -> list[float]:
        """Weights of the active/other rows such that each one's pieces add up to its energy."""
        scale = [1.0] * len(self.rest)
        for _ in range(rounds):
            got = self._shares(scale)
            new = [
                s * r.energy_j / g if g > 0 else s
                for s, r, g in zip(scale, self.rest, map(sum, got), strict=True)
            ]
            if all(abs(n - s) <= 1e-6 * s for n, s in zip(new, scale, strict=True)):
                return new
            scale = new
        return scale

    def _shares(self, scale: Sequence[float]) -> list[list[float]]:
        """Each row's joules in each piece: the piece's excess shared by weight x coverage."""
        cover = self.cover
        out = [[0.0] * len(self.above) for _ in cover]
        for i, x in enumerate(self.above):
            if x <= 0:
                continue
            total = sum(s * c[i] for s, c in zip(scale, cover, strict=True))
            if total <= 0:
                continue
            for k, (s, c) in enumerate(zip(scale, cover, strict=True)):
                out[k][i] = x * s * c[i] / total
        return out

    def part(self, row: CutRow, lo: float, hi: float) -> float | None:
        """The part (0..1) of a keep-warm, active or other row drawn in [lo, hi); None: no shape."""
        if row.bucket == "keepwarm":
            per = [
                (a, b, self._flat(a, b, x, self.keepwarm_w) * covered(a, b, row.lo, row.hi))
                for a, b, x in self.pieces
            ]
        elif row in self.rest:
            mine = self.drawn[self.rest.index(row)]
            per = [(a, b, j) for (a, b, _x), j in zip(self.pieces, mine, strict=True)]
        else:
            return None
        whole = sum(j for _a, _b, j in per)
        if whole <= 0:
            return None
        inside = sum(j * covered(a, b, lo, hi) for a, b, j in per)
        return min(inside / whole, 1.0)


def part_inside(row: CutRow, since: float, until: float, shape: Shape | None) -> float:
    """The part (0..1) of a share row's energy that was drawn inside [since, until)."""
    by_time = covered(row.lo, row.hi, since, until)
    if row.bucket == "idle" or shape is None:
        return by_time
    part = shape.part(row, max(row.lo, since), min(row.hi, until))
    return by_time if part is None else part


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


def _factor(t0: float, inside: float, since: float, until: float) -> float:
    """What to add of a row: the part inside less what the plan counted (by its t0)."""
    return inside - (1.0 if since <= t0 < until else 0.0)


def _counted(w: Window, since: float, until: float) -> Window:
    factor = _factor(w.t0, covered(w.t0, w.t1, since, until), since, until)
    hour = hour_floor(max(w.t0, since))
    return Window(w.host_id, w.device_id, w.t0, w.t1, w.busy_fraction, w.profile, hour, factor)


def _cut_by(table_c: Any, host_ids: Sequence[int], bound: float) -> list[Any]:
    """Rows of ``host_ids`` that start before ``bound`` and end after it (t0 index)."""
    return [
        table_c.host_id.in_(list(host_ids)),
        table_c.t0 >= bound - HORIZON_S,
        table_c.t0 < bound,
        table_c.t1 > bound,
    ]


def _cut_shares(
    conn: Connection,
    host_ids: Sequence[int],
    since: float,
    until: float,
    bounds: Sequence[float],
    windows: dict[int, list[Window]],
) -> list[EdgeShare]:
    s = schema.usage_shares.c
    found: dict[int, Any] = {}
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
            s.drawn_t0,
            s.drawn_t1,
        ).where(*_cut_by(s, host_ids, bound))
        found.update((int(r.id), r) for r in conn.execute(q))
    by_window: dict[tuple[int, float, float], list[CutRow]] = {}
    for r in found.values():
        t0, t1 = float(r.t0), float(r.t1)
        lo = t0 if r.drawn_t0 is None else max(float(r.drawn_t0), t0)
        hi = t1 if r.drawn_t1 is None else min(float(r.drawn_t1), t1)
        row = CutRow(r, t0, t1, str(r.bucket), float(r.energy_j), lo, hi if hi > lo else t1)
        by_window.setdefault((int(r.device_id), t0, t1), []).append(row)
    out: list[EdgeShare] = []
    for (device_id, t0, t1), rows in by_window.items():
        window = _window_of(windows.get(device_id, ()), t0, t1)
        shape = None
        if window is not None and window.profile is not None and t1 > t0:
            idle_w = sum(r.energy_j for r in rows if r.bucket == "idle") / (t1 - t0)
            shape = Shape(window.profile, window.t0, idle_w, rows)
        for row in rows:
            factor = _factor(t0, part_inside(row, since, until, shape), since, until)
            if factor != 0.0:
                out.append(_edge_share(row, since, factor))
    return out


def _edge_share(row: CutRow, since: float, factor: float) -> EdgeShare:
    r = row.raw
    return EdgeShare(
        host_id=int(r.host_id),
        device_id=int(r.device_id),
        t0=row.t0,
        t1=row.t1,
        hour=hour_floor(max(row.t0, since)),
        target_id=None if r.target_id is None else int(r.target_id),
        model_id=None if r.model_id is None else int(r.model_id),
        tenant=None if r.tenant is None else str(r.tenant),
        bucket=row.bucket,
        method=str(r.method),
        weight_basis=str(r.weight_basis),
        energy_j=row.energy_j,
        energy_cost=_opt(r.energy_cost),
        capacity_cost=_opt(r.capacity_cost),
        carbon_g=_opt(r.carbon_g),
        factor=factor,
    )


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


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
            profile = window_profile.decode(r.profile, t0)
            window = Window(int(r.host_id), key[0], t0, float(r.t1), _opt(r.busy_fraction), profile)
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

"""The report: energy, cost and carbon per group over a time range, as plain data.

``build_report`` returns a frozen ``Report``; the CLI renders it as tables,
and report/render.py as JSON (schema in docs/report.json.md) or CSV.
Nothing here prints.

Money comes from the stored shares (usage_shares and its hourly rollup),
so a report's totals are the sum of the stored costs, whatever the grouping.
Idle and keep-warm energy are rows of their own ("(idle)", "(keep-warm)") by
default; with ``share_idle`` each device-hour's idle and keep-warm figures
are spread over the groups that drew active energy from that device in that
hour, in proportion to that energy. A device-hour nobody used keeps its own
rows. Grouped by device or host, idle and keep-warm belong to their device
or host anyway and are only shown in their own columns. The totals are the
same either way. A figure whose price is unknown is ``Amount.value = None``
("unpriced"), never 0; a partly priced one says how much energy its value
leaves out.

Energy, money and carbon are exact to the range's bounds: a flush window
that a bound cuts adds the part of it inside, taken by the window's power
profile (report/edges.py). Request figures (count, items, p50/p95 cost per
request) come from request_hourly and the raw requests at the edges
(report/query.py), each call counted in the range where it starts, with
the energy stored with it. The p50/p95 are read from a histogram, within
``cost_histogram.RESOLUTION``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from infermeter.report import query as rq
from infermeter.store import histogram as cost_histogram
from infermeter.store import schema
from infermeter.store.request_rollup import RequestTotals

GROUPINGS = ("model", "tenant", "target", "device", "host")
J_PER_KWH = 3_600_000.0
SPECIAL_KINDS = ("unlabelled", "other", "keepwarm", "idle")  # in the order they are listed
_SPECIAL_LABEL = {"other": "(other)", "keepwarm": "(keep-warm)", "idle": "(idle)"}
_POOL = ("idle", "keepwarm")


@dataclass(frozen=True, slots=True)
class Amount:
    """Money or carbon: ``value`` None when none of it is priced ("unpriced").

    ``unpriced_kwh`` is the energy whose price was unknown and is left out
    of ``value``; 0 when everything was priced.
    """

    value: float | None
    unpriced_kwh: float = 0.0


@dataclass(frozen=True, slots=True)
class Costs:
    energy_kwh: float
    cost: Amount  # energy_cost + capacity_cost
    energy_cost: Amount
    capacity_cost: Amount
    carbon_g: Amount
    idle_cost: Amount  # the part of ``cost`` that is idle draw
    keepwarm_cost: Amount  # the part of ``cost`` that is keep-warm draw


@dataclass(frozen=True, slots=True)
class RequestStats:
    requests: int
    calls: int
    items: int
    tokens_in: int
    tokens_out: int
    unpriced: int  # requests with an unpriced call, outside the percentiles
    cost_p50: float | None
    cost_p95: float | None


@dataclass(frozen=True, slots=True)
class Group:
    key: str | None  # stable id; None for the special rows
    label: str
    kind: str  # group | unlabelled | other | keepwarm | idle
    costs: Costs
    requests: RequestStats | None  # None where requests do not apply
    j_per_item: float | None
    cost_per_1k_requests: Amount | None
    utilisation: float | None  # busy fraction of its devices, weighted by its energy
    methods: Mapping[str, float]  # share of energy: measured / integrated / estimated
    bases: Mapping[str, float]  # share of energy per weight basis
    j_per_token: float | None = None  # energy per token, input and output together
    cost_per_1m_tokens_in: Amount | None = None  # the group's whole cost per 1M input tokens
    cost_per_1m_tokens_out: Amount | None = None  # ... per 1M output tokens


@dataclass(frozen=True, slots=True)
class RecommendationLine:
    kind: str
    subject_kind: str
    subject: str
    savings_usd_month: float
    savings_kwh_month: float
    savings_kgco2e_month: float
    confidence: str
    how_to_apply: str


@dataclass(frozen=True, slots=True)
class Report:
    t_from: float
    t_to: float
    by: str
    share_idle: bool
    generated_at: float
    currency: str | None  # None: no price card stored; "mixed" when several
    price_cards: tuple[str, ...]
    totals: Costs
    total_requests: RequestStats
    utilisation: float | None
    methods: Mapping[str, float]
    bases: Mapping[str, float]
    groups: tuple[Group, ...]
    recommendations: tuple[RecommendationLine, ...]
    rollup_hours: int  # host-hours read from rollups
    rollup_days: int  # host-days whose requests were read from request_daily
    raw_ranges: tuple[tuple[float, float], ...]  # ranges read from raw rows
    stored: tuple[float, float] | None  # what the store holds, whatever the range
    # The active energy of the groups that served requests, and what the
    # requests carry of it; the rest ran with no request in flight (overhead).
    served_active_j: float = 0.0
    request_energy_j: float = 0.0

    @property
    def overhead_j(self) -> float:
        return max(0.0, self.served_active_j - self.request_energy_j)

    @property
    def empty(self) -> bool:
        return not self.groups


# ----- accumulating ---------------------------------------------------------


@dataclass(slots=True)
class _Sum:
    value: float | None = None
    unpriced_j: float = 0.0

    def add(self, value: float | None, unpriced_j: float, factor: float = 1.0) -> None:
        if value is not None:
            self.value = (self.value or 0.0) + value * factor
        self.unpriced_j += unpriced_j * factor

    def amount(self) -> Amount:
        """Unpriced (None) only when there was energy to price and no price for any of it."""
        value = self.value if self.value is not None or self.unpriced_j > 0 else 0.0
        return Amount(value, self.unpriced_j / J_PER_KWH)


@dataclass(slots=True)
class _Acc:
    energy_j: float = 0.0
    energy_cost: _Sum = field(default_factory=_Sum)
    capacity_cost: _Sum = field(default_factory=_Sum)
    carbon_g: _Sum = field(default_factory=_Sum)
    cost: _Sum = field(default_factory=_Sum)
    idle: _Sum = field(default_factory=_Sum)
    keepwarm: _Sum = field(default_factory=_Sum)
    methods: dict[str, float] = field(default_factory=dict)
    bases: dict[str, float] = field(default_factory=dict)
    busy_j: float = 0.0  # energy x busy fraction, where the device's busy is known
    busy_known_j: float = 0.0

    def add(self, row: rq.UsageRow, busy: float | None, factor: float = 1.0) -> None:
        self.energy_j += row.energy_j * factor
        self.energy_cost.add(row.energy_cost, row.energy_cost_unpriced_j, factor)
        self.capacity_cost.add(row.capacity_cost, row.capacity_cost_unpriced_j, factor)
        self.carbon_g.add(row.carbon_g, row.carbon_unpriced_j, factor)
        cost = _opt_sum(row.energy_cost, row.capacity_cost)
        self.cost.add(cost, row.cost_unpriced_j, factor)
        if row.bucket == "idle":
            self.idle.add(cost, row.cost_unpriced_j, factor)
        elif row.bucket == "keepwarm":
            self.keepwarm.add(cost, row.cost_unpriced_j, factor)
        self.methods[row.method] = self.methods.get(row.method, 0.0) + row.energy_j * factor
        if busy is not None:
            self.busy_j += row.energy_j * factor * busy
            self.busy_known_j += row.energy_j * factor

    def costs(self) -> Costs:
        return Costs(
            energy_kwh=self.energy_j / J_PER_KWH,
            cost=self.cost.amount(),
            energy_cost=self.energy_cost.amount(),
            capacity_cost=self.capacity_cost.amount(),
            carbon_g=self.carbon_g.amount(),
            idle_cost=self.idle.amount(),
            keepwarm_cost=self.keepwarm.amount(),
        )

    def utilisation(self) -> float | None:
        return self.busy_j / self.busy_known_j if self.busy_known_j > 0 else None


def _opt_sum(a: float | None, b: float | None) -> float | None:
    if a is None and b is None:
        return None
    return (a or 0.0) + (b or 0.0)


def _fractions(parts: Mapping[str, float]) -> dict[str, float]:
    total = sum(parts.values())
    if total <= 0:
        return {}
    return {k: v / total for k, v in sorted(parts.items()) if v > 0}


# ----- grouping -------------------------------------------------------------

GroupId = tuple[str, Any]  # ("group", key) | (special kind, None)


def _group_of(by: str, key: Any, bucket: str) -> GroupId:
    """Which row of the report a share's energy belongs to before any spreading."""
    if by in ("device", "host"):
        return ("group", key)
    if bucket in ("idle", "keepwarm", "other"):
        return (bucket, None)
    return ("group", key) if key is not None else ("unlabelled", None)


def _spread_pools(
    rows: Iterable[rq.UsageRow],
    by: str,
    share_idle: bool,
    busy: Mapping[tuple[int, float], float],
) -> dict[GroupId, _Acc]:
    """Every usage row into its group; idle and keep-warm spread when asked."""
    accs: dict[GroupId, _Acc] = {}
    spreading = share_idle and by not in ("device", "host")
    pools: dict[tuple[int, float], list[rq.UsageRow]] = {}
    active: dict[tuple[int, float], dict[GroupId, float]] = {}
    for row in rows:
        where = (row.device_id, row.hour)
        gid = _group_of(by, row.key, row.bucket)
        if spreading and row.bucket in _POOL:
            pools.setdefault(where, []).append(row)
            continue
        if spreading and row.bucket == "active":
            users = active.setdefault(where, {})
            users[gid] = users.get(gid, 0.0) + row.energy_j
        accs.setdefault(gid, _Acc()).add(row, busy.get(where))
    for where, pool in pools.items():
        users = {g: e for g, e in active.get(where, {}).items() if e > 0}
        total = sum(users.values())
        for row in pool:
            if total <= 0:  # nobody used the device this hour: it stays idle
                accs.setdefault((row.bucket, None), _Acc()).add(row, busy.get(where))
                continue
            for gid, energy_j in users.items():
                accs.setdefault(gid, _Acc()).add(row, busy.get(where), energy_j / total)
    return accs


# ----- the report -------------------------------------------------------------


def build_report(
    engine: Engine,
    t_from: float,
    t_to: float,
    by: str = "model",
    share_idle: bool = False,
    use_rollups: bool = True,
    top_recommendations: int = 5,
    now: float | None = None,
) -> Report:
    """Read the store and assemble the report of [t_from, t_to)."""
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    with engine.connect() as conn:
        p = rq.plan(conn, t_from, t_to, use_rollups)
        cut = rq.cut(conn, p)
        usage = rq.usage_rows(conn, p, by, cut)
        busy_s = rq.device_busy(conn, p, cut)
        bases = rq.basis_rows(conn, p, by, cut)
        grain = rq.REQUEST_GRAIN[by]
        if grain is not None and grain[0] == "host":  # per tenant or host: they add up
            requests = rq.request_totals(conn, p, [by])[0]
            all_requests = RequestTotals()
            for part in requests.values():
                all_requests.add(part)
        elif grain is not None:
            requests, everything = rq.request_totals(conn, p, [by, None])
            all_requests = everything.get(None, RequestTotals())
        else:
            requests = {}
            all_requests = rq.request_totals(conn, p, [None])[0].get(None, RequestTotals())
        names = rq.Names.load(conn)
        recs = _recommendations(conn, top_recommendations)
        stored = rq.stored_range(conn)
    busy = {k: b / known for k, (b, known) in busy_s.items() if known > 0}
    accs = _spread_pools(usage, by, share_idle, busy)
    total = _Acc()
    for row in usage:
        total.add(row, busy.get((row.device_id, row.hour)))
    active_by_key: dict[Any, float] = {}
    for key, bucket, basis, energy_j in bases:
        if bucket == "active":
            active_by_key[key] = active_by_key.get(key, 0.0) + energy_j
        gid = _group_of(by, key, bucket)
        if gid in accs:
            accs[gid].bases[basis] = accs[gid].bases.get(basis, 0.0) + energy_j
        total.bases[basis] = total.bases.get(basis, 0.0) + energy_j
    for key in requests:
        accs.setdefault(("group", key) if key is not None else ("unlabelled", None), _Acc())
    groups = [
        _group(
            by, gid, acc, requests.get(gid[1]) if gid[0] in ("group", "unlabelled") else None, names
        )
        for gid, acc in accs.items()
    ]
    groups.sort(key=_order)
    # Active energy of the groups that served requests, against what their requests carry.
    served_j = sum(e for k, e in active_by_key.items() if k in requests and requests[k].requests)
    if by == "device":  # requests belong to no single device: the whole host's
        served_j = sum(active_by_key.values()) if all_requests.requests else 0.0
    return Report(
        t_from=t_from,
        t_to=t_to,
        by=by,
        share_idle=share_idle,
        generated_at=time.time() if now is None else now,
        currency=names.currency,
        price_cards=names.cards,
        totals=total.costs(),
        total_requests=_stats(all_requests),
        utilisation=total.utilisation(),
        methods=_fractions(total.methods),
        bases=_fractions(total.bases),
        groups=tuple(groups),
        recommendations=recs,
        rollup_hours=p.rollup_hours,
        rollup_days=p.rollup_days,
        raw_ranges=tuple(sorted({(s.lo, s.hi) for s in p.raw})),
        stored=stored,
        served_active_j=served_j,
        request_energy_j=all_requests.energy_j,
    )


def _order(g: Group) -> tuple[int, float, str]:
    rank = 0 if g.kind == "group" else 1 + SPECIAL_KINDS.index(g.kind)
    cost = g.costs.cost.value
    return (rank, -(cost if cost is not None else -1.0), g.label)


def _stats(t: RequestTotals) -> RequestStats:
    return RequestStats(
        requests=t.requests,
        calls=t.calls,
        items=t.items,
        tokens_in=t.tokens_in,
        tokens_out=t.tokens_out,
        unpriced=t.unpriced_requests,
        cost_p50=cost_histogram.percentile(t.hist, 0.50),
        cost_p95=cost_histogram.percentile(t.hist, 0.95),
    )


def _group(by: str, gid: GroupId, acc: _Acc, req: RequestTotals | None, names: rq.Names) -> Group:
    kind, key = gid
    costs = acc.costs()
    stats = None
    if kind in ("group", "unlabelled") and rq.REQUEST_GRAIN[by] is not None:
        stats = _stats(req or RequestTotals())
    per_1k = _per(costs.cost, stats.requests if stats else 0, 1000.0)
    items = stats.items if stats is not None else 0
    tokens_in = stats.tokens_in if stats is not None else 0
    tokens_out = stats.tokens_out if stats is not None else 0
    if kind == "group":
        ident, label = names.describe(by, key)
    elif kind == "unlabelled":
        ident, label = None, f"(no {by})"
    else:
        ident, label = None, _SPECIAL_LABEL[kind]
    return Group(
        key=ident,
        label=label,
        kind=kind,
        costs=costs,
        requests=stats,
        j_per_item=acc.energy_j / items if items > 0 else None,
        cost_per_1k_requests=per_1k,
        j_per_token=acc.energy_j / (tokens_in + tokens_out) if tokens_in + tokens_out else None,
        cost_per_1m_tokens_in=_per(costs.cost, tokens_in, 1e6),
        cost_per_1m_tokens_out=_per(costs.cost, tokens_out, 1e6),
        utilisation=acc.utilisation(),
        methods=_fractions(acc.methods),
        bases=_fractions(acc.bases),
    )


def _per(cost: Amount, count: int, scale: float) -> Amount | None:
    """``cost`` per ``scale`` of ``count`` (requests, tokens); None without any or unpriced."""
    if count <= 0 or cost.value is None:
        return None
    f = scale / count
    return Amount(cost.value * f, cost.unpriced_kwh * f)


def _recommendations(conn: Any, limit: int) -> tuple[RecommendationLine, ...]:
    if limit <= 0:
        return ()
    r = schema.recommendations.c
    rows = conn.execute(
        select(
            r.kind,
            r.subject_kind,
            r.subject,
            r.savings_usd_month,
            r.savings_kwh_month,
            r.savings_kgco2e_month,
            r.confidence,
            r.how_to_apply,
        )
        .where(r.status == "open")
        .order_by(r.savings_usd_month.desc(), r.id)
        .limit(limit)
    )
    return tuple(
        RecommendationLine(
            kind=str(x.kind),
            subject_kind=str(x.subject_kind),
            subject=str(x.subject),
            savings_usd_month=float(x.savings_usd_month),
            savings_kwh_month=float(x.savings_kwh_month),
            savings_kgco2e_month=float(x.savings_kgco2e_month),
            confidence=str(x.confidence),
            how_to_apply=str(x.how_to_apply),
        )
        for x in rows
    )

"""The agent's writes: one transaction per flush, idempotent on natural keys.

A flush may be retried after a failure that happened after the commit (a
lost connection, a killed agent that replays its buffer): rows already
stored are skipped on their natural key, so nothing counts twice. Hosts,
devices, targets and models are created on first sight and their ids cached.

When the database refuses a flush because of what is in it (a value too
long or out of range, a string it cannot encode: ``refused_by_data``), as
opposed to being away, the flush is written again in halves, and halves of
the halves, until every row it takes is written and each row it refuses
stands alone; that row goes to the ``quarantine`` table with the
database's one-line reason and is logged. One bad row never costs the
others, and a flush that is retried whole later skips what was written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, not_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from infermeter.errors import StoreError
from infermeter.records import (
    CallEnergy,
    CallEnergyModel,
    Device,
    DeviceWindowRecord,
    Price,
    PriceCard,
    Share,
    Target,
    TargetKey,
)
from infermeter.store import window_profile
from infermeter.store.models import (
    AgentState,
    Base,
    CallEnergyModelRow,
    DeviceRow,
    DeviceWindow,
    Host,
    ModelRow,
    PriceCardRow,
    RequestRow,
    TargetRow,
    UsageHourly,
    UsageShare,
)
from infermeter.store.quarantine import as_json, one_line, quarantine, refused_by_data

log = logging.getLogger(__name__)

# Failed rollup hours (request_rollup.FAILED_KEY) beyond this many are kept
# as one span from the oldest: the retention query stays short.
_MAX_HOURS_KEPT_ONE_BY_ONE = 100


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """What one flush stores: shares merged per flush window, and who they name."""

    shares: Sequence[Share]
    devices: Sequence[Device]
    targets: Sequence[Target]
    now: float
    # Learned (idle W, keep-warm W) per device uid; None where not learned yet.
    baselines: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    calls: Sequence[CallEnergy] = ()
    windows: Sequence[DeviceWindowRecord] = ()
    card: PriceCard | None = None
    share_prices: Sequence[Price] = ()  # aligned with shares; empty: unpriced
    call_prices: Sequence[Price] = ()  # aligned with calls


def insert_ignoring_duplicates(
    conn: Connection, table: type[Base], rows: Sequence[dict[str, Any]]
) -> None:
    """INSERT rows, skipping any whose natural key is already stored."""
    if not rows:
        return
    dialect = conn.dialect.name
    if dialect == "sqlite":
        conn.execute(sqlite.insert(table).on_conflict_do_nothing(), rows)
    elif dialect == "postgresql":
        conn.execute(postgresql.insert(table).on_conflict_do_nothing(), rows)
    else:  # any other database: one savepoint per row
        for row in rows:
            try:
                with conn.begin_nested():
                    conn.execute(insert(table), row)
            except IntegrityError:
                pass


# What a flush holds, item by item: ("share" | "call" | "window", index).
_Item = tuple[str, int]


def _part(batch: FlushBatch, items: Sequence[_Item]) -> FlushBatch:
    """The flush of ``items`` only, with the identities and prices they need."""
    shares = [i for kind, i in items if kind == "share"]
    calls = [i for kind, i in items if kind == "call"]
    windows = [i for kind, i in items if kind == "window"]
    part_shares = [batch.shares[i] for i in shares]
    part_calls = [batch.calls[i] for i in calls]
    part_windows = [batch.windows[i] for i in windows]
    uids = {s.device_uid for s in part_shares} | {w.device_uid for w in part_windows}
    keys = {s.target for s in part_shares if s.target is not None}
    keys.update(c.target for c in part_calls)
    share_prices = [batch.share_prices[i] for i in shares] if batch.share_prices else []
    call_prices = [batch.call_prices[i] for i in calls] if batch.call_prices else []
    return FlushBatch(
        shares=part_shares,
        devices=[d for d in batch.devices if d.uid in uids],
        targets=[t for t in batch.targets if t.key in keys],
        now=batch.now,
        baselines={u: b for u, b in batch.baselines.items() if u in uids},
        calls=part_calls,
        windows=part_windows,
        card=batch.card if share_prices or call_prices else None,
        share_prices=share_prices,
        call_prices=call_prices,
    )


def _item_payload(batch: FlushBatch, item: _Item) -> dict[str, Any]:
    kind, i = item
    if kind == "share":
        price = batch.share_prices[i] if batch.share_prices else None
        return {"share": batch.shares[i], "price": price}
    if kind == "call":
        price = batch.call_prices[i] if batch.call_prices else None
        return {"call": batch.calls[i], "price": price}
    return {"window": batch.windows[i]}


def _price_columns(prices: Sequence[Price], i: int, card_id: int | None) -> dict[str, Any]:
    if not prices:
        return {"energy_cost": None, "capacity_cost": None, "carbon_g": None, "price_card_id": None}
    p = prices[i]
    return {
        "energy_cost": p.energy_cost,
        "capacity_cost": p.capacity_cost,
        "carbon_g": p.carbon_g,
        "price_card_id": card_id,
    }


class Store:
    """The store of one host. Thread-compatible: one flush at a time."""

    def __init__(self, engine: Engine, host: str) -> None:
        self.engine = engine
        self.host = host
        self._host_id: int | None = None
        self._device_ids: dict[str, int] = {}
        self._target_ids: dict[TargetKey, int] = {}
        self._model_ids: dict[str, int] = {}
        self._card_ids: dict[str, int] = {}
        self._model_described: set[str] = set()

    def close(self) -> None:
        self.engine.dispose()

    # ----- identities -------------------------------------------------------

    def host_id(self, conn: Connection, now: float) -> int:
        if self._host_id is None:
            insert_ignoring_duplicates(
                conn, Host, [{"name": self.host, "first_seen": now, "last_seen": now}]
            )
            self._host_id = conn.execute(select(Host.id).where(Host.name == self.host)).scalar_one()
        return self._host_id

    def device_id(self, conn: Connection, device: Device, now: float) -> int:
        cached = self._device_ids.get(device.uid)
        if cached is not None:
            return cached
        host_id = self.host_id(conn, now)
        row = {
            "host_id": host_id,
            "uid": device.uid,
            "kind": str(device.kind),
            "name": device.name,
            "index": device.index,
            "parent_uid": device.parent_uid,
            "cores": device.cores,
            "compute_capability": (
                "{}.{}".format(*device.compute_capability) if device.compute_capability else None
            ),
            "memory_total_bytes": device.memory_total_bytes,
            "power_limit_w": device.power_limit_w,
            "idle_power_w": device.idle_power_w,
            "keepwarm_power_w": device.keepwarm_power_w,
            "first_seen": now,
            "last_seen": now,
        }
        insert_ignoring_duplicates(conn, DeviceRow, [row])
        device_id = conn.execute(
            select(DeviceRow.id).where(DeviceRow.host_id == host_id, DeviceRow.uid == device.uid)
        ).scalar_one()
        self._device_ids[device.uid] = device_id
        return device_id

    def target_id(self, conn: Connection, target: Target, now: float) -> int:
        cached = self._target_ids.get(target.key)
        if cached is not None:
            return cached
        host_id = self.host_id(conn, now)
        row = {
            "host_id": host_id,
            "pid": target.pid,
            "start_time": target.start_time,
            "framework": str(target.framework),
            "cmdline": " ".join(target.cmdline),
            "labels": dict(target.labels),
            "how_found": target.how_found,
            "first_seen": now,
            "last_seen": now,
        }
        insert_ignoring_duplicates(conn, TargetRow, [row])
        target_id = conn.execute(
            select(TargetRow.id).where(
                TargetRow.host_id == host_id,
                TargetRow.pid == target.pid,
                TargetRow.start_time == target.start_time,
            )
        ).scalar_one()
        self._target_ids[target.key] = target_id
        return target_id

    def model_id(
        self,
        conn: Connection,
        name: str,
        now: float,
        framework: str | None = None,
        dtype: str | None = None,
        parameters: int | None = None,
    ) -> int:
        cached = self._model_ids.get(name)
        if cached is not None and (name in self._model_described or not (dtype or parameters)):
            return cached
        if cached is not None:  # first seen as a label; a call now says what it is
            conn.execute(
                update(ModelRow)
                .where(ModelRow.id == cached)
                .values(
                    dtype=func.coalesce(ModelRow.dtype, dtype),
                    parameters=func.coalesce(ModelRow.parameters, parameters),
                    framework=func.coalesce(ModelRow.framework, framework),
                )
            )
            self._model_described.add(name)
            return cached
        insert_ignoring_duplicates(
            conn,
            ModelRow,
            [
                {
                    "name": name,
                    "framework": framework,
                    "dtype": dtype,
                    "parameters": parameters,
                    "first_seen": now,
                }
            ],
        )
        model_id = conn.execute(select(ModelRow.id).where(ModelRow.name == name)).scalar_one()
        self._model_ids[name] = model_id
        if dtype or parameters:
            self._model_described.add(name)
        return model_id

    def _forget_ids(self) -> None:
        """After a rollback the cached ids may name rows that were never committed."""
        self._host_id = None
        self._device_ids.clear()
        self._target_ids.clear()
        self._model_ids.clear()
        self._card_ids.clear()
        self._model_described.clear()

    # ----- the flush --------------------------------------------------------

    def write_flush(self, batch: FlushBatch) -> int:
        """Store one flush in one transaction; returns the shares written.

        If the database refuses it for its data, it is written in parts and
        the rows it refuses are quarantined (see the module docstring). Any
        other failure (the database away) is raised, and nothing is written.
        """
        try:
            return self._write_once(batch)
        except Exception as e:
            if not refused_by_data(e):
                raise
            log.warning(
                "the store refused a flush of %d shares and %d calls (%s): "
                "writing it in parts, to set the refused rows aside",
                len(batch.shares),
                len(batch.calls),
                one_line(e),
            )
            first = e
        items: list[_Item] = [
            *(("share", i) for i in range(len(batch.shares))),
            *(("call", i) for i in range(len(batch.calls))),
            *(("window", i) for i in range(len(batch.windows))),
        ]
        return self._write_parts(batch, items, first)

    def _write_once(self, batch: FlushBatch) -> int:
        try:
            with self.engine.begin() as conn:
                return self._write(conn, batch)
        except BaseException:
            self._forget_ids()
            raise

    def _write_parts(self, batch: FlushBatch, items: list[_Item], first: Exception) -> int:
        """Bisect ``items`` (which failed together) until each refused one stands alone.

        Each part that the database takes is one transaction. With k refused
        rows among n, that is about 2 k log2(n) tries.
        """
        written = 0
        failed: list[tuple[list[_Item], Exception]] = [(items, first)]
        while failed:
            part, error = failed.pop()
            if len(part) <= 1:
                self._set_aside(batch, part, error)
                continue
            mid = len(part) // 2
            for half in (part[:mid], part[mid:]):
                try:
                    written += self._write_once(_part(batch, half))
                except Exception as e:
                    if not refused_by_data(e):
                        raise
                    failed.append((half, e))
        return written

    def _set_aside(self, batch: FlushBatch, part: Sequence[_Item], error: Exception) -> None:
        """Quarantine the one item the database refused (or the flush's identities)."""
        reason = one_line(error)
        if part:
            source = part[0][0]
            payload: Any = _item_payload(batch, part[0])
        else:  # no rows at all: the devices or targets themselves were refused
            source = "flush"
            payload = {"devices": batch.devices, "targets": batch.targets}
        log.warning("the store refused a %s (%s): set aside in quarantine", source, reason)
        try:
            with self.engine.begin() as conn:
                host_id = conn.execute(
                    select(Host.id).where(Host.name == self.host)
                ).scalar_one_or_none()
                quarantine(conn, host_id, batch.now, source, reason, payload)
        except Exception as e:
            if not refused_by_data(e):
                raise  # away: the flush is kept and tried again
            # Even the quarantine refused it: the log is the last place it can go.
            log.error("quarantine refused a %s too (%s): %s", source, one_line(e), as_json(payload))

    def _write(self, conn: Connection, batch: FlushBatch) -> int:
        now = batch.now
        host_id = self.host_id(conn, now)
        devices = {d.uid: d for d in batch.devices}
        targets = {t.key: t for t in batch.targets}
        for device in devices.values():
            self.device_id(conn, device, now)
        for target in targets.values():
            self.target_id(conn, target, now)
        card_id = self.price_card_id(conn, batch.card, now) if batch.card else None
        rows = []
        for i, s in enumerate(batch.shares):
            target_id = self._target_ids.get(s.target) if s.target else None
            framework = str(targets[s.target].framework) if s.target in targets else None
            rows.append(
                {
                    "host_id": host_id,
                    "device_id": self._device_ids[s.device_uid],
                    "t0": s.t0,
                    "t1": s.t1,
                    "target_id": target_id,
                    "model_id": self.model_id(conn, s.model, now, framework) if s.model else None,
                    "tenant": s.tenant,
                    "bucket": str(s.bucket),
                    "method": str(s.method),
                    "weight_basis": s.weight_basis,
                    "energy_j": s.energy_j,
                    "drawn_t0": s.drawn_t0,
                    "drawn_t1": s.drawn_t1,
                    **_price_columns(batch.share_prices, i, card_id),
                }
            )
        insert_ignoring_duplicates(conn, UsageShare, rows)
        insert_ignoring_duplicates(
            conn,
            DeviceWindow,
            [
                {
                    "host_id": host_id,
                    "device_id": self._device_ids[w.device_uid],
                    "t0": w.t0,
                    "t1": w.t1,
                    "energy_j": w.energy_j,
                    "method": str(w.method),
                    "busy_fraction": w.busy_fraction,
                    "memory_used_bytes": w.memory_used_bytes,
                    "profile": window_profile.encode(w.profile, w.t0),
                }
                for w in batch.windows
                if w.device_uid in self._device_ids
            ],
        )
        insert_ignoring_duplicates(conn, RequestRow, self._call_rows(conn, batch, targets, card_id))
        conn.execute(update(Host).where(Host.id == host_id).values(last_seen=now))
        if self._device_ids:
            conn.execute(
                update(DeviceRow)
                .where(DeviceRow.id.in_([self._device_ids[u] for u in devices]))
                .values(last_seen=now)
            )
        for uid, (idle_w, keepwarm_w) in batch.baselines.items():
            learned = {
                k: v
                for k, v in (("idle_power_w", idle_w), ("keepwarm_power_w", keepwarm_w))
                if v is not None
            }
            if learned and uid in self._device_ids:
                conn.execute(
                    update(DeviceRow).where(DeviceRow.id == self._device_ids[uid]).values(**learned)
                )
        seen = [self._target_ids[k] for k in targets]
        if seen:
            conn.execute(update(TargetRow).where(TargetRow.id.in_(seen)).values(last_seen=now))
        return len(rows)

    def _call_rows(
        self,
        conn: Connection,
        batch: FlushBatch,
        targets: Mapping[TargetKey, Target],
        card_id: int | None,
    ) -> list[dict[str, Any]]:
        rows = []
        for i, c in enumerate(batch.calls):
            span = c.span
            framework = span.framework or (
                str(targets[c.target].framework) if c.target in targets else None
            )
            rows.append(
                {
                    "target_id": self._target_ids[c.target],
                    "model_id": self.model_id(
                        conn, span.model, batch.now, framework, span.dtype, span.parameters
                    ),
                    "request_id": span.request_id,
                    "t0": span.t0,
                    "t1": span.t1,
                    "items": span.items,
                    "tokens_in": span.tokens_in,
                    "tokens_out": span.tokens_out,
                    "tenant": span.tenant,
                    "tags": dict(span.tags),
                    "energy_j": c.energy_j,
                    "method": str(c.method),
                    "seq": span.seq,
                    **_price_columns(batch.call_prices, i, card_id),
                }
            )
        return rows

    def price_card_id(self, conn: Connection, card: PriceCard, now: float) -> int:
        """The stored card of this version; a changed card must bear a new version."""
        cached = self._card_ids.get(card.version)
        if cached is not None:
            return cached
        body = {**card.body, "digest": card.digest}
        insert_ignoring_duplicates(
            conn,
            PriceCardRow,
            [{"version": card.version, "currency": card.currency, "body": body, "created_at": now}],
        )
        row = conn.execute(
            select(PriceCardRow.id, PriceCardRow.body).where(PriceCardRow.version == card.version)
        ).one()
        if row.body.get("digest") != card.digest:
            raise StoreError(
                f"price card {card.version!r} is stored with other prices; "
                "give the changed card a new prices.version"
            )
        self._card_ids[card.version] = row.id
        return int(row.id)

    def learned_baselines(self) -> dict[str, tuple[float | None, float | None]]:
        """Idle and keep-warm power per device of this host, as last stored."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(DeviceRow.uid, DeviceRow.idle_power_w, DeviceRow.keepwarm_power_w)
                .join(Host, Host.id == DeviceRow.host_id)
                .where(Host.name == self.host)
            ).all()
        return {r.uid: (r.idle_power_w, r.keepwarm_power_w) for r in rows}

    def save_energy_models(self, models: Sequence[CallEnergyModel], now: float) -> int:
        """Replace this host's stored coefficients of these call classes; returns rows written.

        One small transaction of its own, after the flush: the coefficients
        only weigh future splits, so a failure here never costs a flush.
        Non-finite values (which SQLite would store as NULL) are left out.
        """
        rows = [
            m
            for m in models
            if all(
                math.isfinite(v)
                for v in (m.j_per_call, m.j_per_item, m.j_per_prefill_token, m.j_per_decode_token)
            )
        ]
        if not rows:
            return 0
        with self.engine.begin() as conn:
            host_id = self.host_id(conn, now)
            for m in rows:
                conn.execute(
                    delete(CallEnergyModelRow).where(
                        CallEnergyModelRow.host_id == host_id,
                        CallEnergyModelRow.model == m.model,
                        CallEnergyModelRow.dtype == m.dtype,
                        CallEnergyModelRow.device_kind == m.device_kind,
                    )
                )
            conn.execute(
                insert(CallEnergyModelRow),
                [
                    {
                        "host_id": host_id,
                        "model": m.model,
                        "dtype": m.dtype,
                        "device_kind": m.device_kind,
                        "j_per_call": m.j_per_call,
                        "j_per_item": m.j_per_item,
                        "j_per_prefill_token": m.j_per_prefill_token,
                        "j_per_decode_token": m.j_per_decode_token,
                        "windows": m.windows,
                        "r2": m.r2 if m.r2 is not None and math.isfinite(m.r2) else None,
                        "fit_windows": m.fit_windows,
                        "updated_at": now,
                    }
                    for m in rows
                ],
            )
        return len(rows)

    def energy_models(self, host: str | None = None) -> list[CallEnergyModel]:
        """The stored coefficients of one host (this one by default), by model."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(CallEnergyModelRow.__table__)
                .join(Host, Host.id == CallEnergyModelRow.host_id)
                .where(Host.name == (host or self.host))
                .order_by(
                    CallEnergyModelRow.model,
                    CallEnergyModelRow.dtype,
                    CallEnergyModelRow.device_kind,
                )
            ).all()
            return [
                CallEnergyModel(
                    r.model,
                    r.dtype,
                    r.device_kind,
                    r.j_per_call,
                    r.j_per_item,
                    r.j_per_prefill_token,
                    r.j_per_decode_token,
                    r.windows,
                    r.r2,
                    r.fit_windows,
                )
                for r in rows
            ]

    # ----- rollups and retention -------------------------------------------

    def rollup(self, since: float, until: float) -> int:
        """Recompute the hourly rollup of every hour touching [since, until)."""
        first_hour = math.floor(since / 3600) * 3600
        with self.engine.begin() as conn:
            host_id = self.host_id(conn, until)
            q = select(
                UsageShare.device_id,
                UsageShare.t0,
                UsageShare.t1,
                UsageShare.target_id,
                UsageShare.model_id,
                UsageShare.tenant,
                UsageShare.bucket,
                UsageShare.method,
                UsageShare.energy_j,
                UsageShare.energy_cost,
                UsageShare.capacity_cost,
                UsageShare.carbon_g,
            ).where(
                UsageShare.host_id == host_id, UsageShare.t0 >= first_hour, UsageShare.t0 < until
            )
            groups: dict[tuple[Any, ...], dict[str, Any]] = {}
            for r in conn.execute(q):
                hour = math.floor(r.t0 / 3600) * 3600
                key = (r.device_id, hour, r.target_id, r.model_id, r.tenant, r.bucket, r.method)
                g = groups.setdefault(
                    key,
                    {
                        "energy_j": 0.0,
                        "energy_cost": 0.0,
                        "capacity_cost": 0.0,
                        "carbon_g": 0.0,
                        "seconds": 0.0,
                        "_unpriced": set(),
                    },
                )
                g["energy_j"] += r.energy_j
                g["seconds"] += r.t1 - r.t0
                for col in ("energy_cost", "capacity_cost", "carbon_g"):
                    value = getattr(r, col)
                    if value is None:
                        g["_unpriced"].add(col)  # one unpriced row makes the sum unknown
                    else:
                        g[col] += value
            conn.execute(
                delete(UsageHourly).where(
                    UsageHourly.host_id == host_id,
                    UsageHourly.hour >= first_hour,
                    UsageHourly.hour < until,
                )
            )
            rows = []
            for (device_id, hour, target_id, model_id, tenant, bucket, method), g in groups.items():
                unpriced = g.pop("_unpriced")
                for col in unpriced:
                    g[col] = None
                rows.append(
                    {
                        "host_id": host_id,
                        "device_id": device_id,
                        "hour": hour,
                        "target_id": target_id,
                        "model_id": model_id,
                        "tenant": tenant,
                        "bucket": bucket,
                        "method": method,
                        **g,
                    }
                )
            if rows:
                conn.execute(insert(UsageHourly), rows)
            return len(rows)

    def prune(self, before: float) -> int:
        """Delete raw shares older than ``before`` whose hour is rolled up; the rollups stay.

        Only shares that start before the rollups' completion point
        (request_rollup.COMPLETE_KEY) are rolled up, and none of an hour
        whose rollup failed (request_rollup.FAILED_KEY) until a later one
        succeeds: those are kept whatever their age, since deleting them
        would lose their energy for good. With no rollup yet, nothing goes.
        """
        from infermeter.store.request_rollup import COMPLETE_KEY, FAILED_KEY, HOUR_S

        with self.engine.begin() as conn:
            host_id = self.host_id(conn, before)
            state = dict(
                conn.execute(
                    select(AgentState.key, AgentState.value).where(
                        AgentState.host_id == host_id,
                        AgentState.key.in_([COMPLETE_KEY, FAILED_KEY]),
                    )
                ).all()
            )
            if COMPLETE_KEY not in state:
                return 0
            complete = float(json.loads(state[COMPLETE_KEY]))
            failed = sorted(float(h) for h in json.loads(state.get(FAILED_KEY) or "[]"))
            s = UsageShare
            where = [s.host_id == host_id, s.t1 <= before, s.t0 < complete]
            if len(failed) > _MAX_HOURS_KEPT_ONE_BY_ONE:
                where.append(s.t0 < failed[0])
            else:
                where.extend(not_(and_(s.t0 >= h, s.t0 < h + HOUR_S)) for h in failed)
            result = conn.execute(delete(UsageShare).where(*where))
            return int(result.rowcount or 0)

    # ----- small persistent facts ------------------------------------------

    def get_state(self, key: str) -> Any:
        with self.engine.begin() as conn:
            host_id = self.host_id(conn, 0.0)
            raw = conn.execute(
                select(AgentState.value).where(AgentState.host_id == host_id, AgentState.key == key)
            ).scalar_one_or_none()
        return None if raw is None else json.loads(raw)

    def set_state(self, key: str, value: Any) -> None:
        with self.engine.begin() as conn:
            host_id = self.host_id(conn, 0.0)
            raw = json.dumps(value)
            done = conn.execute(
                update(AgentState)
                .where(AgentState.host_id == host_id, AgentState.key == key)
                .values(value=raw)
            )
            if not done.rowcount:
                conn.execute(insert(AgentState).values(host_id=host_id, key=key, value=raw))

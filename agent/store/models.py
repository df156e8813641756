"""ORM classes over the schema's tables, for the code that writes and reads by attribute.

The tables themselves are infermeter.store.schema (SQLAlchemy Core);
each class here is mapped onto one of them (declarative with an imperative
table), and its annotations only give the attributes their types. Code
that reads without writing (the report) uses the tables and never loads
the ORM.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase, Mapped

from infermeter.store import schema

NAMING_CONVENTION = schema.NAMING_CONVENTION


class Base(DeclarativeBase):
    metadata = schema.metadata


class Host(Base):
    __table__ = schema.hosts
    id: Mapped[int]
    name: Mapped[str]
    first_seen: Mapped[float]
    last_seen: Mapped[float]


class DeviceRow(Base):
    __table__ = schema.devices
    id: Mapped[int]
    host_id: Mapped[int]
    uid: Mapped[str]
    kind: Mapped[str]
    name: Mapped[str]
    index: Mapped[int]
    parent_uid: Mapped[str | None]
    memory_total_bytes: Mapped[int | None]
    power_limit_w: Mapped[float | None]
    cores: Mapped[int | None]
    compute_capability: Mapped[str | None]
    idle_power_w: Mapped[float | None]
    keepwarm_power_w: Mapped[float | None]
    first_seen: Mapped[float]
    last_seen: Mapped[float]


class TargetRow(Base):
    __table__ = schema.targets
    id: Mapped[int]
    host_id: Mapped[int]
    pid: Mapped[int]
    start_time: Mapped[float]
    framework: Mapped[str]
    cmdline: Mapped[str]
    labels: Mapped[dict[str, str]]
    how_found: Mapped[str]
    first_seen: Mapped[float]
    last_seen: Mapped[float]


class ModelRow(Base):
    __table__ = schema.models
    id: Mapped[int]
    name: Mapped[str]
    framework: Mapped[str | None]
    dtype: Mapped[str | None]
    parameters: Mapped[int | None]
    first_seen: Mapped[float]


class PriceCardRow(Base):
    __table__ = schema.price_cards
    id: Mapped[int]
    version: Mapped[str]
    currency: Mapped[str]
    body: Mapped[dict[str, object]]
    created_at: Mapped[float]


class UsageShare(Base):
    """Energy of one device over one flush interval, in one bucket."""

    __table__ = schema.usage_shares
    id: Mapped[int]
    host_id: Mapped[int]
    device_id: Mapped[int]
    t0: Mapped[float]
    t1: Mapped[float]
    target_id: Mapped[int | None]
    model_id: Mapped[int | None]
    tenant: Mapped[str | None]
    bucket: Mapped[str]
    method: Mapped[str]
    weight_basis: Mapped[str]
    energy_j: Mapped[float]
    energy_cost: Mapped[float | None]
    capacity_cost: Mapped[float | None]
    carbon_g: Mapped[float | None]
    price_card_id: Mapped[int | None]
    drawn_t0: Mapped[float | None]
    drawn_t1: Mapped[float | None]


class DeviceWindow(Base):
    """What a device did in one flush window: energy, how busy, memory held."""

    __table__ = schema.device_windows
    id: Mapped[int]
    host_id: Mapped[int]
    device_id: Mapped[int]
    t0: Mapped[float]
    t1: Mapped[float]
    energy_j: Mapped[float]
    method: Mapped[str]
    busy_fraction: Mapped[float | None]
    memory_used_bytes: Mapped[int | None]
    profile: Mapped[str | None]


class UsageHourly(Base):
    """Hourly rollup of usage_shares, kept after raw shares are pruned."""

    __table__ = schema.usage_hourly
    id: Mapped[int]
    host_id: Mapped[int]
    device_id: Mapped[int]
    hour: Mapped[float]
    target_id: Mapped[int | None]
    model_id: Mapped[int | None]
    tenant: Mapped[str | None]
    bucket: Mapped[str]
    method: Mapped[str]
    energy_j: Mapped[float]
    energy_cost: Mapped[float | None]
    capacity_cost: Mapped[float | None]
    carbon_g: Mapped[float | None]
    seconds: Mapped[float]


class RequestRow(Base):
    """One model call with the energy attributed to it."""

    __table__ = schema.requests
    id: Mapped[int]
    target_id: Mapped[int]
    model_id: Mapped[int]
    request_id: Mapped[str | None]
    t0: Mapped[float]
    t1: Mapped[float]
    items: Mapped[int]
    tokens_in: Mapped[int | None]
    tokens_out: Mapped[int | None]
    tenant: Mapped[str | None]
    tags: Mapped[dict[str, str]]
    energy_j: Mapped[float]
    method: Mapped[str]
    energy_cost: Mapped[float | None]
    capacity_cost: Mapped[float | None]
    carbon_g: Mapped[float | None]
    price_card_id: Mapped[int | None]
    seq: Mapped[int]


class CallEnergyModelRow(Base):
    __table__ = schema.call_energy_models
    id: Mapped[int]
    host_id: Mapped[int]
    model: Mapped[str]
    dtype: Mapped[str]
    device_kind: Mapped[str]
    j_per_call: Mapped[float]
    j_per_item: Mapped[float]
    j_per_prefill_token: Mapped[float]
    j_per_decode_token: Mapped[float]
    windows: Mapped[int]
    r2: Mapped[float | None]
    fit_windows: Mapped[int]
    updated_at: Mapped[float]


class QuarantineRow(Base):
    """Something the store or the agent refused, with the reason."""

    __table__ = schema.quarantine
    id: Mapped[int]
    host_id: Mapped[int | None]
    at: Mapped[float]
    source: Mapped[str]
    reason: Mapped[str]
    payload: Mapped[str]


class RecommendationRow(Base):
    __table__ = schema.recommendations
    id: Mapped[int]
    stable_id: Mapped[str]
    kind: Mapped[str]
    subject_kind: Mapped[str]
    subject: Mapped[str]
    evidence: Mapped[dict[str, object]]
    savings_usd_month: Mapped[float]
    savings_usd_low: Mapped[float]
    savings_usd_high: Mapped[float]
    savings_kwh_month: Mapped[float]
    savings_kgco2e_month: Mapped[float]
    confidence: Mapped[str]
    confidence_reason: Mapped[str]
    how_to_apply: Mapped[str]
    status: Mapped[str]
    first_seen: Mapped[float]
    last_seen: Mapped[float]


class AgentState(Base):
    """Small facts the agent keeps across restarts (span drop counts, last rollup)."""

    __table__ = schema.agent_state
    id: Mapped[int]
    host_id: Mapped[int]
    key: Mapped[str]
    value: Mapped[str]


class RequestHourly(Base):
    """Hourly rollup of model calls into requests, with a histogram of cost per request."""

    __table__ = schema.request_hourly
    id: Mapped[int]
    host_id: Mapped[int]
    hour: Mapped[float]
    grain: Mapped[str]
    target_id: Mapped[int | None]
    model_id: Mapped[int | None]
    tenant: Mapped[str | None]
    requests: Mapped[int]
    calls: Mapped[int]
    items: Mapped[int]
    tokens_in: Mapped[int]
    tokens_out: Mapped[int]
    energy_j: Mapped[float]
    energy_cost: Mapped[float | None]
    capacity_cost: Mapped[float | None]
    carbon_g: Mapped[float | None]
    unpriced_requests: Mapped[int]
    cost_hist: Mapped[dict[str, int]]

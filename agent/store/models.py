"""The SQL schema as SQLAlchemy 2 typed models.

Alembic migrations create it (never ``create_all``); a test checks that the
migrations and these models agree. Times are UTC seconds since the epoch
(``t0``/``t1``, ``hour``) so SQLite and PostgreSQL compare them alike.
Natural keys that contain a nullable column ("no target", "no model") are
unique indexes over ``coalesce(column, 0)`` or ``coalesce(column, '')``,
because both databases treat NULLs as distinct in a plain unique constraint
and a retried flush would otherwise count twice.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class DeviceRow(Base):
    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("host_id", "uid"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    uid: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    index: Mapped[int] = mapped_column(Integer, default=0)
    parent_uid: Mapped[str | None] = mapped_column(String(255))
    memory_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    power_limit_w: Mapped[float | None] = mapped_column(Float)
    cores: Mapped[int | None] = mapped_column(Integer)
    compute_capability: Mapped[str | None] = mapped_column(String(8))  # "9.0"
    # Learned from quiet windows and kept across restarts (attribution step 1-2).
    idle_power_w: Mapped[float | None] = mapped_column(Float)
    keepwarm_power_w: Mapped[float | None] = mapped_column(Float)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class TargetRow(Base):
    __tablename__ = "targets"
    __table_args__ = (UniqueConstraint("host_id", "pid", "start_time"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    pid: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[float] = mapped_column(Float)
    framework: Mapped[str] = mapped_column(String(32))
    cmdline: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    how_found: Mapped[str] = mapped_column(String(16), default="runtime")
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class ModelRow(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    framework: Mapped[str | None] = mapped_column(String(32))
    dtype: Mapped[str | None] = mapped_column(String(32))
    parameters: Mapped[int | None] = mapped_column(BigInteger)
    first_seen: Mapped[float] = mapped_column(Float)


class PriceCardRow(Base):
    __tablename__ = "price_cards"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    body: Mapped[dict[str, object]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class UsageShare(Base):
    """Energy of one device over one flush interval, in one bucket.

    Natural key: (device, t0, target, model, tenant, bucket, method,
    weight_basis): a flush that saw a meter degrade from measured to
    integrated keeps both rows. Costs are NULL when unpriced, never 0.
    """

    __tablename__ = "usage_shares"
    __table_args__ = (
        Index("ix_usage_shares_t0", "t0"),
        Index("ix_usage_shares_model_id_t0", "model_id", "t0"),
        Index("ix_usage_shares_target_id_t0", "target_id", "t0"),
        Index("ix_usage_shares_tenant_t0", "tenant", "t0"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    t0: Mapped[float] = mapped_column(Float)
    t1: Mapped[float] = mapped_column(Float)
    target_id: Mapped[int | None] = mapped_column(ForeignKey("targets.id", ondelete="SET NULL"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    tenant: Mapped[str | None] = mapped_column(String(255))
    bucket: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    weight_basis: Mapped[str] = mapped_column(String(32), default="none")
    energy_j: Mapped[float] = mapped_column(Float)
    energy_cost: Mapped[float | None] = mapped_column(Float)
    capacity_cost: Mapped[float | None] = mapped_column(Float)
    carbon_g: Mapped[float | None] = mapped_column(Float)
    price_card_id: Mapped[int | None] = mapped_column(ForeignKey("price_cards.id"))


class DeviceWindow(Base):
    """What a device did in one flush window: energy, how busy, memory held.

    The recommenders read utilisation and memory from here (right-size,
    power cap); ``top`` reads the latest power. Natural key: (device, t0).
    """

    __tablename__ = "device_windows"
    __table_args__ = (
        UniqueConstraint("device_id", "t0"),
        Index("ix_device_windows_t0", "t0"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    t0: Mapped[float] = mapped_column(Float)
    t1: Mapped[float] = mapped_column(Float)
    energy_j: Mapped[float] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(16))  # the weakest of the window's readings
    busy_fraction: Mapped[float | None] = mapped_column(Float)  # time-weighted mean, 0..1
    memory_used_bytes: Mapped[int | None] = mapped_column(BigInteger)  # peak in the window


class UsageHourly(Base):
    """Hourly rollup of usage_shares, kept after raw shares are pruned."""

    __tablename__ = "usage_hourly"
    __table_args__ = (
        Index("ix_usage_hourly_hour", "hour"),
        Index("ix_usage_hourly_model_id_hour", "model_id", "hour"),
        Index("ix_usage_hourly_tenant_hour", "tenant", "hour"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    hour: Mapped[float] = mapped_column(Float)  # start of the UTC hour
    target_id: Mapped[int | None] = mapped_column(ForeignKey("targets.id", ondelete="SET NULL"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    tenant: Mapped[str | None] = mapped_column(String(255))
    bucket: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    energy_j: Mapped[float] = mapped_column(Float)
    energy_cost: Mapped[float | None] = mapped_column(Float)
    capacity_cost: Mapped[float | None] = mapped_column(Float)
    carbon_g: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


Index(
    "uq_usage_shares_natural_key",
    UsageShare.device_id,
    UsageShare.t0,
    func.coalesce(UsageShare.target_id, 0),
    func.coalesce(UsageShare.model_id, 0),
    func.coalesce(UsageShare.tenant, ""),
    UsageShare.bucket,
    UsageShare.method,
    UsageShare.weight_basis,
    unique=True,
)
Index(
    "uq_usage_hourly_natural_key",
    UsageHourly.device_id,
    UsageHourly.hour,
    func.coalesce(UsageHourly.target_id, 0),
    func.coalesce(UsageHourly.model_id, 0),
    func.coalesce(UsageHourly.tenant, ""),
    UsageHourly.bucket,
    UsageHourly.method,
    unique=True,
)


class RequestRow(Base):
    """One model call with the energy attributed to it.

    Calls made inside one ``infermeter.request(...)`` share its request_id, so
    the cost of a request is the sum of its calls. Natural key: (target,
    model, t0), one call's identity.
    """

    __tablename__ = "requests"
    __table_args__ = (
        UniqueConstraint("target_id", "model_id", "t0"),
        Index("ix_requests_model_id_t0", "model_id", "t0"),
        Index("ix_requests_tenant_t0", "tenant", "t0"),
        Index("ix_requests_t0", "t0"),
        Index("ix_requests_request_id", "request_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    request_id: Mapped[str | None] = mapped_column(String(255))
    t0: Mapped[float] = mapped_column(Float)
    t1: Mapped[float] = mapped_column(Float)
    items: Mapped[int] = mapped_column(Integer, default=1)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    tenant: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    energy_j: Mapped[float] = mapped_column(Float)
    # The weakest provenance among the devices that contributed (estimated <
    # integrated < measured): a call on a measured GPU with estimated CPU
    # time is an estimate in part.
    method: Mapped[str] = mapped_column(String(16))
    energy_cost: Mapped[float | None] = mapped_column(Float)
    capacity_cost: Mapped[float | None] = mapped_column(Float)
    carbon_g: Mapped[float | None] = mapped_column(Float)
    price_card_id: Mapped[int | None] = mapped_column(ForeignKey("price_cards.id"))


class RecommendationRow(Base):
    __tablename__ = "recommendations"
    __table_args__ = (Index("ix_recommendations_status", "status"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    stable_id: Mapped[str] = mapped_column(String(32), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(255))
    evidence: Mapped[dict[str, object]] = mapped_column(JSON)
    savings_usd_month: Mapped[float] = mapped_column(Float)
    savings_usd_low: Mapped[float] = mapped_column(Float)
    savings_usd_high: Mapped[float] = mapped_column(Float)
    savings_kwh_month: Mapped[float] = mapped_column(Float)
    savings_kgco2e_month: Mapped[float] = mapped_column(Float)
    confidence: Mapped[str] = mapped_column(String(8))
    confidence_reason: Mapped[str] = mapped_column(Text)
    how_to_apply: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="open")
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)


class AgentState(Base):
    """Small facts the agent keeps across restarts (span drop counts, last rollup)."""

    __tablename__ = "agent_state"
    __table_args__ = (UniqueConstraint("host_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[str] = mapped_column(Text)


class RequestHourly(Base):
    """Hourly rollup of model calls into requests, with a histogram of cost per request.

    Three grains share the table (``grain``): ``model`` rows are per host x
    model x tenant, ``target`` rows per host x target x tenant, ``host`` rows
    per host x tenant. A request calling two models counts once in each model's
    row but once only in its target's and its host's rows, so every grouping
    of the report counts requests without counting one twice. Filled by
    infermeter.store.request_rollup; ``cost_hist`` is documented there.
    """

    __tablename__ = "request_hourly"
    __table_args__ = (Index("ix_request_hourly_grain_hour", "grain", "hour"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    hour: Mapped[float] = mapped_column(Float)
    grain: Mapped[str] = mapped_column(String(8))  # model | target | host
    target_id: Mapped[int | None] = mapped_column(ForeignKey("targets.id", ondelete="CASCADE"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    tenant: Mapped[str | None] = mapped_column(String(255))
    requests: Mapped[int] = mapped_column(BigInteger)
    calls: Mapped[int] = mapped_column(BigInteger)
    items: Mapped[int] = mapped_column(BigInteger)
    tokens_in: Mapped[int] = mapped_column(BigInteger)
    tokens_out: Mapped[int] = mapped_column(BigInteger)
    energy_j: Mapped[float] = mapped_column(Float)
    energy_cost: Mapped[float | None] = mapped_column(Float)  # NULL: a call was unpriced
    capacity_cost: Mapped[float | None] = mapped_column(Float)
    carbon_g: Mapped[float | None] = mapped_column(Float)
    unpriced_requests: Mapped[int] = mapped_column(BigInteger)
    cost_hist: Mapped[dict[str, int]] = mapped_column(JSON)


class DeviceHourly(Base):
    """Hourly rollup of device_windows: how busy each device was, for utilisation."""

    __tablename__ = "device_hourly"
    __table_args__ = (
        UniqueConstraint("device_id", "hour"),
        Index("ix_device_hourly_hour", "hour"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    hour: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    busy_seconds: Mapped[float] = mapped_column(Float)  # sum of busy_fraction x window length
    busy_known_seconds: Mapped[float] = mapped_column(Float)  # windows whose busy is known
    energy_j: Mapped[float] = mapped_column(Float)
    memory_peak_bytes: Mapped[int | None] = mapped_column(BigInteger)


class UsageBasisHourly(Base):
    """Hourly energy of usage_shares per weight basis (usage_hourly keeps the method only).

    Says how each group's energy was split among processes (SM utilisation,
    GPU memory, equal parts, CPU seconds), after the raw shares are pruned.
    """

    __tablename__ = "usage_basis_hourly"
    __table_args__ = (Index("ix_usage_basis_hourly_hour", "hour"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    hour: Mapped[float] = mapped_column(Float)
    target_id: Mapped[int | None] = mapped_column(ForeignKey("targets.id", ondelete="SET NULL"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    tenant: Mapped[str | None] = mapped_column(String(255))
    bucket: Mapped[str] = mapped_column(String(16))
    weight_basis: Mapped[str] = mapped_column(String(32))
    energy_j: Mapped[float] = mapped_column(Float)


Index(
    "uq_request_hourly_natural_key",
    RequestHourly.host_id,
    RequestHourly.hour,
    RequestHourly.grain,
    func.coalesce(RequestHourly.target_id, 0),
    func.coalesce(RequestHourly.model_id, 0),
    func.coalesce(RequestHourly.tenant, ""),
    unique=True,
)
Index(
    "uq_usage_basis_hourly_natural_key",
    UsageBasisHourly.device_id,
    UsageBasisHourly.hour,
    func.coalesce(UsageBasisHourly.target_id, 0),
    func.coalesce(UsageBasisHourly.model_id, 0),
    func.coalesce(UsageBasisHourly.tenant, ""),
    UsageBasisHourly.bucket,
    UsageBasisHourly.weight_basis,
    unique=True,
)

"""The SQL schema, as SQLAlchemy Core tables.

Alembic migrations create it (never ``create_all``); a test checks that the
migrations and these tables agree. Times are UTC seconds since the epoch
(``t0``/``t1``, ``hour``) so SQLite and PostgreSQL compare them alike.
Natural keys that contain a nullable column ("no target", "no model") are
unique indexes over ``coalesce(column, 0)`` or ``coalesce(column, '')``,
because both databases treat NULLs as distinct in a plain unique constraint
and a retried flush would otherwise count twice.

Core only: the report, ``sql`` and ``export`` read these tables without
loading the ORM (a tenth of a second of every such command).
infermeter.store.models maps ORM classes onto the same tables for the code
that writes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


hosts = Table(
    "hosts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), unique=True, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("uid", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("name", String(255), nullable=False),
    Column("index", Integer, default=0, nullable=False),
    Column("parent_uid", String(255)),
    Column("memory_total_bytes", BigInteger),
    Column("power_limit_w", Float),
    Column("cores", Integer),
    Column("compute_capability", String(8)),  # "9.0"
    # Learned from quiet windows and kept across restarts (attribution step 1-2).
    Column("idle_power_w", Float),
    Column("keepwarm_power_w", Float),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    UniqueConstraint("host_id", "uid"),
)

targets = Table(
    "targets",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("start_time", Float, nullable=False),
    Column("framework", String(32), nullable=False),
    Column("cmdline", Text, default="", nullable=False),
    Column("labels", JSON, default=dict, nullable=False),
    Column("how_found", String(16), default="runtime", nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    UniqueConstraint("host_id", "pid", "start_time"),
)

models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), unique=True, nullable=False),
    Column("framework", String(32)),
    Column("dtype", String(32)),
    Column("parameters", BigInteger),
    Column("first_seen", Float, nullable=False),
)

price_cards = Table(
    "price_cards",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", String(64), unique=True, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Energy of one device over one flush interval, in one bucket.
#
# Natural key: (device, t0, target, model, tenant, bucket, method,
# weight_basis): a flush that saw a meter degrade from measured to
# integrated keeps both rows. Costs are NULL when unpriced, never 0.
usage_shares = Table(
    "usage_shares",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("t0", Float, nullable=False),
    Column("t1", Float, nullable=False),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="SET NULL")),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="SET NULL")),
    Column("tenant", String(255)),
    Column("bucket", String(16), nullable=False),
    Column("method", String(16), nullable=False),
    Column("weight_basis", String(32), default="none", nullable=False),
    Column("energy_j", Float, nullable=False),
    Column("energy_cost", Float),
    Column("capacity_cost", Float),
    Column("carbon_g", Float),
    Column("price_card_id", Integer, ForeignKey("price_cards.id")),
    # Where in [t0, t1) the energy was drawn (records.Share); NULL: all of it.
    Column("drawn_t0", Float),
    Column("drawn_t1", Float),
    Index("ix_usage_shares_t0", "t0"),
    Index("ix_usage_shares_model_id_t0", "model_id", "t0"),
    Index("ix_usage_shares_target_id_t0", "target_id", "t0"),
    Index("ix_usage_shares_tenant_t0", "tenant", "t0"),
)

# What a device did in one flush window: energy, how busy, memory held.
#
# The recommenders read utilisation and memory from here (right-size,
# power cap); ``top`` reads the latest power; the report reads ``profile``
# to take the part of a window its range cuts (report/edges.py). Natural
# key: (device, t0).
device_windows = Table(
    "device_windows",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("t0", Float, nullable=False),
    Column("t1", Float, nullable=False),
    Column("energy_j", Float, nullable=False),
    Column("method", String(16), nullable=False),  # the weakest of the window's readings
    Column("busy_fraction", Float),  # time-weighted mean, 0..1
    Column("memory_used_bytes", BigInteger),  # peak in the window
    # How the energy was spread inside the window, compact JSON (store.window_profile);
    # NULL: nothing finer than the window is known.
    Column("profile", Text),
    UniqueConstraint("device_id", "t0"),
    Index("ix_device_windows_t0", "t0"),
)

# Hourly rollup of usage_shares, kept after raw shares are pruned.
usage_hourly = Table(
    "usage_hourly",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("hour", Float, nullable=False),  # start of the UTC hour
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="SET NULL")),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="SET NULL")),
    Column("tenant", String(255)),
    Column("bucket", String(16), nullable=False),
    Column("method", String(16), nullable=False),
    Column("energy_j", Float, nullable=False),
    Column("energy_cost", Float),
    Column("capacity_cost", Float),
    Column("carbon_g", Float),
    Column("seconds", Float, default=0.0, nullable=False),
    Index("ix_usage_hourly_hour", "hour"),
    Index("ix_usage_hourly_model_id_hour", "model_id", "hour"),
    Index("ix_usage_hourly_tenant_hour", "tenant", "hour"),
)

# One model call with the energy attributed to it.
#
# Calls made inside one ``infermeter.request(...)`` share its request_id, so
# the cost of a request is the sum of its calls. Natural key: (target,
# model, t0, seq), one call's identity; ``seq`` numbers calls of one process
# and model that started at the same instant (a coarse clock), which would
# otherwise merge into one.
requests = Table(
    "requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="CASCADE"), nullable=False),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
    Column("request_id", String(255)),
    Column("t0", Float, nullable=False),
    Column("t1", Float, nullable=False),
    Column("items", Integer, default=1, nullable=False),
    Column("tokens_in", Integer),
    Column("tokens_out", Integer),
    Column("tenant", String(255)),
    Column("tags", JSON, default=dict, nullable=False),
    Column("energy_j", Float, nullable=False),
    # The weakest provenance among the devices that contributed (estimated <
    # integrated < measured): a call on a measured GPU with estimated CPU
    # time is an estimate in part.
    Column("method", String(16), nullable=False),
    Column("energy_cost", Float),
    Column("capacity_cost", Float),
    Column("carbon_g", Float),
    Column("price_card_id", Integer, ForeignKey("price_cards.id")),
    Column("seq", Integer, nullable=False, default=0, server_default="0"),
    UniqueConstraint("target_id", "model_id", "t0", "seq"),
    Index("ix_requests_model_id_t0", "model_id", "t0"),
    Index("ix_requests_tenant_t0", "tenant", "t0"),
    Index("ix_requests_t0", "t0"),
    Index("ix_requests_request_id", "request_id"),
)

recommendations = Table(
    "recommendations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("stable_id", String(32), unique=True, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject_kind", String(16), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("evidence", JSON, nullable=False),
    Column("savings_usd_month", Float, nullable=False),
    Column("savings_usd_low", Float, nullable=False),
    Column("savings_usd_high", Float, nullable=False),
    Column("savings_kwh_month", Float, nullable=False),
    Column("savings_kgco2e_month", Float, nullable=False),
    Column("confidence", String(8), nullable=False),
    Column("confidence_reason", Text, nullable=False),
    Column("how_to_apply", Text, nullable=False),
    Column("status", String(16), default="open", nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Index("ix_recommendations_status", "status"),
)

# Small facts the agent keeps across restarts (span drop counts, last rollup).
agent_state = Table(
    "agent_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("key", String(64), nullable=False),
    Column("value", Text, nullable=False),
    UniqueConstraint("host_id", "key"),
)


# What the store or the agent refused, with why: a row the database would not
# take, a span out of range, an hour the rollup could not sum. One bad input
# is set aside here instead of costing the rest of its batch.
# The learned energy of one call class per host (attribute/energy_model.py),
# replaced at every flush that refits it.
call_energy_models = Table(
    "call_energy_models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("model", String(255), nullable=False),
    Column("dtype", String(32), nullable=False),  # "" when the spans did not say
    Column("device_kind", String(32), nullable=False),
    Column("j_per_call", Float, nullable=False),
    Column("j_per_item", Float, nullable=False),
    Column("j_per_prefill_token", Float, nullable=False),
    Column("j_per_decode_token", Float, nullable=False),
    Column("windows", Integer, nullable=False),  # intervals this class was learned from
    Column("r2", Float),  # of the whole fit; None with too few intervals
    Column("fit_windows", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("host_id", "model", "dtype", "device_kind"),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE")),
    Column("at", Float, nullable=False),
    Column("source", String(32), nullable=False),  # share | call | span | rollup | ...
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),  # the refused item, as JSON (ASCII)
    Index("ix_quarantine_at", "at"),
)


def _request_rollup_columns(period: str) -> list[Column[Any]]:
    """The columns request_hourly and request_daily share; ``period`` names the time column."""
    return [
        Column("id", Integer, primary_key=True),
        Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
        Column(period, Float, nullable=False),
        Column("grain", String(8), nullable=False),  # model | target | host
        Column("target_id", Integer, ForeignKey("targets.id", ondelete="CASCADE")),
        Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE")),
        Column("tenant", String(255)),
        Column("requests", BigInteger, nullable=False),
        Column("calls", BigInteger, nullable=False),
        Column("items", BigInteger, nullable=False),
        Column("tokens_in", BigInteger, nullable=False),
        Column("tokens_out", BigInteger, nullable=False),
        Column("energy_j", Float, nullable=False),
        Column("energy_cost", Float),  # NULL: a call was unpriced
        Column("capacity_cost", Float),
        Column("carbon_g", Float),
        Column("unpriced_requests", BigInteger, nullable=False),
        Column("cost_hist", JSON, nullable=False),
    ]


# Hourly rollup of model calls into requests, with a histogram of cost per request.
#
# Three grains share the table (``grain``): ``model`` rows are per host x
# model x tenant, ``target`` rows per host x target x tenant, ``host`` rows
# per host x tenant. A request calling two models counts once in each model's
# row but once only in its target's and its host's rows, so every grouping
# of the report counts requests without counting one twice. Filled by
# infermeter.store.request_rollup; ``cost_hist`` is documented there.
request_hourly = Table(
    "request_hourly",
    metadata,
    *_request_rollup_columns("hour"),
    Index("ix_request_hourly_grain_hour", "grain", "hour"),
)

# request_hourly summed per UTC day, for reports over weeks and months: a
# month is 30 rows per group instead of 720, and the cost histograms merge
# that much faster. A day's row adds up that day's hourly rows (a request
# is still the calls of one hour); the report trusts it only for days that
# end before the ``report_daily_complete_until`` point of its host.
request_daily = Table(
    "request_daily",
    metadata,
    *_request_rollup_columns("day"),
    Index("ix_request_daily_grain_day", "grain", "day"),
)

# Hourly rollup of device_windows: how busy each device was, for utilisation.
device_hourly = Table(
    "device_hourly",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("hour", Float, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("busy_seconds", Float, nullable=False),  # sum of busy_fraction x window length
    Column("busy_known_seconds", Float, nullable=False),  # windows whose busy is known
    Column("energy_j", Float, nullable=False),
    Column("memory_peak_bytes", BigInteger),
    UniqueConstraint("device_id", "hour"),
    Index("ix_device_hourly_hour", "hour"),
)

# Hourly energy of usage_shares per weight basis (usage_hourly keeps the method only).
#
# Says how each group's energy was split among processes (SM utilisation,
# GPU memory, equal parts, CPU seconds), after the raw shares are pruned.
usage_basis_hourly = Table(
    "usage_basis_hourly",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, ForeignKey("hosts.id", ondelete="CASCADE"), nullable=False),
    Column("device_id", Integer, ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("hour", Float, nullable=False),
    Column("target_id", Integer, ForeignKey("targets.id", ondelete="SET NULL")),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="SET NULL")),
    Column("tenant", String(255)),
    Column("bucket", String(16), nullable=False),
    Column("weight_basis", String(32), nullable=False),
    Column("energy_j", Float, nullable=False),
    Index("ix_usage_basis_hourly_hour", "hour"),
)
Index(
    "uq_usage_shares_natural_key",
    usage_shares.c.device_id,
    usage_shares.c.t0,
    func.coalesce(usage_shares.c.target_id, 0),
    func.coalesce(usage_shares.c.model_id, 0),
    func.coalesce(usage_shares.c.tenant, ""),
    usage_shares.c.bucket,
    usage_shares.c.method,
    usage_shares.c.weight_basis,
    unique=True,
)
Index(
    "uq_usage_hourly_natural_key",
    usage_hourly.c.device_id,
    usage_hourly.c.hour,
    func.coalesce(usage_hourly.c.target_id, 0),
    func.coalesce(usage_hourly.c.model_id, 0),
    func.coalesce(usage_hourly.c.tenant, ""),
    usage_hourly.c.bucket,
    usage_hourly.c.method,
    unique=True,
)
Index(
    "uq_request_hourly_natural_key",
    request_hourly.c.host_id,
    request_hourly.c.hour,
    request_hourly.c.grain,
    func.coalesce(request_hourly.c.target_id, 0),
    func.coalesce(request_hourly.c.model_id, 0),
    func.coalesce(request_hourly.c.tenant, ""),
    unique=True,
)
Index(
    "uq_request_daily_natural_key",
    request_daily.c.host_id,
    request_daily.c.day,
    request_daily.c.grain,
    func.coalesce(request_daily.c.target_id, 0),
    func.coalesce(request_daily.c.model_id, 0),
    func.coalesce(request_daily.c.tenant, ""),
    unique=True,
)
Index(
    "uq_usage_basis_hourly_natural_key",
    usage_basis_hourly.c.device_id,
    usage_basis_hourly.c.hour,
    func.coalesce(usage_basis_hourly.c.target_id, 0),
    func.coalesce(usage_basis_hourly.c.model_id, 0),
    func.coalesce(usage_basis_hourly.c.tenant, ""),
    usage_basis_hourly.c.bucket,
    usage_basis_hourly.c.weight_basis,
    unique=True,
)

"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 07:26:29.872461
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("framework", sa.String(length=32), nullable=True),
        sa.Column("dtype", sa.String(length=32), nullable=True),
        sa.Column("parameters", sa.BigInteger(), nullable=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    op.create_table(
        "price_cards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_cards")),
        sa.UniqueConstraint("version", name=op.f("uq_price_cards_version")),
    )
    op.create_table(
        "recommendations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("stable_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("savings_usd_month", sa.Float(), nullable=False),
        sa.Column("savings_usd_low", sa.Float(), nullable=False),
        sa.Column("savings_usd_high", sa.Float(), nullable=False),
        sa.Column("savings_kwh_month", sa.Float(), nullable=False),
        sa.Column("savings_kgco2e_month", sa.Float(), nullable=False),
        sa.Column("confidence", sa.String(length=8), nullable=False),
        sa.Column("confidence_reason", sa.Text(), nullable=False),
        sa.Column("how_to_apply", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recommendations")),
        sa.UniqueConstraint("stable_id", name=op.f("uq_recommendations_stable_id")),
    )
    with op.batch_alter_table("recommendations", schema=None) as batch_op:
        batch_op.create_index("ix_recommendations_status", ["status"], unique=False)

    op.create_table(
        "agent_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_agent_state_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_state")),
        sa.UniqueConstraint("host_id", "key", name=op.f("uq_agent_state_host_id_key")),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("parent_uid", sa.String(length=255), nullable=True),
        sa.Column("memory_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("power_limit_w", sa.Float(), nullable=True),
        sa.Column("cores", sa.Integer(), nullable=True),
        sa.Column("compute_capability", sa.String(length=8), nullable=True),
        sa.Column("idle_power_w", sa.Float(), nullable=True),
        sa.Column("keepwarm_power_w", sa.Float(), nullable=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_devices_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("host_id", "uid", name=op.f("uq_devices_host_id_uid")),
    )
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("start_time", sa.Float(), nullable=False),
        sa.Column("framework", sa.String(length=32), nullable=False),
        sa.Column("cmdline", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("how_found", sa.String(length=16), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_targets_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_targets")),
        sa.UniqueConstraint(
            "host_id", "pid", "start_time", name=op.f("uq_targets_host_id_pid_start_time")
        ),
    )
    op.create_table(
        "requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=True),
        sa.Column("t0", sa.Float(), nullable=False),
        sa.Column("t1", sa.Float(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("energy_cost", sa.Float(), nullable=True),
        sa.Column("capacity_cost", sa.Float(), nullable=True),
        sa.Column("carbon_g", sa.Float(), nullable=True),
        sa.Column("price_card_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_requests_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["price_card_id"],
            ["price_cards.id"],
            name=op.f("fk_requests_price_card_id_price_cards"),
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["targets.id"],
            name=op.f("fk_requests_target_id_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
        sa.UniqueConstraint(
            "target_id", "model_id", "t0", name=op.f("uq_requests_target_id_model_id_t0")
        ),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index("ix_requests_model_id_t0", ["model_id", "t0"], unique=False)
        batch_op.create_index("ix_requests_request_id", ["request_id"], unique=False)
        batch_op.create_index("ix_requests_t0", ["t0"], unique=False)
        batch_op.create_index("ix_requests_tenant_t0", ["tenant", "t0"], unique=False)

    op.create_table(
        "device_windows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("t0", sa.Float(), nullable=False),
        sa.Column("t1", sa.Float(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("busy_fraction", sa.Float(), nullable=True),
        sa.Column("memory_used_bytes", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_windows_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_device_windows_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_windows")),
        sa.UniqueConstraint("device_id", "t0", name=op.f("uq_device_windows_device_id_t0")),
    )
    with op.batch_alter_table("device_windows", schema=None) as batch_op:
        batch_op.create_index("ix_device_windows_t0", ["t0"], unique=False)

    op.create_table(
        "usage_hourly",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.Float(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("energy_cost", sa.Float(), nullable=True),
        sa.Column("capacity_cost", sa.Float(), nullable=True),
        sa.Column("carbon_g", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_usage_hourly_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_usage_hourly_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_usage_hourly_model_id_models"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["targets.id"],
            name=op.f("fk_usage_hourly_target_id_targets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_hourly")),
    )
    with op.batch_alter_table("usage_hourly", schema=None) as batch_op:
        batch_op.create_index("ix_usage_hourly_hour", ["hour"], unique=False)
        batch_op.create_index("ix_usage_hourly_model_id_hour", ["model_id", "hour"], unique=False)
        batch_op.create_index("ix_usage_hourly_tenant_hour", ["tenant", "hour"], unique=False)
    op.create_index(
        "uq_usage_hourly_natural_key",
        "usage_hourly",
        [
            "device_id",
            "hour",
            sa.text("coalesce(target_id, 0)"),
            sa.text("coalesce(model_id, 0)"),
            sa.text("coalesce(tenant, '')"),
            "bucket",
            "method",
        ],
        unique=True,
    )

    op.create_table(
        "usage_shares",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("t0", sa.Float(), nullable=False),
        sa.Column("t1", sa.Float(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("weight_basis", sa.String(length=32), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("energy_cost", sa.Float(), nullable=True),
        sa.Column("capacity_cost", sa.Float(), nullable=True),
        sa.Column("carbon_g", sa.Float(), nullable=True),
        sa.Column("price_card_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_usage_shares_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_usage_shares_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_usage_shares_model_id_models"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["price_card_id"],
            ["price_cards.id"],
            name=op.f("fk_usage_shares_price_card_id_price_cards"),
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["targets.id"],
            name=op.f("fk_usage_shares_target_id_targets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_shares")),
    )
    with op.batch_alter_table("usage_shares", schema=None) as batch_op:
        batch_op.create_index("ix_usage_shares_model_id_t0", ["model_id", "t0"], unique=False)
        batch_op.create_index("ix_usage_shares_t0", ["t0"], unique=False)
        batch_op.create_index("ix_usage_shares_target_id_t0", ["target_id", "t0"], unique=False)
        batch_op.create_index("ix_usage_shares_tenant_t0", ["tenant", "t0"], unique=False)
    # Natural keys over nullable columns: NULLs are distinct in a plain unique
    # constraint on both databases, so a retried flush would count twice.
    op.create_index(
        "uq_usage_shares_natural_key",
        "usage_shares",
        [
            "device_id",
            "t0",
            sa.text("coalesce(target_id, 0)"),
            sa.text("coalesce(model_id, 0)"),
            sa.text("coalesce(tenant, '')"),
            "bucket",
            "method",
            "weight_basis",
        ],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_usage_shares_natural_key", table_name="usage_shares")
    with op.batch_alter_table("usage_shares", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_shares_tenant_t0")
        batch_op.drop_index("ix_usage_shares_target_id_t0")
        batch_op.drop_index("ix_usage_shares_t0")
        batch_op.drop_index("ix_usage_shares_model_id_t0")

    op.drop_table("usage_shares")
    op.drop_index("uq_usage_hourly_natural_key", table_name="usage_hourly")
    with op.batch_alter_table("usage_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_hourly_tenant_hour")
        batch_op.drop_index("ix_usage_hourly_model_id_hour")
        batch_op.drop_index("ix_usage_hourly_hour")

    op.drop_table("usage_hourly")
    with op.batch_alter_table("device_windows", schema=None) as batch_op:
        batch_op.drop_index("ix_device_windows_t0")

    op.drop_table("device_windows")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_request_id")
        batch_op.drop_index("ix_requests_tenant_t0")
        batch_op.drop_index("ix_requests_t0")
        batch_op.drop_index("ix_requests_model_id_t0")

    op.drop_table("requests")
    op.drop_table("targets")
    op.drop_table("devices")
    op.drop_table("agent_state")
    with op.batch_alter_table("recommendations", schema=None) as batch_op:
        batch_op.drop_index("ix_recommendations_status")

    op.drop_table("recommendations")
    op.drop_table("price_cards")
    op.drop_table("models")
    op.drop_table("hosts")

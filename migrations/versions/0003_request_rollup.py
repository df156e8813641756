"""request rollup: request_hourly, device_hourly, usage_basis_hourly

The report reads whole hours from these rollups and raw rows only for the
partial hours at the edges of its range, so a report over millions of
requests answers in well under a second. infermeter.store.request_rollup
fills them; the agent's rollup job calls it.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_hourly",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("busy_seconds", sa.Float(), nullable=False),
        sa.Column("busy_known_seconds", sa.Float(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("memory_peak_bytes", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_hourly_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_device_hourly_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_hourly")),
        sa.UniqueConstraint("device_id", "hour", name=op.f("uq_device_hourly_device_id_hour")),
    )
    with op.batch_alter_table("device_hourly", schema=None) as batch_op:
        batch_op.create_index("ix_device_hourly_hour", ["hour"], unique=False)

    op.create_table(
        "request_hourly",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.Float(), nullable=False),
        sa.Column("grain", sa.String(length=8), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
        sa.Column("tokens_in", sa.BigInteger(), nullable=False),
        sa.Column("tokens_out", sa.BigInteger(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("energy_cost", sa.Float(), nullable=True),
        sa.Column("capacity_cost", sa.Float(), nullable=True),
        sa.Column("carbon_g", sa.Float(), nullable=True),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("cost_hist", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_request_hourly_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_request_hourly_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["targets.id"],
            name=op.f("fk_request_hourly_target_id_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_hourly")),
    )
    with op.batch_alter_table("request_hourly", schema=None) as batch_op:
        batch_op.create_index("ix_request_hourly_grain_hour", ["grain", "hour"], unique=False)
    op.create_index(
        "uq_request_hourly_natural_key",
        "request_hourly",
        [
            "host_id",
            "hour",
            "grain",
            sa.text("coalesce(target_id, 0)"),
            sa.text("coalesce(model_id, 0)"),
            sa.text("coalesce(tenant, '')"),
        ],
        unique=True,
    )

    op.create_table(
        "usage_basis_hourly",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("hour", sa.Float(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("tenant", sa.String(length=255), nullable=True),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("weight_basis", sa.String(length=32), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_usage_basis_hourly_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_usage_basis_hourly_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_usage_basis_hourly_model_id_models"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["targets.id"],
            name=op.f("fk_usage_basis_hourly_target_id_targets"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_basis_hourly")),
    )
    with op.batch_alter_table("usage_basis_hourly", schema=None) as batch_op:
        batch_op.create_index("ix_usage_basis_hourly_hour", ["hour"], unique=False)
    op.create_index(
        "uq_usage_basis_hourly_natural_key",
        "usage_basis_hourly",
        [
            "device_id",
            "hour",
            sa.text("coalesce(target_id, 0)"),
            sa.text("coalesce(model_id, 0)"),
            sa.text("coalesce(tenant, '')"),
            "bucket",
            "weight_basis",
        ],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_usage_basis_hourly_natural_key", table_name="usage_basis_hourly")
    op.drop_index("uq_request_hourly_natural_key", table_name="request_hourly")
    with op.batch_alter_table("usage_basis_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_basis_hourly_hour")

    op.drop_table("usage_basis_hourly")
    with op.batch_alter_table("request_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_request_hourly_grain_hour")

    op.drop_table("request_hourly")
    with op.batch_alter_table("device_hourly", schema=None) as batch_op:
        batch_op.drop_index("ix_device_hourly_hour")

    op.drop_table("device_hourly")

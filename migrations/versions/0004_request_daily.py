"""request rollup per day: request_daily

request_hourly summed per UTC day, so that a report over weeks or a month
reads a row per group and day rather than per hour. The agent's rollup job
fills it; on a store upgraded from 0003 it backfills every day on its first
run, and until then the report reads the hourly rows, so nothing is
counted wrong in between.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "request_daily",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Float(), nullable=False),
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
            name=op.f("fk_request_daily_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_request_daily_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["target_id"],
            ["targets.id"],
            name=op.f("fk_request_daily_target_id_targets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_daily")),
    )
    with op.batch_alter_table("request_daily", schema=None) as batch_op:
        batch_op.create_index("ix_request_daily_grain_day", ["grain", "day"], unique=False)
    op.create_index(
        "uq_request_daily_natural_key",
        "request_daily",
        [
            "host_id",
            "day",
            "grain",
            sa.text("coalesce(target_id, 0)"),
            sa.text("coalesce(model_id, 0)"),
            sa.text("coalesce(tenant, '')"),
        ],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_request_daily_natural_key", table_name="request_daily")
    with op.batch_alter_table("request_daily", schema=None) as batch_op:
        batch_op.drop_index("ix_request_daily_grain_day")
    op.drop_table("request_daily")

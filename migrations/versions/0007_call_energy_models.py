"""call_energy_models: the learned energy of one call, per host and call class

The agent splits shared intervals and a process's calls by their predicted
energy (attribute/energy_model.py); the coefficients it learned are kept
here, with their fit quality, for ``infermeter model-energy`` and so that a
restarted agent weighs calls from its first flush.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "call_energy_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("dtype", sa.String(length=32), nullable=False),
        sa.Column("device_kind", sa.String(length=32), nullable=False),
        sa.Column("j_per_call", sa.Float(), nullable=False),
        sa.Column("j_per_item", sa.Float(), nullable=False),
        sa.Column("j_per_prefill_token", sa.Float(), nullable=False),
        sa.Column("j_per_decode_token", sa.Float(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("r2", sa.Float(), nullable=True),
        sa.Column("fit_windows", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_call_energy_models_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_energy_models")),
        sa.UniqueConstraint(
            "host_id",
            "model",
            "dtype",
            "device_kind",
            name=op.f("uq_call_energy_models_host_id_model_dtype_device_kind"),
        ),
    )


def downgrade() -> None:
    op.drop_table("call_energy_models")

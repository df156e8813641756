"""quarantine, and a sequence number in a call's natural key

``quarantine`` keeps what the store or the agent refused (a row the
database would not take, a span out of range, an hour the rollup could not
sum) with the reason, so that one bad input is set aside rather than
costing the rest of its batch, and nothing is lost without a trace.

``requests.seq`` joins the natural key (target, model, t0): two calls of one
process and model that start at the same instant (a coarse clock, a
replayed trace) were merged into one; the agent now numbers them.

SQLite rebuilds ``requests`` in batch mode, and a table that views read
cannot be renamed there, so the chargeback views are dropped around it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from infermeter.export.chargeback import VIEWS_0002, create_views, drop_views

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild_requests(seq: bool) -> None:
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:
        drop_views(bind, VIEWS_0002)
    with op.batch_alter_table("requests") as batch:
        if seq:
            batch.add_column(sa.Column("seq", sa.Integer(), server_default="0", nullable=False))
            batch.drop_constraint("uq_requests_target_id_model_id_t0", type_="unique")
            batch.create_unique_constraint(
                "uq_requests_target_id_model_id_t0_seq", ["target_id", "model_id", "t0", "seq"]
            )
        else:
            batch.drop_constraint("uq_requests_target_id_model_id_t0_seq", type_="unique")
            batch.drop_column("seq")
            batch.create_unique_constraint(
                "uq_requests_target_id_model_id_t0", ["target_id", "model_id", "t0"]
            )
    if sqlite:
        create_views(bind, VIEWS_0002)


def upgrade() -> None:
    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"],
            ["hosts.id"],
            name=op.f("fk_quarantine_host_id_hosts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
    )
    op.create_index(op.f("ix_quarantine_at"), "quarantine", ["at"], unique=False)
    _rebuild_requests(seq=True)


def downgrade() -> None:
    # Calls numbered past 0 would collide on the old key: keep the first of each.
    op.execute("DELETE FROM requests WHERE seq > 0")
    _rebuild_requests(seq=False)
    op.drop_index(op.f("ix_quarantine_at"), table_name="quarantine")
    op.drop_table("quarantine")

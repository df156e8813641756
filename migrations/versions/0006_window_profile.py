"""device_windows.profile and usage_shares.drawn_t0/drawn_t1: placing energy inside a window

A report whose range starts or ends inside a flush window takes the part
of the window's shares that fell inside the range (report/edges.py):

- ``device_windows.profile`` (compact JSON, see
  infermeter.store.window_profile) says how the window's energy was spread
  in time, so the part inside is right where the power climbed or fell;
- ``usage_shares.drawn_t0``/``drawn_t1`` say where in its window a share's
  energy was drawn (a process that stopped, an ``other`` draw that began,
  inside the window).

NULL for rows written before, and where nothing finer is known: those are
spread over their whole window. Adding nullable columns rebuilds nothing.
Downgrading drops usage_shares' columns in place (ALTER TABLE ... DROP
COLUMN, SQLite 3.35 or later): a batch rebuild would have to drop the
chargeback views that read the table and could not carry its expression
index (the natural key) over.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("device_windows") as batch:
        batch.add_column(sa.Column("profile", sa.Text(), nullable=True))
    with op.batch_alter_table("usage_shares") as batch:
        batch.add_column(sa.Column("drawn_t0", sa.Float(), nullable=True))
        batch.add_column(sa.Column("drawn_t1", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_shares", "drawn_t1")
    op.drop_column("usage_shares", "drawn_t0")
    with op.batch_alter_table("device_windows") as batch:
        batch.drop_column("profile")

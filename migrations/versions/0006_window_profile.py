"""device_windows.profile: how each window's energy was spread inside it

A report whose range starts or ends inside a flush window takes the part
of the window's shares that fell inside the range; the profile (compact
JSON, see infermeter.store.window_profile) says how much that is where the
power climbed or fell within the window. NULL for the windows written
before, and for devices whose meter knows nothing finer than the window:
those are spread by time.

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


def downgrade() -> None:
    with op.batch_alter_table("device_windows") as batch:
        batch.drop_column("profile")

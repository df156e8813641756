"""chargeback views

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:00:00.000000

The documented chargeback views (contrib/sql/README.md), in SQL that SQLite
and PostgreSQL both run; only the UTC calendar columns differ by dialect.
Their SQL is the frozen ``VIEWS_0002`` of infermeter.export.chargeback: a changed
view is a new constant and a new migration. Views are not in the ORM
metadata, and Alembic's comparison reads tables only, so they never show up
as a difference between the migrations and the models.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from infermeter.export.chargeback import VIEWS_0002, create_views, drop_views

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_views(op.get_bind(), VIEWS_0002)


def downgrade() -> None:
    drop_views(op.get_bind(), VIEWS_0002)

"""tokens: energy and cost per token per model and tenant

A view, ``v_token_cost`` (contrib/sql/README.md): per UTC day, model and
tenant, the requests' tokens (each request's once, the largest any of its
calls carries: its final counts, infermeter.spans.context), joules per token
and the cost per million input and output tokens. Its SQL is the frozen
``VIEWS_0008`` of infermeter.export.chargeback. No table changes: a step
span's parts are stored as calls (one row per request it served), and a
request's final counts as a call of zero energy.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from infermeter.export.chargeback import VIEWS_0008, create_views, drop_views

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_views(op.get_bind(), VIEWS_0008)


def downgrade() -> None:
    drop_views(op.get_bind(), VIEWS_0008)

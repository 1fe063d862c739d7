"""Peers can be revoked: state, revoked_at and revoke_reason.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.server.store.models import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        # Every peer pinned before this revision is active.
        batch.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="active"))
        batch.add_column(sa.Column("revoked_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("revoke_reason", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("revoke_reason")
        batch.drop_column("revoked_at")
        batch.drop_column("state")

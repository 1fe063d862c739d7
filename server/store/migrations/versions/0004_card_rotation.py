"""Cards rotate over the exchange: a peer's previous card, and which of our cards it holds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.server.store.models import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        batch.add_column(sa.Column("previous_card", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("previous_until", UtcDateTime(), nullable=True))
        # Every peer pinned before this revision holds our first card (sequence 0): no
        # node rotated before it.
        batch.add_column(sa.Column("our_card", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("announcing", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("announcement_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        for column in ("announcement_id", "announcing", "our_card", "previous_until"):
            batch.drop_column(column)
        batch.drop_column("previous_card")

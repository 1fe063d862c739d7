"""Claims on the outbox carry a lease: the replica that holds a message SENT, and until when.

Several replicas of one node share one database (issue 11). A replica that claims a
message names itself in ``claimed_by`` and holds it until ``lease_until``; a
replica that stops cuts off its attempts and queues its own claims again when it
starts, and the claims of one that died are queued again by any other once their
lease has run out. Rows claimed before this revision have neither (NULL): they
are queued again at the next start, as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.server.store.models import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_until", UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")

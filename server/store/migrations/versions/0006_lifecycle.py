"""Acknowledgements and replies: the message each answers, its conversation, and what
the peer last said of an outbound message.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("refers_to", sa.String(36), nullable=True))
        batch.add_column(sa.Column("thread_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("peer_status", sa.String(16), nullable=True))
        # A notice sent to several recipients: one message per recipient, one notice id.
        batch.add_column(sa.Column("notice_id", sa.String(36), nullable=True))
        batch.create_index("ix_messages_notice", ["notice_id"])
        batch.create_index("ix_messages_thread", ["thread_id"])
        batch.create_index("ix_messages_refers_to", ["refers_to"])
        # Listings: flash and urgent first, then the newest, one direction at a time.
        batch.create_index("ix_messages_by_priority", ["direction", "priority", "id"])


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_by_priority")
        batch.drop_index("ix_messages_refers_to")
        batch.drop_index("ix_messages_thread")
        batch.drop_index("ix_messages_notice")
        batch.drop_column("notice_id")
        batch.drop_column("peer_status")
        batch.drop_column("thread_id")
        batch.drop_column("refers_to")

"""The message-id index also holds the direction.

A lookup by direction and message id (a notice's state, its recipients) was planned
by SQLite on an index that begins with the direction alone, scanning every outbound
message for each call: the cost of a send grew with the size of the outbox. With both
columns in one index, the lookup is a single seek.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_messages_message_id", "messages")
    op.create_index("ix_messages_message_id", "messages", ["message_id", "direction"])


def downgrade() -> None:
    op.drop_index("ix_messages_message_id", "messages")
    op.create_index("ix_messages_message_id", "messages", ["message_id"])

"""Notices sealed at rest: content format, wrapped data key, storage key id, summary.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Rows stored before this revision keep their content in clear and are marked
``clear``: a migration cannot see the node's keys, so the node seals them in
the background at its next start (``Node``; ``content-sealed`` in the audit
trail). The columns are added in place: no copy of the table is made.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Columns added in place (no copy of the table, whose rows hold every envelope).
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("content_format", sa.String(16), nullable=False, server_default="clear")
        )
        batch.add_column(sa.Column("data_key", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("storage_key_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("summary", sa.LargeBinary(), nullable=True))
    op.create_index("ix_messages_content_format", "messages", ["content_format"])


def downgrade() -> None:
    # Sealed rows cannot go back to a schema that expects content in clear.
    raise NotImplementedError("content sealed at rest cannot be migrated down")

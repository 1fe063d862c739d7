"""A message's envelope and content move to a row of their own, ``message_bodies``.

A message's row changes state several times in its life (sent, delivered, read,
acknowledged...), and SQLite rewrites a whole row, its overflow pages too, at every
change of any column: settling a 1 MiB notice wrote its 2 MiB of envelope and sealed
content again (52 ms on the benchmark machine, against 0.3 ms for the row without
them). PostgreSQL keeps large values out of line (TOAST) and was not affected; the
schema is the same on both.

Downgrading puts the bytes back into ``messages``, in columns that then allow NULL
(making them NOT NULL again would make SQLite rebuild the table).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "message_bodies",
        sa.Column("message_pk", sa.Integer(), sa.ForeignKey("messages.id"), primary_key=True),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
    )
    op.execute(
        "INSERT INTO message_bodies (message_pk, envelope, content) "
        "SELECT id, envelope, content FROM messages"
    )
    # Plain SQL: SQLite (3.35 and later) and PostgreSQL both drop a column in place.
    op.execute("ALTER TABLE messages DROP COLUMN envelope")
    op.execute("ALTER TABLE messages DROP COLUMN content")


def downgrade() -> None:
    op.add_column("messages", sa.Column("envelope", sa.LargeBinary(), nullable=True))
    op.add_column("messages", sa.Column("content", sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE messages SET "
        "envelope = (SELECT envelope FROM message_bodies WHERE message_pk = messages.id), "
        "content = (SELECT content FROM message_bodies WHERE message_pk = messages.id)"
    )
    op.drop_table("message_bodies")

"""The audit log: each event's canonical entry, and the Merkle tree over them.

Existing events become entries in sequence order, and their tree is built;
both tables are append-only, like the events.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.keys.merkle import MemoryTree, leaf_hash
from liaison.server.store.auditlog import entry_bytes
from liaison.server.store.models import UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_APPEND_ONLY_SQLITE = """
CREATE TRIGGER {table}_{op}_forbidden BEFORE {op} ON {table}
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
"""


def upgrade() -> None:
    entries = op.create_table(
        "audit_entries",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
    )
    nodes = op.create_table(
        "audit_tree",
        sa.Column("level", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
    )
    events = sa.table(
        "audit_events",
        sa.column("seq", sa.Integer()),
        sa.column("at", UtcDateTime()),
        sa.column("event", sa.String()),
        sa.column("actor", sa.String()),
        sa.column("peer", sa.String()),
        sa.column("message_id", sa.String()),
        sa.column("envelope_sha256", sa.String()),
        sa.column("reason", sa.String()),
        sa.column("detail", sa.Text()),
    )
    bind = op.get_bind()
    tree = MemoryTree()
    rows = bind.execute(sa.select(events).order_by(events.c.seq)).mappings()
    for row in rows:
        entry = entry_bytes(**dict(row))
        bind.execute(sa.insert(entries).values(seq=row["seq"], entry=entry))
        for level, index, value in tree.append(leaf_hash(entry)):
            bind.execute(sa.insert(nodes).values(level=level, idx=index, hash=value))
    if bind.dialect.name == "sqlite":
        for table in ("audit_entries", "audit_tree"):
            for statement in ("UPDATE", "DELETE"):
                op.execute(_APPEND_ONLY_SQLITE.format(table=table, op=statement))


def downgrade() -> None:
    op.drop_table("audit_tree")
    op.drop_table("audit_entries")

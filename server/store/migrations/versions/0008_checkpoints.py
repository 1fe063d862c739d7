"""Signed checkpoints of the audit log, peers' cosignatures of them, the peers'
checkpoints this node cosigned as their witness, evidence of a peer's rewritten
history, and the cards of ours that signed checkpoints. All append-only. The leaf level of
the audit tree is no longer stored.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.keys.merkle import leaf_hash
from liaison.server.store.models import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_APPEND_ONLY_SQLITE = """
CREATE TRIGGER {table}_{op}_forbidden BEFORE {op} ON {table}
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
"""
_TABLES = (
    "audit_checkpoints",
    "checkpoint_cosignatures",
    "peer_checkpoints",
    "witness_evidence",
    "own_cards",
)


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.LargeBinary(), nullable=False),
        sa.Column("signed_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "checkpoint_cosignatures",
        sa.Column(
            "size",
            sa.BigInteger(),
            sa.ForeignKey("audit_checkpoints.size"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("peer", sa.String(128), primary_key=True),
        sa.Column("line", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("received_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "peer_checkpoints",
        sa.Column("peer", sa.String(128), primary_key=True),
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.LargeBinary(), nullable=False),
        sa.Column("cosignature", sa.LargeBinary(), nullable=False),
        sa.Column("cosigned_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "witness_evidence",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("peer", sa.String(128), nullable=False, index=True),
        sa.Column("refusal", sa.String(32), nullable=False),
        sa.Column("cosigned_note", sa.LargeBinary(), nullable=False),
        sa.Column("presented_note", sa.LargeBinary(), nullable=False),
        sa.Column("old_size", sa.BigInteger(), nullable=False),
        sa.Column("proof", sa.LargeBinary(), nullable=False),
        sa.Column("detected_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "own_cards",
        sa.Column("sequence", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("signed_card", sa.LargeBinary(), nullable=False),
        sa.Column("card_update", sa.LargeBinary(), nullable=True),
    )
    # Leaf hashes are no longer stored (each is the hash of its entry): one row less for
    # every event appended, and for `audit verify` to read.
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS audit_tree_DELETE_forbidden")
    op.execute("DELETE FROM audit_tree WHERE level = 0")
    if sqlite:
        op.execute(_APPEND_ONLY_SQLITE.format(table="audit_tree", op="DELETE"))
    if sqlite:
        for table in _TABLES:
            for statement in ("UPDATE", "DELETE"):
                op.execute(_APPEND_ONLY_SQLITE.format(table=table, op=statement))


def downgrade() -> None:
    for table in reversed(_TABLES):
        op.drop_table(table)
    # Revision 0007 stores the leaf hashes: put them back.
    bind = op.get_bind()
    entries = sa.table("audit_entries", sa.column("seq", sa.Integer()), sa.column("entry"))
    nodes = sa.table(
        "audit_tree",
        sa.column("level", sa.Integer()),
        sa.column("idx", sa.Integer()),
        sa.column("hash", sa.LargeBinary()),
    )
    rows = bind.execute(sa.select(entries.c.seq, entries.c.entry).order_by(entries.c.seq))
    for seq, entry in rows:
        bind.execute(sa.insert(nodes).values(level=0, idx=seq - 1, hash=leaf_hash(entry)))

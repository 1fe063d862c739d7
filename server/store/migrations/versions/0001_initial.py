"""Initial schema: peers, messages, receipts, append-only audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.server.store.models import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_APPEND_ONLY_SQLITE = """
CREATE TRIGGER audit_events_{op}_forbidden BEFORE {op} ON audit_events
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END
"""


def upgrade() -> None:
    op.create_table(
        "peers",
        sa.Column("agency_id", sa.String(63), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("signed_card", sa.LargeBinary(), nullable=False),
        sa.Column("tls_fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("added_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("sender", sa.String(63), nullable=False),
        sa.Column("recipient", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("category", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("handling", sa.Integer(), nullable=False),
        sa.Column("case_reference", sa.String(100), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("envelope_sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=True),
        sa.Column("failure_reason", sa.String(64), nullable=True),
        sa.UniqueConstraint("sender", "message_id", name="uq_messages_sender_message_id"),
    )
    op.create_index(
        "ix_messages_outbox", "messages", ["direction", "state", "recipient", "next_attempt_at"]
    )
    op.create_index("ix_messages_listing", "messages", ["direction", "id"])
    op.create_index("ix_messages_message_id", "messages", ["message_id"])
    op.create_table(
        "receipts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "message_pk", sa.Integer(), sa.ForeignKey("messages.id"), nullable=False, unique=True
        ),
        sa.Column("signed_receipt", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("received_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=True),
        sa.Column("peer", sa.String(63), nullable=True),
        sa.Column("actor", sa.String(128), nullable=True),
        sa.Column("envelope_sha256", sa.String(64), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_audit_events_message", "audit_events", ["message_id", "seq"])
    # PostgreSQL gets its own trigger with the migration that brings PostgreSQL support.
    if op.get_bind().dialect.name == "sqlite":
        for statement in ("UPDATE", "DELETE"):
            op.execute(_APPEND_ONLY_SQLITE.format(op=statement))


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("receipts")
    op.drop_table("messages")
    op.drop_table("peers")

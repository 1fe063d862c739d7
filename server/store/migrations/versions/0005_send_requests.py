"""Idempotent SendNotice: the key a caller sent, and the message it queued; and an
index to find a peer's latest audit events of a kind (``liaison peers show``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.server.store.models import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_requests",
        sa.Column("actor", sa.String(128), primary_key=True),
        sa.Column("idempotency_key", sa.String(64), primary_key=True),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_audit_events_peer", "audit_events", ["peer", "event", "seq"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_peer", "audit_events")
    op.drop_table("send_requests")

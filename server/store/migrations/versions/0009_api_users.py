"""Named identities of the local API and their client certificates.

An older home registers its admin credential when its node first starts with this
revision (server/home.py), since only the home knows the certificate.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from liaison.server.store.models import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.Column("revoke_reason", sa.String(200), nullable=True),
    )
    op.create_table(
        "api_certificates",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(64), sa.ForeignKey("api_users.name"), nullable=False),
        sa.Column("issued_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_api_certificates_user", "api_certificates", ["user"])


def downgrade() -> None:
    op.drop_index("ix_api_certificates_user", "api_certificates")
    op.drop_table("api_certificates")
    op.drop_table("api_users")

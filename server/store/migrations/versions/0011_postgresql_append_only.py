"""PostgreSQL: the audit log's tables refuse UPDATE, DELETE and TRUNCATE.

On SQLite, triggers made with each table (revisions 0001, 0007, 0008) refuse to
change or remove a row of the audit trail, its Merkle log, the checkpoints and their
cosignatures, the evidence kept of a peer's log and our published cards. This
revision gives PostgreSQL the same rule: one trigger function, a row trigger for
UPDATE and DELETE and a statement trigger for TRUNCATE (which row triggers do not
see) on each of those tables. Nothing changes on SQLite.

The node's database role owns its tables and so could drop a trigger; an agency that
wants the rule beyond the node's reach gives the tables to another role and grants
the node's role only SELECT and INSERT on them (README, "Running in production").

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

APPEND_ONLY_TABLES = (
    "audit_events",
    "audit_entries",
    "audit_tree",
    "audit_checkpoints",
    "checkpoint_cosignatures",
    "peer_checkpoints",
    "witness_evidence",
    "own_cards",
)

_FUNCTION = """
CREATE FUNCTION liaison_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END
$$
"""


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if not _postgresql():
        return
    op.execute(_FUNCTION)
    for table in APPEND_ONLY_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION liaison_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION liaison_append_only()"
        )


def downgrade() -> None:
    if not _postgresql():
        return
    for table in APPEND_ONLY_TABLES:
        op.execute(f"DROP TRIGGER {table}_no_truncate ON {table}")
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute("DROP FUNCTION liaison_append_only()")

"""Write work for received envelopes: store once, receipt once, audit every outcome.

Each function takes a session inside a write transaction, so the group
committer can run many of them in one commit.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.orm import Session

from liaison.server.store import audit
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import Direction, MessageState
from liaison.server.store.plain import MESSAGES, RECEIPTS, plain
from liaison.server.store.records import NoticeRecord


@dataclass(frozen=True)
class StoredReceipt:
    """The receipt already issued for a stored message, and its envelope digest."""

    envelope_sha256: str
    signed_receipt: bytes


# Built once (run for every envelope received, before and after decryption).
_STORED_RECEIPT = (
    select(MESSAGES.c.envelope_sha256, RECEIPTS.c.signed_receipt)
    .join(RECEIPTS, RECEIPTS.c.message_pk == MESSAGES.c.id)
    .where(
        MESSAGES.c.sender == bindparam("sender"),
        MESSAGES.c.message_id == bindparam("message_id"),
    )
)


_INSERT_RECEIPT = insert(RECEIPTS)


def stored_receipt(
    session: Session | Connection, sender: str, message_id: str
) -> StoredReceipt | None:
    """The receipt issued for ``sender``'s ``message_id``, if it is stored (in a write
    transaction, or on a lookup's connection)."""
    connection = plain(session) if isinstance(session, Session) else session
    row = connection.execute(_STORED_RECEIPT, {"sender": sender, "message_id": message_id}).first()
    return None if row is None else StoredReceipt(row[0], row[1])


def accept(
    session: Session,
    record: NoticeRecord,
    *,
    sign_receipt: Callable[[int], bytes],
    received_at: dt.datetime,
) -> StoredReceipt | None:
    """Store ``record`` and its receipt unless the same sender and id are already stored.

    ``sign_receipt(log_index)`` makes the ``SignedReceipt``, given the leaf index of the
    ``received`` event, in this transaction: the receipt names its own log entry.
    Returns ``None`` when it was stored, else the earlier message's receipt
    (a replay that raced past the pre-decryption check).
    """
    earlier = stored_receipt(session, record.sender, record.message_id)
    if earlier is not None:
        return earlier
    connection = plain(session)
    pk = record.insert(connection, Direction.INBOUND, MessageState.RECEIVED, received_at)
    common: dict[str, Any] = {
        "at": received_at,
        "message_id": record.message_id,
        "peer": record.sender,
        "envelope_sha256": record.envelope_sha256,
    }
    received = audit.append(session, AuditKind.RECEIVED, **common)
    connection.execute(
        _INSERT_RECEIPT,
        {
            "message_pk": pk,
            "signed_receipt": sign_receipt(received.seq - 1),
            "status": "accepted",
            "reason": None,
            "received_at": received_at,
        },
    )
    audit.append(session, AuditKind.RECEIPT_ISSUED, **common, detail="accepted")
    return None


def record_duplicate(
    session: Session,
    *,
    sender: str,
    message_id: str,
    envelope_sha256: str,
    at: dt.datetime,
    same_bytes: bool,
) -> int:
    """Audit a replayed message id; returns the event's leaf index."""
    event = audit.append(
        session,
        AuditKind.DUPLICATE,
        at=at,
        message_id=message_id,
        peer=sender,
        envelope_sha256=envelope_sha256,
        detail="same envelope, original receipt returned"
        if same_bytes
        else "other envelope bytes under a stored message id, not stored",
    )
    return event.seq - 1


def record_rejection(
    session: Session,
    *,
    claimed_sender: str,
    authenticated_peer: str,
    message_id: str,
    envelope_sha256: str,
    reason: str,
    detail: str,
    at: dt.datetime,
) -> int:
    """Audit a refused envelope. Nothing else is written. Returns the event's leaf index."""
    event = audit.append(
        session,
        AuditKind.REJECTED,
        at=at,
        message_id=message_id or None,
        peer=authenticated_peer,
        envelope_sha256=envelope_sha256,
        reason=reason,
        detail=f"claimed sender {claimed_sender or '-'}: {detail}",
    )
    return event.seq - 1

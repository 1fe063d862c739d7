"""Write work for received envelopes: store once, receipt once, audit every outcome.

Each function takes a session inside a write transaction, so the group
committer can run many of them in one commit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from liaison.server.store import audit
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import Direction, Message, MessageState, Receipt


@dataclass(frozen=True)
class InboundRecord:
    """A verified, decrypted notice ready to store, with the receipt signed for it."""

    message_id: str
    sender: str
    recipient: str
    content_type: str
    category: int
    priority: int
    handling: int
    case_reference: str
    subject: str
    envelope: bytes
    envelope_sha256: str
    content: bytes
    created_at: dt.datetime
    expires_at: dt.datetime
    received_at: dt.datetime
    signed_receipt: bytes


@dataclass(frozen=True)
class StoredReceipt:
    """The receipt already issued for a stored message, and its envelope digest."""

    envelope_sha256: str
    signed_receipt: bytes


def stored_receipt(session: Session, sender: str, message_id: str) -> StoredReceipt | None:
    row = session.execute(
        select(Message.envelope_sha256, Receipt.signed_receipt)
        .join(Receipt, Receipt.message_pk == Message.id)
        .where(Message.sender == sender, Message.message_id == message_id)
    ).first()
    return None if row is None else StoredReceipt(row[0], row[1])


def accept(session: Session, record: InboundRecord) -> StoredReceipt | None:
    """Store ``record`` unless the same sender and id are already stored.

    Returns ``None`` when it was stored, else the earlier message's receipt
    (a replay that raced past the pre-decryption check).
    """
    earlier = stored_receipt(session, record.sender, record.message_id)
    if earlier is not None:
        return earlier
    message = Message(
        message_id=record.message_id,
        direction=Direction.INBOUND.value,
        sender=record.sender,
        recipient=record.recipient,
        state=MessageState.RECEIVED.value,
        content_type=record.content_type,
        category=record.category,
        priority=record.priority,
        handling=record.handling,
        case_reference=record.case_reference,
        subject=record.subject,
        envelope=record.envelope,
        envelope_sha256=record.envelope_sha256,
        content=record.content,
        created_at=record.created_at,
        expires_at=record.expires_at,
        updated_at=record.received_at,
        attempts=0,
    )
    session.add(message)
    session.flush()
    session.add(
        Receipt(
            message_pk=message.id,
            signed_receipt=record.signed_receipt,
            status="accepted",
            received_at=record.received_at,
        )
    )
    common: dict[str, Any] = {
        "at": record.received_at,
        "message_id": record.message_id,
        "peer": record.sender,
        "envelope_sha256": record.envelope_sha256,
    }
    audit.append(session, AuditKind.RECEIVED, **common)
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
) -> None:
    audit.append(
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


def record_rejection(
    session: Session,
    *,
    claimed_sender: str,
    authenticated_peer: str | None,
    message_id: str,
    envelope_sha256: str,
    reason: str,
    detail: str,
    at: dt.datetime,
) -> None:
    """Audit a refused envelope. Nothing else is written."""
    audit.append(
        session,
        AuditKind.REJECTED,
        at=at,
        message_id=message_id or None,
        peer=authenticated_peer,
        envelope_sha256=envelope_sha256,
        reason=reason,
        detail=f"claimed sender {claimed_sender or '-'}: {detail}",
    )

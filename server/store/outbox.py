"""Write work for the transactional outbox: queue, hand out, and settle deliveries."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from liaison.server.store import audit, cards
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import (
    Direction,
    Message,
    MessageState,
    Peer,
    PeerState,
    Receipt,
)
from liaison.server.store.records import NoticeRecord

OUTBOUND = Direction.OUTBOUND.value


@dataclass(frozen=True)
class PendingDelivery:
    pk: int
    message_id: str
    recipient: str
    envelope: bytes
    envelope_sha256: str
    expires_at: dt.datetime
    attempts: int


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one delivery attempt.

    ``state`` is DELIVERED or FAILED with a verified receipt, or QUEUED (retry
    at ``retry_at``) after a transport error or an unusable receipt.
    """

    pending: PendingDelivery
    state: MessageState
    at: dt.datetime
    signed_receipt: bytes | None = None
    receipt_status: str | None = None
    reason: str | None = None
    retry_at: dt.datetime | None = None
    error: str | None = None


def queue(session: Session, record: NoticeRecord, *, actor: str) -> None:
    session.add(record.message(Direction.OUTBOUND, MessageState.QUEUED, record.created_at))
    audit.append(
        session,
        AuditKind.SEALED,
        at=record.created_at,
        message_id=record.message_id,
        peer=record.recipient,
        actor=actor,
        envelope_sha256=record.envelope_sha256,
    )


def claim_due(
    session: Session, recipient: str, *, now: dt.datetime, limit: int
) -> list[PendingDelivery]:
    """Move up to ``limit`` due QUEUED messages for ``recipient`` to SENT, oldest first.

    Expired envelopes are left for the expiry sweep: sending them is pointless.
    Nothing is claimed for a revoked or removed recipient: its messages are
    held, QUEUED, until an operator reinstates or pins it again (or they expire).
    """
    if is_held(session, recipient):
        return []
    rows = session.scalars(
        select(Message)
        .where(
            Message.direction == OUTBOUND,
            Message.state == MessageState.QUEUED.value,
            Message.recipient == recipient,
            Message.next_attempt_at <= now,
            Message.expires_at > now,
        )
        .order_by(Message.id)
        .limit(limit)
    ).all()
    claimed = []
    for row in rows:
        row.state = MessageState.SENT.value
        row.attempts += 1
        row.updated_at = now
        audit.append(
            session,
            AuditKind.SENT,
            at=now,
            message_id=row.message_id,
            peer=recipient,
            envelope_sha256=row.envelope_sha256,
            detail=f"attempt {row.attempts}",
        )
        claimed.append(
            PendingDelivery(
                row.id,
                row.message_id,
                recipient,
                row.envelope,
                row.envelope_sha256,
                row.expires_at,
                row.attempts,
            )
        )
    return claimed


def settle(session: Session, outcome: DeliveryOutcome) -> None:
    """Record the outcome of one attempt with its audit events."""
    pending = outcome.pending
    message = session.get_one(Message, pending.pk)
    message.state = outcome.state.value
    message.updated_at = outcome.at
    common: dict[str, Any] = {
        "at": outcome.at,
        "message_id": pending.message_id,
        "peer": pending.recipient,
        "envelope_sha256": pending.envelope_sha256,
    }
    if outcome.state is MessageState.QUEUED:
        message.next_attempt_at = outcome.retry_at
        kind = AuditKind.RECEIPT_INVALID if outcome.signed_receipt else AuditKind.DELIVERY_RETRY
        audit.append(session, kind, **common, detail=outcome.error)
        return
    assert outcome.signed_receipt is not None
    assert outcome.receipt_status is not None
    message.failure_reason = outcome.reason
    session.add(
        Receipt(
            message_pk=pending.pk,
            signed_receipt=outcome.signed_receipt,
            status=outcome.receipt_status,
            reason=outcome.reason,
            received_at=outcome.at,
        )
    )
    audit.append(session, AuditKind.RECEIPT_VERIFIED, **common, detail=outcome.receipt_status)
    if outcome.state is MessageState.DELIVERED:
        audit.append(session, AuditKind.DELIVERED, **common)
    else:
        audit.append(session, AuditKind.REJECTED_BY_PEER, **common, reason=outcome.reason)
    cards.announcement_settled(
        session,
        recipient=pending.recipient,
        message_id=pending.message_id,
        state=outcome.state,
        at=outcome.at,
    )


def any_expired(session: Session, now: dt.datetime) -> bool:
    return (
        session.scalar(
            select(Message.id)
            .where(
                Message.direction == OUTBOUND,
                Message.state == MessageState.QUEUED.value,
                Message.expires_at <= now,
            )
            .limit(1)
        )
        is not None
    )


def expire_due(session: Session, *, now: dt.datetime) -> list[str]:
    """Mark undelivered messages whose envelope has expired; returns their ids."""
    rows = session.scalars(
        select(Message).where(
            Message.direction == OUTBOUND,
            Message.state == MessageState.QUEUED.value,
            Message.expires_at <= now,
        )
    ).all()
    for row in rows:
        row.state = MessageState.EXPIRED.value
        row.updated_at = now
        audit.append(
            session,
            AuditKind.EXPIRED,
            at=now,
            message_id=row.message_id,
            peer=row.recipient,
            envelope_sha256=row.envelope_sha256,
        )
        cards.announcement_settled(
            session,
            recipient=row.recipient,
            message_id=row.message_id,
            state=MessageState.EXPIRED,
            at=now,
        )
    return [row.message_id for row in rows]


def requeue_in_flight(session: Session, *, now: dt.datetime) -> int:
    """At start-up: messages left SENT by a stopped node go back to the queue.

    Redelivery is safe: the receiver answers a replay with its original receipt.
    """
    result = session.execute(
        update(Message)
        .where(Message.direction == OUTBOUND, Message.state == MessageState.SENT.value)
        .values(state=MessageState.QUEUED.value, next_attempt_at=now, updated_at=now)
    )
    return cast("CursorResult[Any]", result).rowcount or 0


def recipients_with_queue(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Message.recipient)
            .where(Message.direction == OUTBOUND, Message.state == MessageState.QUEUED.value)
            .distinct()
        ).all()
    )


def next_due_at(session: Session, recipient: str, now: dt.datetime) -> dt.datetime | None:
    """When the next unexpired QUEUED message for ``recipient`` is due (expired ones are swept).

    None while the recipient is revoked: nothing of it is due until it is reinstated.
    """
    if is_held(session, recipient):
        return None
    return session.scalar(
        select(Message.next_attempt_at)
        .where(
            Message.direction == OUTBOUND,
            Message.state == MessageState.QUEUED.value,
            Message.recipient == recipient,
            Message.expires_at > now,
        )
        .order_by(Message.next_attempt_at)
        .limit(1)
    )


def is_held(session: Session, recipient: str) -> bool:
    """True if notices to ``recipient`` are held, not sent: it is revoked, or no
    longer pinned (removed; they go out if it is pinned again, else they expire)."""
    state = session.scalar(select(Peer.state).where(Peer.agency_id == recipient))
    return state is None or state == PeerState.REVOKED.value

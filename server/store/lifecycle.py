"""Write work for a notice's life after delivery: acknowledgements and replies.

An acknowledgement or a reply names a message its *receiver* sent to its
*sender* (docs/PROTOCOL.md 10.2, 10.3). Each is a message of its own; here
is what it changes of the message it answers, on both sides.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from liaison.server.store import audit
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import (
    ACKNOWLEDGED_STATES,
    WITHOUT_BODY,
    Direction,
    Message,
    MessageState,
)
from liaison.v1 import notice_pb2

# An acknowledgement's status as the state it gives the message it acknowledges.
ACK_STATES = {
    notice_pb2.ACK_STATUS_READ: MessageState.READ,
    notice_pb2.ACK_STATUS_ACKNOWLEDGED: MessageState.ACKNOWLEDGED,
    notice_pb2.ACK_STATUS_ACTION_TAKEN: MessageState.ACTION_TAKEN,
    notice_pb2.ACK_STATUS_DECLINED: MessageState.DECLINED,
}
_RANK = {state.value: rank for rank, state in enumerate(ACKNOWLEDGED_STATES, 1)}
# A message whose state may advance to an acknowledged one.
_DELIVERED = {MessageState.DELIVERED.value, *_RANK}


class Refusal(enum.StrEnum):
    """Why an acknowledgement or reply is refused (reject reason names)."""

    UNKNOWN_MESSAGE = "UNKNOWN_MESSAGE"
    NOT_THE_RECIPIENT = "NOT_THE_RECIPIENT"
    NOT_OUR_MESSAGE = "NOT_OUR_MESSAGE"


@dataclass(frozen=True)
class Answered:
    """The message an acknowledgement or a reply from ``peer`` answers, as stored here."""

    pk: int
    message_id: str
    thread_id: str


def answered(session: Session, peer: str, message_id: str) -> Answered | Refusal:
    """The message ``message_id`` that this node sent to ``peer``, or why it is not one."""
    rows = session.execute(
        select(Message.id, Message.direction, Message.recipient, Message.thread_id).where(
            Message.message_id == message_id
        )
    ).all()
    ours = [row for row in rows if row.direction == Direction.OUTBOUND.value]
    if not ours:
        return Refusal.NOT_OUR_MESSAGE if rows else Refusal.UNKNOWN_MESSAGE
    row = ours[0]
    if row.recipient != peer:
        return Refusal.NOT_THE_RECIPIENT
    return Answered(row.id, message_id, row.thread_id or message_id)


def acknowledged_by_peer(
    session: Session, original: Answered, *, peer: str, state: MessageState, at: dt.datetime
) -> None:
    """The peer acknowledged our message: it goes as far as the furthest status heard.

    Statuses only move on (an acknowledgement after the read notification; a
    late read notification changes nothing). One that arrives before the receipt
    is recorded is kept in ``peer_status`` and applied when it is (``settled``).
    """
    message = session.get_one(Message, original.pk, options=[WITHOUT_BODY])
    if _RANK.get(message.peer_status or "", 0) < _RANK[state.value]:
        message.peer_status = state.value
    if message.state in _DELIVERED and _RANK.get(message.state, 0) < _RANK[state.value]:
        message.state = state.value
        message.updated_at = at
    audit.append(
        session,
        AuditKind.ACKNOWLEDGED_BY_PEER,
        at=at,
        message_id=original.message_id,
        peer=peer,
        detail=state.value,
    )


def forwarded_by_peer(
    session: Session,
    original: Answered,
    *,
    peer: str,
    to: str,
    forward_id: str,
    at: dt.datetime,
) -> None:
    """The peer forwarded our message to the agency ``to``: on its timeline, state kept."""
    audit.append(
        session,
        AuditKind.FORWARDED_BY_PEER,
        at=at,
        message_id=original.message_id,
        peer=peer,
        detail=f"to {to} as {forward_id}",
    )


def replied_by_peer(
    session: Session, original: Answered, *, peer: str, reply_id: str, at: dt.datetime
) -> None:
    audit.append(
        session,
        AuditKind.REPLIED_BY_PEER,
        at=at,
        message_id=original.message_id,
        peer=peer,
        detail=f"reply {reply_id}",
    )


# How far a received message has come here, in the same order as the sender's view of it
# (``_RANK``): both sides apply the same acknowledgements in the same order, so they
# end in the same state whatever order the acknowledgements arrive in.
INBOUND_RANK = {
    MessageState.RECEIVED.value: 0,
    **_RANK,
    MessageState.REPLIED.value: len(_RANK) + 1,
}


def advance_inbound(session: Session, pk: int, state: MessageState, *, at: dt.datetime) -> bool:
    """Our operator read, acknowledged or answered a received message; True if its state
    moved on (states only move on: a read after an acknowledgement changes nothing)."""
    message = session.get_one(Message, pk, options=[WITHOUT_BODY])
    if INBOUND_RANK[state.value] <= INBOUND_RANK.get(message.state, 0):
        return False
    message.state = state.value
    message.updated_at = at
    return True


def thread(session: Session, message_id: str) -> list[Message]:
    """Every message of the conversation ``message_id`` belongs to, oldest first."""
    start = session.scalars(
        select(Message).options(WITHOUT_BODY).where(Message.message_id == message_id)
    ).first()
    if start is None:
        return []
    root = start.thread_id or start.message_id
    rows = session.scalars(
        select(Message)
        .options(WITHOUT_BODY)
        .where((Message.thread_id == root) | (Message.message_id == root))
        .order_by(Message.created_at, Message.id)
    ).all()
    return list(rows)

"""What the store keeps of a notice in either direction, taken from its envelope."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from liaison.server.store.models import Direction, Message, MessageState
from liaison.v1 import envelope_pb2, notice_pb2


@dataclass(frozen=True)
class NoticeRecord:
    """A sealed notice: the exact envelope bytes, the notice bytes and what lists show."""

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

    @classmethod
    def of(
        cls,
        header: envelope_pb2.EnvelopeHeader,
        notice: notice_pb2.CaseNotice,
        *,
        envelope: bytes,
        envelope_sha256: bytes,
        content: bytes,
    ) -> NoticeRecord:
        return cls(
            message_id=header.message_id,
            sender=header.sender,
            recipient=header.recipient,
            content_type=header.content_type,
            category=notice.category,
            priority=notice.priority,
            handling=notice.handling,
            case_reference=notice.case_reference,
            subject=notice.subject,
            envelope=envelope,
            envelope_sha256=envelope_sha256.hex(),
            content=content,
            created_at=header.created_at.ToDatetime(tzinfo=dt.UTC),
            expires_at=header.expires_at.ToDatetime(tzinfo=dt.UTC),
        )

    def message(self, direction: Direction, state: MessageState, at: dt.datetime) -> Message:
        return Message(
            message_id=self.message_id,
            direction=direction.value,
            sender=self.sender,
            recipient=self.recipient,
            state=state.value,
            content_type=self.content_type,
            category=self.category,
            priority=self.priority,
            handling=self.handling,
            case_reference=self.case_reference,
            subject=self.subject,
            envelope=self.envelope,
            envelope_sha256=self.envelope_sha256,
            content=self.content,
            created_at=self.created_at,
            expires_at=self.expires_at,
            updated_at=at,
            attempts=0,
            next_attempt_at=at if direction is Direction.OUTBOUND else None,
        )


@dataclass(frozen=True)
class MessageSummaryRow:
    """What a listing shows of a message: its summary columns, never its envelope or content."""

    message_id: str
    direction: str
    sender: str
    recipient: str
    state: str
    category: int
    priority: int
    handling: int
    case_reference: str
    subject: str
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, message: Message) -> MessageSummaryRow:
        return cls(**{name: getattr(message, name) for name in SUMMARY_COLUMNS})

    @property
    def peer(self) -> str:
        """The other end: the recipient of an outbound message, the sender of an inbound one."""
        return self.recipient if self.direction == Direction.OUTBOUND.value else self.sender


# The columns of ``messages`` a listing reads, in ``MessageSummaryRow`` order.
SUMMARY_COLUMNS = tuple(field.name for field in fields(MessageSummaryRow))

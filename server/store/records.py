"""What the store keeps of a notice in either direction, taken from its envelope."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields, replace
from typing import Any

from sqlalchemy import Connection, insert

from liaison.server.store.models import ContentFormat, Direction, Message, MessageState
from liaison.server.store.plain import MESSAGE_BODIES, MESSAGES
from liaison.v1 import envelope_pb2, notice_pb2


@dataclass(frozen=True)
class NoticeRecord:
    """A notice to store: the exact envelope bytes, the notice sealed at rest
    (``liaison.keys.storage``: content, wrapped data key, its storage key id,
    summary) and the clear columns a listing shows."""

    message_id: str
    sender: str
    recipient: str
    content_type: str
    category: int
    priority: int
    handling: int
    envelope: bytes
    envelope_sha256: str
    content: bytes
    data_key: bytes
    storage_key_id: str
    summary: bytes
    created_at: dt.datetime
    expires_at: dt.datetime
    # An acknowledgement or a reply: the message it answers and its conversation.
    refers_to: str | None = None
    thread_id: str | None = None
    # A notice to several recipients: the id that groups their messages.
    notice_id: str | None = None

    @classmethod
    def of(
        cls,
        header: envelope_pb2.EnvelopeHeader,
        notice: notice_pb2.CaseNotice | None,
        *,
        envelope: bytes,
        envelope_sha256: bytes,
        content: bytes,
        data_key: bytes,
        storage_key_id: str,
        summary: bytes,
    ) -> NoticeRecord:
        return cls(
            message_id=header.message_id,
            sender=header.sender,
            recipient=header.recipient,
            content_type=header.content_type,
            # A card update has none of these: zero, "unspecified".
            category=notice.category if notice else 0,
            priority=notice.priority if notice else 0,
            handling=notice.handling if notice else 0,
            envelope=envelope,
            envelope_sha256=envelope_sha256.hex(),
            content=content,
            data_key=data_key,
            storage_key_id=storage_key_id,
            summary=summary,
            created_at=header.created_at.ToDatetime(tzinfo=dt.UTC),
            expires_at=header.expires_at.ToDatetime(tzinfo=dt.UTC),
        )

    def insert(
        self,
        connection: Connection,
        direction: Direction,
        state: MessageState,
        at: dt.datetime,
        **changes: Any,
    ) -> int:
        """Insert this record's ``messages`` row (``columns``, with ``changes``) and its
        body; returns the row's primary key."""
        values = self.columns(direction, state, at)
        values.update(changes)
        pk = int(connection.execute(_INSERT_MESSAGE, values).scalar_one())
        connection.execute(
            _INSERT_BODY, {"message_pk": pk, "envelope": self.envelope, "content": self.content}
        )
        return pk

    def columns(self, direction: Direction, state: MessageState, at: dt.datetime) -> dict[str, Any]:
        """The ``messages`` row of this record, as column values (its body is a row of
        ``message_bodies``)."""
        return {
            "message_id": self.message_id,
            "direction": direction.value,
            "sender": self.sender,
            "recipient": self.recipient,
            "state": state.value,
            "content_type": self.content_type,
            "category": self.category,
            "priority": self.priority,
            "handling": self.handling,
            # In the sealed summary only.
            "case_reference": "",
            "subject": "",
            "envelope_sha256": self.envelope_sha256,
            "content_format": ContentFormat.SEALED_V1.value,
            "data_key": self.data_key,
            "storage_key_id": self.storage_key_id,
            "summary": self.summary,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "updated_at": at,
            "attempts": 0,
            "next_attempt_at": at if direction is Direction.OUTBOUND else None,
            "refers_to": self.refers_to,
            "thread_id": self.thread_id,
            "notice_id": self.notice_id,
        }


@dataclass(frozen=True)
class MessageSummaryRow:
    """What a listing reads of a message: its summary columns, never its envelope or content.

    ``subject`` and ``case_reference`` are in clear only in a ``clear`` row;
    a sealed row has them in ``summary``, which the caller opens (``opened``).
    """

    pk: int
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
    content_format: str
    storage_key_id: str | None
    summary: bytes | None
    content_type: str
    refers_to: str | None

    @classmethod
    def of(cls, message: Message) -> MessageSummaryRow:
        return cls(**{name: getattr(message, _COLUMN.get(name, name)) for name in SUMMARY_COLUMNS})

    def opened(self, subject: str, case_reference: str) -> MessageSummaryRow:
        """This row with its opened summary in clear."""
        return replace(self, subject=subject, case_reference=case_reference, summary=None)

    @property
    def peer(self) -> str:
        """The other end: the recipient of an outbound message, the sender of an inbound one."""
        return self.recipient if self.direction == Direction.OUTBOUND.value else self.sender


# The columns of ``messages`` a listing reads, in ``MessageSummaryRow`` order (``pk`` is
# the primary key ``id``, which pages are cut by).
SUMMARY_COLUMNS = tuple(field.name for field in fields(MessageSummaryRow))
_COLUMN = {"pk": "id"}


def summary_columns() -> list[Any]:
    """The columns a listing selects, labelled as ``MessageSummaryRow`` names them."""
    return [
        getattr(Message, _COLUMN[name]).label(name) if name in _COLUMN else getattr(Message, name)
        for name in SUMMARY_COLUMNS
    ]


# Built once: every notice stored in either direction runs them.
_INSERT_MESSAGE = insert(MESSAGES).returning(MESSAGES.c.id)
_INSERT_BODY = insert(MESSAGE_BODIES)

"""What the client library hands out: enums mirroring the wire's, and its result records.

The library returns the node's own protobuf messages (``MessageSummary``,
``MessageDetail``, ``MessageStatus``, ``WatchEvent``) unchanged; their enum fields
hold the wire's numbers. Read those through the enums here, which carry the same
numbers under the same names without the prefix::

    Tlp(summary.handling) is Tlp.AMBER_STRICT
    MessageState(status.state) is MessageState.DELIVERED
    SummaryEnums.of(summary).priority is Priority.FLASH

A number this version of the library does not know (a newer node) raises
``ValueError`` there; the protobuf field itself keeps it. Every method that takes
an enum accepts these members (they are ``int``), and ``State`` is the text form of
a ``MessageState`` that ``SendResult`` carries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from liaison.v1 import node_pb2

__all__ = [
    "AckStatus",
    "AttachmentInfo",
    "Category",
    "Direction",
    "MessagePage",
    "MessageState",
    "Priority",
    "RecipientResult",
    "SendResult",
    "State",
    "SummaryEnums",
    "Tlp",
]


class MessageState(enum.IntEnum):
    """``liaison.v1.MessageState``: where a message stands (node.proto says each)."""

    UNSPECIFIED = 0
    QUEUED = 1
    SENT = 2
    DELIVERED = 3
    FAILED = 4
    EXPIRED = 5
    RECEIVED = 6
    READ = 7
    ACKNOWLEDGED = 8
    ACTION_TAKEN = 9
    DECLINED = 10
    REPLIED = 11
    CANCELLED = 12


class Direction(enum.IntEnum):
    """``liaison.v1.Direction``: received by this node, or sent from it."""

    UNSPECIFIED = 0
    INBOUND = 1
    OUTBOUND = 2


class Category(enum.IntEnum):
    """``liaison.v1.Category``: the crime area of a notice."""

    UNSPECIFIED = 0
    TERRORISM = 1
    VIOLENT_EXTREMISM = 2
    FOREIGN_FIGHTERS_RECRUITMENT = 3
    DRUG_TRAFFICKING = 4
    ILLEGAL_MIGRATION = 5
    MIGRANT_SMUGGLING = 6
    HUMAN_TRAFFICKING = 7
    CYBERCRIME = 8
    DOCUMENT_FRAUD = 9
    ORGANISED_CRIME = 10
    OTHER = 11


class Priority(enum.IntEnum):
    """``liaison.v1.Priority``: how fast the recipient is expected to act."""

    UNSPECIFIED = 0
    ROUTINE = 1
    PRIORITY = 2
    URGENT = 3
    FLASH = 4


class Tlp(enum.IntEnum):
    """``liaison.v1.Tlp``: the Traffic Light Protocol 2.0 handling code."""

    UNSPECIFIED = 0
    CLEAR = 1
    GREEN = 2
    AMBER = 3
    AMBER_STRICT = 4
    RED = 5


class AckStatus(enum.IntEnum):
    """``liaison.v1.AckStatus``: what an operator did with a received message. The node
    sends ``READ`` and ``FORWARDED`` itself; ``LiaisonClient.acknowledge`` takes the rest."""

    UNSPECIFIED = 0
    READ = 1
    ACKNOWLEDGED = 2
    ACTION_TAKEN = 3
    DECLINED = 4
    FORWARDED = 5


class State(enum.StrEnum):
    """A ``MessageState`` as text, as the CLI prints it: ``State.DELIVERED == "delivered"``."""

    UNSPECIFIED = "unspecified"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    RECEIVED = "received"
    READ = "read"
    ACKNOWLEDGED = "acknowledged"
    ACTION_TAKEN = "action_taken"
    DECLINED = "declined"
    REPLIED = "replied"
    CANCELLED = "cancelled"

    @classmethod
    def of(cls, state: int) -> State:
        """The text form of the wire's ``state``; ``ValueError`` for a number not known here."""
        return cls[MessageState(state).name]


@dataclass(frozen=True)
class SummaryEnums:
    """A ``MessageSummary``'s enum fields as enums (``SummaryEnums.of(summary)``)."""

    direction: Direction
    state: MessageState
    category: Category
    priority: Priority
    handling: Tlp

    @classmethod
    def of(cls, summary: node_pb2.MessageSummary) -> SummaryEnums:
        """Raises ``ValueError`` for a number this version does not know."""
        return cls(
            Direction(summary.direction),
            MessageState(summary.state),
            Category(summary.category),
            Priority(summary.priority),
            Tlp(summary.handling),
        )


@dataclass(frozen=True)
class RecipientResult:
    """One recipient's envelope of a notice sent to several."""

    recipient: str
    message_id: str
    state: State
    reason: str


@dataclass(frozen=True)
class SendResult:
    """What the node answered a send, an acknowledgement, a reply or a forward."""

    message_id: str
    state: State
    # Why a "failed" or "expired" notice was not delivered, e.g. "TOO_LARGE"; else empty.
    reason: str = ""
    # A notice to several recipients: its id, and each recipient's message.
    notice_id: str = ""
    recipients: list[RecipientResult] = field(default_factory=list)


@dataclass(frozen=True)
class MessagePage:
    """One page of a listing (summaries only: a listing never carries a notice's content)."""

    messages: list[node_pb2.MessageSummary]
    # Pass as ``cursor`` for the next page; empty when nothing more matches.
    next_cursor: str


@dataclass(frozen=True)
class AttachmentInfo:
    """What the node says of an attachment before its bytes: its name (a peer's label,
    never a path), media type, size in bytes and SHA-256 (raw bytes)."""

    name: str
    media_type: str
    size: int
    sha256: bytes

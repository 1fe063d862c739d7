"""Tables of a node's database. Digests are stored as lower-case hex text."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, lazyload, mapped_column, relationship


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageState(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    RECEIVED = "received"
    # The life of a notice after delivery: read, then acknowledged, acted on or declined
    # (given here for an inbound message, by the peer for an outbound one), or replied to.
    READ = "read"
    ACKNOWLEDGED = "acknowledged"
    ACTION_TAKEN = "action-taken"
    DECLINED = "declined"
    REPLIED = "replied"
    CANCELLED = "cancelled"


class ContentFormat(enum.StrEnum):
    """How a message row holds its notice (``Message.content_format``)."""

    CLEAR = "clear"
    SEALED_V1 = "sealed-v1"
    DESTROYED = "destroyed"


# What an acknowledgement can make of a delivered message, from the least to the furthest.
ACKNOWLEDGED_STATES = (
    MessageState.READ,
    MessageState.ACKNOWLEDGED,
    MessageState.ACTION_TAKEN,
    MessageState.DECLINED,
)
# Delivery is over: the receipt says delivered or failed, or the envelope expired.
FINAL_OUTBOUND_STATES = frozenset(
    {
        MessageState.DELIVERED,
        MessageState.FAILED,
        MessageState.EXPIRED,
        MessageState.CANCELLED,
        *ACKNOWLEDGED_STATES,
    }
)


class Base(DeclarativeBase):
    pass


class PeerState(enum.StrEnum):
    ACTIVE = "active"
    # Still pinned, but its envelopes are refused and notices to it are held.
    REVOKED = "revoked"


class Peer(Base):
    """A pinned peer: its signed card, verified again whenever it is loaded, and what
    it holds of ours.

    ``added_at`` is when its current card was pinned; ``revoked_at`` and
    ``revoke_reason`` (the operator's words) are set while it is revoked.
    """

    __tablename__ = "peers"

    agency_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(String(255))
    signed_card: Mapped[bytes] = mapped_column(LargeBinary)
    tls_fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    added_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(
        String(16), default=PeerState.ACTIVE.value, server_default=PeerState.ACTIVE.value
    )
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The card the peer replaced by a card update, trusted beside the new one until
    # ``previous_until`` (envelopes it signed under its old key may still be in flight).
    previous_card: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    previous_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The sequence of *our* card this peer pins, and the card being announced to it (the
    # card update's message id) until that delivery settles.
    our_card: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    announcing: Mapped[int | None] = mapped_column(Integer, nullable=True)
    announcement_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class Message(Base):
    """A notice in either direction, with the exact envelope bytes that travelled.

    The notice itself is sealed at rest (``liaison.keys.storage``): ``content`` is
    its AES-256-GCM ciphertext under a data key of its own, ``data_key`` that key
    wrapped under the storage key ``storage_key_id``, and ``summary`` the subject
    and case reference that listings show, sealed apart. ``content_format`` says
    which: ``sealed-v1``; ``clear`` for a row written before content was sealed
    (then ``content``, ``subject`` and ``case_reference`` are in clear until the
    node seals it at start-up); ``destroyed`` once its content was destroyed
    (``data_key`` and ``summary`` are NULL, ``content`` and ``envelope`` empty;
    digests, receipt and audit events stay). ``subject`` and ``case_reference`` are empty
    unless ``clear``.
    """

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("sender", "message_id", name="uq_messages_sender_message_id"),
        Index("ix_messages_outbox", "direction", "state", "recipient", "next_attempt_at"),
        Index("ix_messages_listing", "direction", "id"),
        Index("ix_messages_message_id", "message_id", "direction"),
        Index("ix_messages_content_format", "content_format"),
        Index("ix_messages_thread", "thread_id"),
        Index("ix_messages_refers_to", "refers_to"),
        Index("ix_messages_by_priority", "direction", "priority", "id"),
        Index("ix_messages_notice", "notice_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(String(36))
    direction: Mapped[str] = mapped_column(String(8))
    sender: Mapped[str] = mapped_column(String(63))
    recipient: Mapped[str] = mapped_column(String(63))
    state: Mapped[str] = mapped_column(String(16))
    content_type: Mapped[str] = mapped_column(String(100))
    category: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)
    handling: Mapped[int] = mapped_column(Integer)
    case_reference: Mapped[str] = mapped_column(String(100))
    subject: Mapped[str] = mapped_column(Text)
    envelope_sha256: Mapped[str] = mapped_column(String(64))
    # A row that does not say is in clear (rows of 0002), and the node seals it at its start.
    content_format: Mapped[str] = mapped_column(
        String(16), default=ContentFormat.CLEAR.value, server_default=ContentFormat.CLEAR.value
    )
    data_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    storage_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    summary: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # An acknowledgement or a reply: the message it answers, and the first message of the
    # conversation (``liaison thread``); NULL for a notice that starts one.
    refers_to: Mapped[str | None] = mapped_column(String(36), nullable=True)
    thread_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Outbound: the furthest the peer's acknowledgements have gone (read, acknowledged...),
    # kept even if one arrives before the receipt is recorded (the state follows then).
    peer_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Outbound: the notice this message carries to one of its recipients (the first
    # recipient's message id); NULL for anything else.
    notice_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Outbound, SENT: the replica delivering it, and until when it holds it (revision
    # 0012); another replica queues it again once the lease has run out.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The envelope and the content, in a row of their own (revision 0013), loaded with the
    # message as the columns were (a query that needs neither says ``WITHOUT_BODY``).
    body: Mapped[MessageBody] = relationship(
        lazy="joined", innerjoin=True, cascade="all, delete-orphan"
    )

    @property
    def envelope(self) -> bytes:
        return self.body.envelope

    @property
    def content(self) -> bytes:
        """The content as stored: sealed at rest (``content_format``), or nothing."""
        return self.body.content


class MessageBody(Base):
    """A message's envelope and its content sealed at rest (revision 0013), beside its
    ``messages`` row, which changes state several times in its life (sent, delivered,
    read, acknowledged...). SQLite rewrites a whole row, overflow pages and all, at
    every change of any column: with the bodies in the row, settling one 1 MiB notice
    wrote 2 MiB again (52 ms here, against 0.3 ms for the row alone)."""

    __tablename__ = "message_bodies"

    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    content: Mapped[bytes] = mapped_column(LargeBinary)


# A query option: the messages without their bodies, for the queries that change or read
# small columns only (a body can be 2 x 16 MiB).
WITHOUT_BODY = lazyload(Message.body)


class Receipt(Base):
    """The signed receipt of a message: received from the peer, or issued by this node."""

    __tablename__ = "receipts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)
    signed_receipt: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class AuditEvent(Base):
    """One step in the life of a message or the node. Append-only; digests, never content.

    ``seq`` is gap-free in commit order: it will be the leaf index of the
    Merkle audit log.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_message", "message_id", "seq"),
        Index("ix_audit_events_peer", "peer", "event", "seq"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    event: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    peer: Mapped[str | None] = mapped_column(String(63), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    envelope_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class SendRequest(Base):
    """A ``SendNotice`` call that carried an idempotency key, and the message it queued.

    A retry of the call with the same key (and the same request) is answered
    with this message instead of queuing another.
    """

    __tablename__ = "send_requests"

    actor: Mapped[str] = mapped_column(String(128), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class AuditLeaf(Base):
    """An audit event's canonical bytes (``liaison.v1.AuditEntry``): leaf ``seq - 1`` of the
    audit log's Merkle tree. Written with the event, never changed (append-only)."""

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    entry: Mapped[bytes] = mapped_column(LargeBinary)


class AuditNode(Base):
    """The hash of a perfect subtree of the audit log: ``2**level`` leaves from
    ``idx * 2**level`` (level 0: the leaf hashes). Written once, when complete."""

    __tablename__ = "audit_tree"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary)


class AuditCheckpoint(Base):
    """A checkpoint of this node's audit log, as signed (a C2SP signed note with our
    signatures only; peers' cosignatures are in ``checkpoint_cosignatures``)."""

    __tablename__ = "audit_checkpoints"

    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary)
    note: Mapped[bytes] = mapped_column(LargeBinary)
    signed_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class CheckpointCosignature(Base):
    """A peer's verified cosignature of one of our checkpoints: its signed-note line."""

    __tablename__ = "checkpoint_cosignatures"

    size: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("audit_checkpoints.size"), primary_key=True, autoincrement=False
    )
    peer: Mapped[str] = mapped_column(String(128), primary_key=True)
    line: Mapped[bytes] = mapped_column(LargeBinary)
    # The cosignature's own timestamp (seconds since the epoch, as the witness signed it).
    timestamp: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class PeerCheckpoint(Base):
    """A checkpoint of a peer's audit log that this node cosigned as its witness: the
    peer's signed note as received, and our cosignature line."""

    __tablename__ = "peer_checkpoints"

    peer: Mapped[str] = mapped_column(String(128), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary)
    note: Mapped[bytes] = mapped_column(LargeBinary)
    cosignature: Mapped[bytes] = mapped_column(LargeBinary)
    cosigned_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class WitnessEvidence(Base):
    """Two signed checkpoints of a peer's log that cannot both be true (a rollback or a
    rewritten history), kept as evidence when this node refused to cosign the second."""

    __tablename__ = "witness_evidence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    peer: Mapped[str] = mapped_column(String(128), index=True)
    # ROLLBACK or INCONSISTENT (the WitnessRefusal name).
    refusal: Mapped[str] = mapped_column(String(32))
    # The checkpoint we had cosigned (signed by the peer), and the one it then presented.
    cosigned_note: Mapped[bytes] = mapped_column(LargeBinary)
    presented_note: Mapped[bytes] = mapped_column(LargeBinary)
    # The consistency proof it gave, from old_size: the 32-byte hashes concatenated.
    old_size: Mapped[int] = mapped_column(BigInteger)
    proof: Mapped[bytes] = mapped_column(LargeBinary)
    detected_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class OwnCard(Base):
    """Each card of ours that signed a checkpoint, with the update that handed trust to
    it from the card before (none for the first one recorded): what ``audit verify``
    checks old checkpoints' signatures with, after the keys that made them are gone."""

    __tablename__ = "own_cards"

    sequence: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    signed_card: Mapped[bytes] = mapped_column(LargeBinary)
    card_update: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class ApiUser(Base):
    """A named identity of the local API and its role (``liaison users``)."""

    __tablename__ = "api_users"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # operator, system, auditor or admin (server/access.py).
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    revoke_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)


class ApiCertificate(Base):
    """A client certificate issued to an identity, by its SHA-256 (hex). Only an unrevoked
    certificate of an active identity gets a call through."""

    __tablename__ = "api_certificates"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), ForeignKey("api_users.name"), index=True)
    issued_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)

"""The append-only audit trail: what happened, to which message, with which digest."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import select
from sqlalchemy.orm import Session

from liaison.server.store import auditlog
from liaison.server.store.models import AuditEvent
from liaison.server.store.plain import AUDIT_EVENTS

_LAST_SEQ = "liaison_last_audit_seq"


class AuditKind(enum.StrEnum):
    NODE_INITIALISED = "node-initialised"
    KEYS_PASSPHRASE_CHANGED = "keys-passphrase-changed"  # noqa: S105 - an event name
    KEYS_SEALED = "keys-sealed"
    KEY_CREATED = "key-created"
    # Rotation (liaison keys rotate): a key replaced, a retiring key dated or destroyed.
    KEY_ROTATED = "key-rotated"
    KEY_RETIRING = "key-retiring"
    KEY_DESTROYED = "key-destroyed"
    # Our new card sent to a peer, and what became of it; a peer's new card pinned.
    CARD_ANNOUNCED = "card-announced"
    CARD_ACCEPTED_BY_PEER = "card-accepted-by-peer"
    CARD_ANNOUNCEMENT_FAILED = "card-announcement-failed"
    # An operator recorded that a peer got our current card out of band.
    CARD_HANDED_OVER = "card-handed-over"
    PEER_CARD_UPDATED = "peer-card-updated"
    # Notices at rest: clear rows of an older version sealed; a message's content destroyed.
    CONTENT_SEALED = "content-sealed"
    CONTENT_DESTROYED = "content-destroyed"
    PEER_PINNED = "peer-pinned"
    # An operator's decisions about a pinned peer (``liaison peers``).
    PEER_REPLACED = "peer-replaced"
    PEER_REMOVED = "peer-removed"
    PEER_REVOKED = "peer-revoked"
    PEER_REINSTATED = "peer-reinstated"
    SEALED = "sealed"
    SENT = "sent"
    DELIVERY_RETRY = "delivery-retry"
    # An attempt cut off by a stop, queued again at start.
    REQUEUED = "requeued"
    # An operator's decisions about a queued message.
    CANCELLED = "cancelled"
    RETRY_REQUESTED = "retry-requested"
    # A peer's link: unreachable (once per outage, with why), reachable again.
    PEER_UNREACHABLE = "peer-unreachable"
    PEER_REACHABLE = "peer-reachable"
    DELIVERED = "delivered"
    RECEIPT_VERIFIED = "receipt-verified"
    RECEIPT_INVALID = "receipt-invalid"
    REJECTED_BY_PEER = "rejected-by-peer"
    EXPIRED = "expired"
    RECEIVED = "received"
    RECEIPT_ISSUED = "receipt-issued"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    # The peer acknowledged (read, acknowledged, acted on, declined) or answered our
    # message; our operator did so with theirs (the acknowledgement or reply is its own
    # message, with its own timeline).
    ACKNOWLEDGED_BY_PEER = "acknowledged-by-peer"
    REPLIED_BY_PEER = "replied-by-peer"
    ACKNOWLEDGED = "acknowledged"
    REPLIED = "replied"
    READ = "read"
    # Our operator forwarded a received notice to a third agency; a peer told us that it
    # forwarded ours (its acknowledgement names the agency and the forward).
    FORWARDED = "forwarded"
    FORWARDED_BY_PEER = "forwarded-by-peer"
    # A pinned peer's call refused by a limit, or a call with an unpinned certificate.
    PEER_REFUSED = "peer-refused"
    # A peer asked for something it may not have (an inclusion proof of an entry that is
    # not about it).
    ACCESS_DENIED = "access-denied"
    # Checkpoints of our log: signed; cosigned by a peer, or refused by it.
    CHECKPOINT_SIGNED = "checkpoint-signed"
    CHECKPOINT_COSIGNED_BY_PEER = "checkpoint-cosigned-by-peer"
    CHECKPOINT_REFUSED_BY_PEER = "checkpoint-refused-by-peer"
    # As a peer's witness: we cosigned its checkpoint, refused one, or were shown a
    # rolled-back or rewritten history of its log (the alarm; the evidence is kept).
    CHECKPOINT_COSIGNED = "checkpoint-cosigned"
    CHECKPOINT_REFUSED = "checkpoint-refused"
    SPLIT_VIEW_DETECTED = "split-view-detected"
    # Local API identities (liaison users); a notice's body returned to one of them.
    USER_ADDED = "user-added"
    USER_ROTATED = "user-rotated"
    USER_REVOKED = "user-revoked"
    # A credential written out as a PKCS#12 file (liaison users export).
    CREDENTIAL_EXPORTED = "credential-exported"
    OPENED = "opened"
    # A setting of config.toml changed (liaison config set); the key only, never a value.
    CONFIG_CHANGED = "config-changed"


# Events that only record checkpointing itself: on their own they are no reason to sign
# a new checkpoint (otherwise every cosignature would call for the next checkpoint).
CHECKPOINT_BOOKKEEPING = frozenset(
    {
        AuditKind.CHECKPOINT_SIGNED,
        AuditKind.CHECKPOINT_COSIGNED_BY_PEER,
        AuditKind.CHECKPOINT_COSIGNED,
    }
)


# The events that belong to a message of each direction. Message ids are unique per
# sender only: a peer may reuse an id of ours, and a timeline must not mix the two.
OUTBOUND_EVENTS = frozenset(
    {
        AuditKind.SEALED,
        AuditKind.SENT,
        AuditKind.DELIVERY_RETRY,
        AuditKind.REQUEUED,
        AuditKind.CANCELLED,
        AuditKind.RETRY_REQUESTED,
        AuditKind.DELIVERED,
        AuditKind.RECEIPT_VERIFIED,
        AuditKind.RECEIPT_INVALID,
        AuditKind.REJECTED_BY_PEER,
        AuditKind.EXPIRED,
        AuditKind.CONTENT_DESTROYED,
        AuditKind.CARD_ANNOUNCED,
        AuditKind.CARD_ACCEPTED_BY_PEER,
        AuditKind.CARD_ANNOUNCEMENT_FAILED,
        AuditKind.ACKNOWLEDGED_BY_PEER,
        AuditKind.REPLIED_BY_PEER,
        AuditKind.FORWARDED_BY_PEER,
    }
)
INBOUND_EVENTS = frozenset(
    {
        AuditKind.RECEIVED,
        AuditKind.RECEIPT_ISSUED,
        AuditKind.DUPLICATE,
        AuditKind.REJECTED,
        AuditKind.CONTENT_DESTROYED,
        AuditKind.PEER_CARD_UPDATED,
        AuditKind.READ,
        AuditKind.ACKNOWLEDGED,
        AuditKind.REPLIED,
        AuditKind.FORWARDED,
    }
)


_LAST_EVENT = (
    select(AUDIT_EVENTS.c.seq, AUDIT_EVENTS.c.at).order_by(AUDIT_EVENTS.c.seq.desc()).limit(1)
)


def append(
    session: Session,
    kind: AuditKind,
    *,
    at: dt.datetime,
    message_id: str | None = None,
    peer: str | None = None,
    actor: str | None = None,
    envelope_sha256: str | None = None,
    reason: str | None = None,
    detail: str | None = None,
) -> AuditEvent:
    """Add one event with the next sequence number.

    Must run inside a write transaction (the store takes the write lock when
    it begins one), which makes ``max(seq) + 1`` gap-free and unique. The
    last event is read once per transaction and counted on from there.

    The event's time is when it is written: ``at`` (when the step happened, read
    before the write was queued) unless that is earlier than now or than the
    previous event's time. Times then never run backwards against sequence
    numbers, even when writes queue behind each other or the clock steps back.
    """
    last = session.info.get(_LAST_SEQ)
    if last is None:
        row = session.connection().execute(_LAST_EVENT).first()
        last = (row[0], row[1]) if row is not None else (0, None)
    seq, previous = last
    stamp = max(at, dt.datetime.now(dt.UTC), *([previous] if previous is not None else []))
    session.info[_LAST_SEQ] = (seq + 1, stamp)
    event = AuditEvent(
        seq=seq + 1,
        at=stamp,
        event=kind.value,
        message_id=message_id,
        peer=peer,
        actor=actor,
        envelope_sha256=envelope_sha256,
        reason=reason,
        detail=detail,
    )
    # Written with its leaf just before the transaction commits (auditlog.write_pending),
    # or before anything reads the log.
    auditlog.append(session, event)
    return event

"""Write work for the transactional outbox: queue, hand out, and settle deliveries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, CursorResult, bindparam, func, insert, or_, select, update
from sqlalchemy.orm import Session, load_only
from sqlalchemy.orm.util import identity_key

from liaison.keys.content_types import CARD_UPDATE_CONTENT_TYPE
from liaison.server.store import audit, cards
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import (
    WITHOUT_BODY,
    Direction,
    Message,
    MessageState,
    PeerState,
)
from liaison.server.store.plain import (
    MESSAGE_BODIES,
    MESSAGES,
    PEERS,
    RECEIPTS,
    SEND_REQUESTS,
    plain,
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
class Lease:
    """Who claims a message (this replica of the node) and until when it holds it."""

    replica: str
    until: dt.datetime


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


def queue(
    session: Session,
    record: NoticeRecord,
    *,
    actor: str,
    claim_at: dt.datetime | None = None,
    lease: Lease | None = None,
) -> PendingDelivery | None:
    """Queue ``record``, audited ``sealed``.

    With ``claim_at`` (the delivery worker has a free place for it), the message is
    claimed in the same transaction, as ``claim_due`` would claim it: SENT, its first
    attempt audited, and returned for the worker to deliver at once. A recipient whose
    notices are held (revoked, removed) gets it QUEUED, and None is returned.
    """
    claimed = claim_at is not None and not is_held(session, record.recipient)
    changes: dict[str, Any] = {}
    if claimed:
        changes.update(attempts=1, updated_at=claim_at)
        if lease is not None:
            changes.update(claimed_by=lease.replica, lease_until=lease.until)
    pk = record.insert(
        plain(session),
        Direction.OUTBOUND,
        MessageState.SENT if claimed else MessageState.QUEUED,
        record.created_at,
        **changes,
    )
    # Audit times are when they are written, not the envelope's creation time (whole
    # seconds): they then never run backwards against sequence numbers.
    common: dict[str, Any] = {
        "message_id": record.message_id,
        "peer": record.recipient,
        "envelope_sha256": record.envelope_sha256,
    }
    audit.append(session, AuditKind.SEALED, at=dt.datetime.now(dt.UTC), actor=actor, **common)
    if not claimed:
        return None
    assert claim_at is not None
    audit.append(session, AuditKind.SENT, at=claim_at, detail=_attempt(1, lease), **common)
    return PendingDelivery(
        pk,
        record.message_id,
        record.recipient,
        record.envelope,
        record.envelope_sha256,
        record.expires_at,
        1,
    )


def sent_request(session: Session, actor: str, key: str) -> EarlierRequest | None:
    """The earlier ``SendNotice`` of ``actor`` with idempotency key ``key``, if any:
    committed, or remembered earlier in this transaction (by another unit of the same
    group commit: a retry that raced the first call)."""
    remembered: dict[tuple[str, str], EarlierRequest] = session.info.get(_REMEMBERED, {})
    if (actor, key) in remembered:
        return remembered[(actor, key)]
    # On the connection, without a flush: what this lookup needs is committed or
    # remembered above.
    row = session.connection().execute(_EARLIER, {"actor": actor, "key": key}).first()
    return None if row is None else EarlierRequest(row[0], row[1])


# The idempotency keys remembered in a transaction (session.info), by (actor, key).
_REMEMBERED = "liaison.send_requests"


class EarlierRequest(NamedTuple):
    request_sha256: str
    message_id: str


def earlier_request(connection: Connection, actor: str, key: str) -> EarlierRequest | None:
    """``sent_request`` for a read outside a write (the check before sealing anything)."""
    row = connection.execute(_EARLIER, {"actor": actor, "key": key}).first()
    return None if row is None else EarlierRequest(row[0], row[1])


# Statements of every send and every delivery, built once (building one costs more than
# running it).
_EARLIER = select(SEND_REQUESTS.c.request_sha256, SEND_REQUESTS.c.message_id).where(
    SEND_REQUESTS.c.actor == bindparam("actor"),
    SEND_REQUESTS.c.idempotency_key == bindparam("key"),
)
_PEER_STATE = select(PEERS.c.state).where(PEERS.c.agency_id == bindparam("agency"))
_INSERT_REQUEST = insert(SEND_REQUESTS)
_CLAIM = (
    update(MESSAGES)
    .where(MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        state=MessageState.SENT.value,
        attempts=MESSAGES.c.attempts + 1,
        updated_at=bindparam("now"),
        claimed_by=bindparam("replica"),
        lease_until=bindparam("until"),
    )
)
_DUE_SIZES = (
    select(MESSAGES.c.id, func.length(MESSAGE_BODIES.c.envelope))
    .join(MESSAGE_BODIES, MESSAGE_BODIES.c.message_pk == MESSAGES.c.id)
    .where(
        MESSAGES.c.direction == OUTBOUND,
        MESSAGES.c.state == MessageState.QUEUED.value,
        MESSAGES.c.recipient == bindparam("recipient"),
        MESSAGES.c.next_attempt_at <= bindparam("now"),
        MESSAGES.c.expires_at > bindparam("now"),
    )
    .order_by(MESSAGES.c.id)
    .limit(bindparam("limit"))
)
_CLAIMABLE = (
    select(
        MESSAGES.c.id,
        MESSAGES.c.message_id,
        MESSAGE_BODIES.c.envelope,
        MESSAGES.c.envelope_sha256,
        MESSAGES.c.expires_at,
        MESSAGES.c.attempts,
    )
    .join(MESSAGE_BODIES, MESSAGE_BODIES.c.message_pk == MESSAGES.c.id)
    .where(MESSAGES.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(MESSAGES.c.id)
)


def _within(
    due: Sequence[tuple[int, int | None]], max_bytes: int | None, *, always_one: bool
) -> list[int]:
    """The ids of ``due`` (oldest first) whose envelopes fit in ``max_bytes`` together
    (with ``always_one``, the first whatever its size)."""
    ids: list[int] = []
    total = 0
    for pk, size in due:
        total += int(size or 0)
        if max_bytes is not None and total > max_bytes and (ids or not always_one):
            break
        ids.append(int(pk))
    return ids


def queue_once(
    session: Session,
    record: NoticeRecord,
    *,
    actor: str,
    key: str,
    request_sha256: str,
    claim_at: dt.datetime | None = None,
    lease: Lease | None = None,
) -> tuple[str, PendingDelivery | None]:
    """``queue`` ``record`` under the caller's idempotency key; returns the message id, and
    the delivery if it was claimed.

    If the key was recorded meanwhile (a retry that raced the first call), nothing
    is queued and the first call's message id is returned.
    """
    earlier = sent_request(session, actor, key)
    if earlier is not None:
        return earlier.message_id, None
    pending = queue(session, record, actor=actor, claim_at=claim_at, lease=lease)
    remember_request(session, actor, key, request_sha256, record.message_id)
    return record.message_id, pending


def remember_request(
    session: Session, actor: str, key: str, request_sha256: str, message_id: str
) -> None:
    """Note that ``actor``'s call with idempotency key ``key`` queued ``message_id``."""
    plain(session).execute(
        _INSERT_REQUEST,
        {
            "actor": actor,
            "idempotency_key": key,
            "request_sha256": request_sha256,
            "message_id": message_id,
            "created_at": dt.datetime.now(dt.UTC),
        },
    )
    session.info.setdefault(_REMEMBERED, {})[(actor, key)] = EarlierRequest(
        request_sha256, message_id
    )


def claim_due(
    session: Session,
    recipient: str,
    *,
    now: dt.datetime,
    limit: int,
    max_bytes: int | None = None,
    always_one: bool = True,
    lease: Lease | None = None,
) -> list[PendingDelivery]:
    """Move up to ``limit`` due QUEUED messages for ``recipient`` to SENT, oldest first,
    and with ``max_bytes``, no more envelope bytes than that; with ``always_one``, the
    first due message whatever its size (nothing else is in flight to take its place).

    Expired envelopes are left for the expiry sweep: sending them is pointless.
    Nothing is claimed for a revoked or removed recipient: its messages are
    held, QUEUED, until an operator reinstates or pins it again (or they expire).
    """
    if is_held(session, recipient):
        return []
    # The sizes first (read from the record header, not the envelopes), then the columns
    # a delivery needs of the messages that fit, not the whole row (its content sealed at
    # rest is as large as the envelope); a change made earlier in this transaction (a
    # cancel) is flushed first, so a cancelled message is not claimed.
    connection = plain(session)
    due = connection.execute(_DUE_SIZES, {"recipient": recipient, "now": now, "limit": limit})
    ids = _within([(row[0], row[1]) for row in due], max_bytes, always_one=always_one)
    if not ids:
        return []
    rows = connection.execute(_CLAIMABLE, {"ids": ids}).all()
    for row in rows:  # a copy an earlier unit of this transaction loaded reads the claim
        _expire_loaded(session, row.id)
    connection.execute(
        _CLAIM,
        {
            "ids": [row.id for row in rows],
            "now": now,
            "replica": lease.replica if lease else None,
            "until": lease.until if lease else None,
        },
    )
    claimed = []
    for row in rows:
        attempts = row.attempts + 1
        audit.append(
            session,
            AuditKind.SENT,
            at=now,
            message_id=row.message_id,
            peer=recipient,
            envelope_sha256=row.envelope_sha256,
            detail=_attempt(attempts, lease),
        )
        claimed.append(
            PendingDelivery(
                row.id,
                row.message_id,
                recipient,
                row.envelope,
                row.envelope_sha256,
                row.expires_at,
                attempts,
            )
        )
    return claimed


def settle(session: Session, outcome: DeliveryOutcome) -> None:
    """Record the outcome of one attempt with its audit events.

    Plain statements, not an ORM unit: the message row is changed only if it is
    still SENT (an attempt whose commit was reported as failed may have recorded it
    already), and a copy of it that an earlier unit of the same transaction loaded
    is expired, so that later units read what this one wrote.
    """
    pending = outcome.pending
    common: dict[str, Any] = {
        "at": outcome.at,
        "message_id": pending.message_id,
        "peer": pending.recipient,
        "envelope_sha256": pending.envelope_sha256,
    }
    if outcome.state is MessageState.QUEUED:
        changed = (
            plain(session)
            .execute(
                _SETTLE_RETRY,
                {
                    "pk": pending.pk,
                    "attempt": pending.attempts,
                    "at": outcome.at,
                    "due": outcome.retry_at,
                },
            )
            .first()
        )
        if changed is None:
            return
        _expire_loaded(session, pending.pk)
        kind = AuditKind.RECEIPT_INVALID if outcome.signed_receipt else AuditKind.DELIVERY_RETRY
        audit.append(session, kind, **common, detail=outcome.error)
        return
    assert outcome.signed_receipt is not None
    assert outcome.receipt_status is not None
    failure = outcome.reason or ("DUPLICATE" if outcome.state is MessageState.FAILED else None)
    connection = plain(session)
    changed = connection.execute(
        _SETTLE_FINAL,
        {
            "pk": pending.pk,
            "attempt": pending.attempts,
            "at": outcome.at,
            "new_state": outcome.state.value,
            "why": failure,
        },
    ).first()
    if changed is None:
        return
    peer_status = changed[0]
    if outcome.state is MessageState.DELIVERED and peer_status:
        # What the peer said before its receipt was recorded (lifecycle.settled).
        connection.execute(_PROMOTE, {"pk": pending.pk, "promoted": peer_status})
    _expire_loaded(session, pending.pk)
    connection.execute(
        _INSERT_RECEIPT,
        {
            "message_pk": pending.pk,
            "signed_receipt": outcome.signed_receipt,
            "status": outcome.receipt_status,
            "reason": outcome.reason,
            "received_at": outcome.at,
        },
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


def _expire_loaded(session: Session, pk: int) -> None:
    loaded = session.identity_map.get(identity_key(Message, pk))
    if loaded is not None:
        session.expire(loaded)


# A settlement's statements: the session's copies of the row are not updated
# (``_expire_loaded`` does that).
# Still SENT under this very claim: a late settlement of an earlier attempt (its commit
# retried past its lease, the message claimed again meanwhile) changes nothing.
_STILL_SENT = (
    MESSAGES.c.id == bindparam("pk"),
    MESSAGES.c.state == MessageState.SENT.value,
    MESSAGES.c.attempts == bindparam("attempt"),
)
_SETTLE_RETRY = (
    update(MESSAGES)
    .where(*_STILL_SENT)
    .values(
        state=MessageState.QUEUED.value,
        updated_at=bindparam("at"),
        next_attempt_at=bindparam("due"),
    )
    .returning(MESSAGES.c.id)
)
_SETTLE_FINAL = (
    update(MESSAGES)
    .where(*_STILL_SENT)
    .values(
        state=bindparam("new_state"), updated_at=bindparam("at"), failure_reason=bindparam("why")
    )
    .returning(MESSAGES.c.peer_status)
)
_PROMOTE = (
    update(MESSAGES).where(MESSAGES.c.id == bindparam("pk")).values(state=bindparam("promoted"))
)
_INSERT_RECEIPT = insert(RECEIPTS)


def _attempt(number: int, lease: Lease | None) -> str:
    """A claim's audit detail: which attempt, and (with several replicas) by which."""
    return f"attempt {number}" + (f" by replica {lease.replica}" if lease else "")


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
        select(Message)
        .options(WITHOUT_BODY)
        .where(
            Message.direction == OUTBOUND,
            Message.state == MessageState.QUEUED.value,
            Message.expires_at <= now,
        )
    ).all()
    for row in rows:
        row.state = MessageState.EXPIRED.value
        row.failure_reason = "EXPIRED"
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


def requeue_in_flight(session: Session, *, now: dt.datetime, replica: str = "") -> int:
    """At start-up: messages this replica left SENT when it stopped go back to the queue,
    each audited ``requeued`` (its attempt was cut off and has no outcome); so do those
    of a replica whose lease has run out, and those claimed before leases existed.
    Another replica's messages still under lease are its own to settle.

    Redelivery is safe: the receiver answers a replay with its original receipt.
    """
    rows = session.scalars(
        select(Message)
        .options(*_REQUEUE_COLUMNS)
        .where(
            Message.direction == OUTBOUND,
            Message.state == MessageState.SENT.value,
            or_(
                Message.claimed_by.is_(None),
                Message.claimed_by == replica,
                Message.lease_until.is_(None),
                Message.lease_until <= now,
            ),
        )
    ).all()
    for row in rows:
        _queue_again(session, row, now, cut_off=row.claimed_by in (None, replica))
    return len(rows)


# What queueing a claim again reads of its row: not the envelope nor the content sealed at
# rest (a dead replica's window of 16 MiB envelopes would be read whole otherwise).
_REQUEUE_COLUMNS = (
    load_only(
        Message.message_id,
        Message.recipient,
        Message.state,
        Message.envelope_sha256,
        Message.attempts,
        Message.next_attempt_at,
        Message.updated_at,
        Message.claimed_by,
        Message.lease_until,
    ),
    WITHOUT_BODY,
)


def _queue_again(session: Session, row: Message, now: dt.datetime, *, cut_off: bool) -> None:
    """A claimed (SENT) message back in the queue, due now, audited ``requeued``: its
    attempt was cut off by a stop of this replica, or its replica's lease ran out."""
    row.state = MessageState.QUEUED.value
    row.next_attempt_at = now
    row.updated_at = now
    audit.append(
        session,
        AuditKind.REQUEUED,
        at=now,
        message_id=row.message_id,
        peer=row.recipient,
        envelope_sha256=row.envelope_sha256,
        detail=f"attempt {row.attempts} was cut off by a stop of this node"
        if cut_off
        else f"attempt {row.attempts}: the lease of replica {row.claimed_by} ran out",
    )
    row.claimed_by = None
    row.lease_until = None


def any_lease_run_out(session: Session, now: dt.datetime) -> bool:
    """Whether a message is SENT under a lease that has run out (its replica died)."""
    return session.connection().scalar(_LEASE_RUN_OUT, {"now": now}) is not None


def requeue_run_out(session: Session, *, now: dt.datetime) -> list[str]:
    """Queue again the messages whose replica's lease ran out; returns their recipients."""
    rows = session.scalars(
        select(Message)
        .options(*_REQUEUE_COLUMNS)
        .where(
            Message.direction == OUTBOUND,
            Message.state == MessageState.SENT.value,
            Message.lease_until <= now,
        )
    ).all()
    for row in rows:
        _queue_again(session, row, now, cut_off=False)
    return sorted({row.recipient for row in rows})


_LEASE_RUN_OUT = (
    select(MESSAGES.c.id)
    .where(
        MESSAGES.c.direction == OUTBOUND,
        MESSAGES.c.state == MessageState.SENT.value,
        MESSAGES.c.lease_until <= bindparam("now"),
    )
    .limit(1)
)


def record_link(
    session: Session, recipient: str, *, reachable: bool, at: dt.datetime, detail: str
) -> None:
    """Audit that ``recipient`` became unreachable (once per outage) or reachable again."""
    kind = AuditKind.PEER_REACHABLE if reachable else AuditKind.PEER_UNREACHABLE
    audit.append(session, kind, at=at, peer=recipient, detail=detail)


def release_queue(
    session: Session, recipient: str, *, now: dt.datetime, down_since: dt.datetime
) -> int:
    """``recipient`` answers again: everything queued for it is due now. Audited."""
    result = session.execute(
        update(Message)
        .where(
            Message.direction == OUTBOUND,
            Message.state == MessageState.QUEUED.value,
            Message.recipient == recipient,
        )
        .values(next_attempt_at=now)
    )
    released = cast("CursorResult[Any]", result).rowcount or 0
    seconds = max(0.0, (now - down_since).total_seconds())
    record_link(
        session,
        recipient,
        reachable=True,
        at=now,
        detail=f"after {seconds:.1f} s; {released} queued messages released",
    )
    return released


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
    state = plain(session).scalar(_PEER_STATE, {"agency": recipient})
    return state is None or state == PeerState.REVOKED.value


@dataclass(frozen=True)
class OperatorStep:
    """What ``operator_step`` did: the message, or why it did nothing."""

    message: Message | None
    # The message's state when it could not be cancelled or retried; None if not found.
    refused_state: str | None = None


def operator_step(
    session: Session, message_id: str, *, cancel: bool, actor: str, at: dt.datetime
) -> OperatorStep:
    """Cancel a QUEUED outbound message, or make it due now; audited.

    A message whose attempt is in flight (SENT) is neither: its outcome is on its way.
    A card update is not cancelled: it is the peer's only way to our new keys.
    """
    message = session.scalars(
        select(Message)
        .options(WITHOUT_BODY)
        .where(Message.message_id == message_id, Message.direction == OUTBOUND)
    ).first()
    if message is None:
        return OperatorStep(None)
    if message.state != MessageState.QUEUED.value:
        return OperatorStep(None, message.state)
    if cancel and message.content_type == CARD_UPDATE_CONTENT_TYPE:
        return OperatorStep(None, "a card update (the peer's only way to our new keys)")
    if cancel:
        message.state = MessageState.CANCELLED.value
        message.failure_reason = "CANCELLED"
    message.next_attempt_at = at
    message.updated_at = at
    audit.append(
        session,
        AuditKind.CANCELLED if cancel else AuditKind.RETRY_REQUESTED,
        at=at,
        message_id=message_id,
        peer=message.recipient,
        actor=actor,
        envelope_sha256=message.envelope_sha256,
    )
    return OperatorStep(message)

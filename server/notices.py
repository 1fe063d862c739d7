"""What the local API does: send notices, list them, read one, follow its timeline."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session

from liaison.keys.card import PeerCard
from liaison.keys.content_types import (
    ACKNOWLEDGEMENT_CONTENT_TYPE,
    CASE_NOTICE_CONTENT_TYPE,
    FORWARD_CONTENT_TYPE,
    REPLY_CONTENT_TYPE,
)
from liaison.keys.envelope import (
    ED25519_SIGNATURE_LENGTH,
    HPKE_SUITE_OVERHEAD,
    SealedMessage,
    reopen_signed_content,
    seal_content,
)
from liaison.keys.errors import EnvelopeError
from liaison.keys.forward import ForwardedNotice, may_forward, parse_forward
from liaison.keys.ids import is_agency_id, is_message_id
from liaison.keys.notice import (
    TLP_ORDER,
    acknowledgement_problems,
    notice_problems,
    reply_problems,
)
from liaison.keys.storage import (
    Row,
    StorageKey,
    StoredContentError,
    Summary,
    open_content_at_rest,
    open_summary,
)
from liaison.keys.text import first_control_character
from liaison.keys.times import is_valid_timestamp
from liaison.server.committer import GroupCommitter
from liaison.server.config import Limits
from liaison.server.delivery import Delivery
from liaison.server.errors import NotFound, RequestError, Withheld
from liaison.server.exchange import Clock, acknowledgement_summary, sealed_record, utc_now
from liaison.server.feed import AuditFeed
from liaison.server.own_keys import OwnKeys
from liaison.server.peers import PeerDirectory
from liaison.server.store import audit, lifecycle, outbox
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import (
    FINAL_OUTBOUND_STATES,
    AuditEvent,
    ContentFormat,
    Direction,
    Message,
    MessageState,
    Receipt,
)
from liaison.server.store.records import MessageSummaryRow, NoticeRecord
from liaison.server.store.store import ListCursor, MessageQuery, Store
from liaison.v1 import node_pb2, notice_pb2

log = logging.getLogger(__name__)
# What a listing shows for a row whose summary does not open (the log says why).
UNREADABLE_SUMMARY = "(summary unreadable: altered or damaged in the database)"

AGENCY_ID_FORM = "upper-case letters and digits in parts separated by '.' or '-', e.g. MA.DGSN.CCPI"
_DIRECTIONS: dict[int, Direction | None] = {
    node_pb2.DIRECTION_UNSPECIFIED: None,
    node_pb2.DIRECTION_INBOUND: Direction.INBOUND,
    node_pb2.DIRECTION_OUTBOUND: Direction.OUTBOUND,
}


@dataclass(frozen=True)
class SendOutcome:
    message_id: str
    state: MessageState
    # Why a FAILED or EXPIRED notice was not delivered (``Message.failure_reason``).
    reason: str = ""
    # The notice across its recipients: its id, and each recipient's message (only when
    # it was sent to several).
    notice_id: str = ""
    recipients: list[RecipientOutcome] = field(default_factory=list)


@dataclass(frozen=True)
class RecipientOutcome:
    recipient: str
    message_id: str
    state: MessageState
    reason: str


@dataclass(frozen=True)
class Page:
    """One page of a listing; ``next_cursor`` is empty when nothing more matches."""

    rows: list[MessageSummaryRow]
    next_cursor: str


@dataclass(frozen=True)
class MessageView:
    """A message as the local API shows it: ``notice`` is None once its content was
    destroyed, and ``summary`` has the subject and case reference opened."""

    message: Message
    receipt: Receipt | None
    timeline: list[AuditEvent]
    notice: notice_pb2.CaseNotice | None
    summary: MessageSummaryRow
    # A forwarded notice: where it comes from.
    forwarded_from: node_pb2.ForwardedFrom | None = None


@dataclass
class Notices:
    keys: OwnKeys
    peers: PeerDirectory
    store: Store
    committer: GroupCommitter
    delivery: Delivery
    limits: Limits
    # Opens and seals stored notices (liaison.keys.storage).
    storage: StorageKey
    clock: Clock = utc_now
    # Tell a peer when an operator first opens its notice (config ``policy.disclose_reads``).
    disclose_reads: bool = True
    # Wakes ``watch`` when the audit trail grows.
    feed: AuditFeed = field(default_factory=AuditFeed)
    # Encoded header size per (recipient, its encryption key id, content type); see ``_seal``.
    _header_sizes: dict[tuple[str, str, str], int] = field(default_factory=dict, init=False)

    async def send(
        self,
        recipient: str | Sequence[str],
        notice: notice_pb2.CaseNotice,
        *,
        actor: str,
        ttl_seconds: int = 0,
        wait_seconds: int = 0,
        idempotency_key: str = "",
    ) -> SendOutcome:
        """Seal ``notice`` to ``recipient`` (one agency id, or several) and queue it;
        optionally wait for a final state.

        To several recipients, one envelope is sealed to each under one notice id
        (the first one's message id), and all are queued in one transaction:
        every recipient is checked before anything is sealed. With an
        ``idempotency_key`` a retry of the same call (same caller, key and request)
        answers with what the first call queued, queuing nothing.

        Raises ``RequestError`` for a recipient that is not a pinned peer or is
        revoked (or named twice), an invalid notice, a ttl or wait over its limit, a
        notice that would be larger than ``limits.max_envelope_bytes`` once sealed,
        or a key that is malformed or was used for another request.
        """
        recipients = [recipient] if isinstance(recipient, str) else list(recipient)
        if not recipients:
            raise RequestError("name a recipient")
        if len(recipients) > MAX_RECIPIENTS:
            raise RequestError(f"at most {MAX_RECIPIENTS} recipients per notice")
        for name in recipients:
            if not is_agency_id(name):
                which = "the recipient" if len(recipients) == 1 else "a recipient"
                raise RequestError(f"{which} is not an agency id ({AGENCY_ID_FORM})")
        if len(set(recipients)) != len(recipients):
            raise RequestError("a recipient is named twice")
        wait = self._wait(wait_seconds)
        request_sha256 = ""
        if idempotency_key:
            _check_idempotency_key(idempotency_key)
            request_sha256 = _request_digest("send:" + ",".join(recipients), notice, ttl_seconds)
        # One trip to a worker thread for the lookups and the sealing together.
        prepared = await asyncio.to_thread(
            functools.partial(
                self._prepare_send,
                recipients,
                notice,
                actor=actor,
                idempotency_key=idempotency_key,
                request_sha256=request_sha256,
                ttl_seconds=ttl_seconds,
            )
        )
        if isinstance(prepared, str):  # a retry: what the first call queued
            return await self._outcome(prepared, wait)
        records = prepared
        # Watched before they are queued: a final state cannot slip in between, so the
        # wait needs no read of the states first (one send at a time is timed, issue 10).
        watched = [(r.message_id, self.delivery.watch(r.message_id)) for r in records if wait]
        try:
            message_id = await self._queue_all(records, actor, idempotency_key, request_sha256)
            if message_id != records[0].message_id:  # a retry: what the first call queued
                return await self._outcome(message_id, wait)
            if wait:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        asyncio.gather(*(asyncio.shield(future) for _, future in watched)), wait
                    )
                return await self._outcome(message_id, 0)
        finally:
            for watched_id, future in watched:
                self.delivery.unwatch(watched_id, future)
        # Just queued: its state is known without reading it back.
        return SendOutcome(
            message_id,
            MessageState.QUEUED,
            notice_id=message_id,
            recipients=[
                RecipientOutcome(r.recipient, r.message_id, MessageState.QUEUED, "")
                for r in records
            ]
            if len(records) > 1
            else [],
        )

    def _prepare_send(
        self,
        recipients: builtins.list[str],
        notice: notice_pb2.CaseNotice,
        *,
        actor: str,
        idempotency_key: str,
        request_sha256: str,
        ttl_seconds: int,
    ) -> str | builtins.list[NoticeRecord]:
        """``send``'s checks and sealing (on a worker thread): the message id an earlier
        call with this idempotency key queued, else a sealed record per recipient."""
        if idempotency_key:
            earlier = self._earlier(actor, idempotency_key, request_sha256)
            if earlier is not None:
                return earlier
        cards = [self._recipient(name) for name in recipients]
        own = self.keys.current.agency_id
        now = self.clock()
        notice = _complete(notice, own, now, sent_by=actor)
        if notice.originator.agency_id != own:
            raise RequestError("the originator must be this node's agency")
        problems = notice_problems(notice)
        if problems:
            raise RequestError("invalid notice: " + "; ".join(problems))
        ttl = dt.timedelta(seconds=self._ttl(ttl_seconds))
        records = [self._seal_record(notice, card, ttl, now) for card in cards]
        if len(records) > 1:
            notice_id = records[0].message_id
            records = [dataclasses.replace(r, notice_id=notice_id) for r in records]
        return records

    async def _queue_all(
        self, records: builtins.list[NoticeRecord], actor: str, key: str, request_sha256: str
    ) -> str:
        """Queue every record in one transaction (once per idempotency key); returns the
        first one's message id (the notice id)."""
        if len(records) == 1:
            return await self._queue(records[0], actor, key, request_sha256)

        def work(session: Session) -> str:
            if key:
                earlier = outbox.sent_request(session, actor, key)
                if earlier is not None:
                    return earlier.message_id
            for record in records:
                outbox.queue(session, record, actor=actor)
            if key:
                outbox.remember_request(session, actor, key, request_sha256, records[0].message_id)
            return records[0].message_id

        message_id = await self.committer.submit(work)
        for record in records:
            self.delivery.notify(record.recipient)
        return message_id

    def _recipient(self, recipient: str) -> PeerCard:
        """The pinned card of a recipient we may send to; ``RequestError`` if there is none.
        Reads the database: call it on a worker thread."""
        card = self.peers.peer(recipient)
        if card is None:
            raise RequestError(f"{recipient} is not a pinned peer; add its card first")
        if recipient == self.keys.current.agency_id:
            raise RequestError("a node does not send notices to itself")
        # The database, not the trust snapshot: a revocation counts from the moment it is made.
        if self.store.is_revoked(recipient):
            raise RequestError(
                f"{recipient} is revoked on this node: nothing is sent to it until an operator "
                f"runs `liaison peers reinstate {recipient}`"
            )
        return card

    async def _queue(
        self,
        record: NoticeRecord,
        actor: str,
        idempotency_key: str,
        request_sha256: str,
        also: Callable[[Session], None] | None = None,
    ) -> str:
        """Queue ``record`` (once per idempotency key) and start its delivery; ``also`` runs
        in the same transaction when it is queued. Returns the message id.

        With a free place in its peer's delivery window, the message is claimed in the
        transaction that queues it and handed to the worker from memory. The hand-over
        happens when the transaction ends, whether or not this call is still waiting
        (a caller's deadline does not strand a claimed message).
        """
        recipient = record.recipient
        size = len(record.envelope)
        claim_at = self.clock() if self.delivery.reserve(recipient, size) else None
        lease = self.delivery.lease() if claim_at is not None else None

        def work(session: Session) -> tuple[str, outbox.PendingDelivery | None]:
            if idempotency_key:
                message_id, pending = outbox.queue_once(
                    session,
                    record,
                    actor=actor,
                    key=idempotency_key,
                    request_sha256=request_sha256,
                    claim_at=claim_at,
                    lease=lease,
                )
                if message_id != record.message_id:
                    return message_id, None  # a retry: queued the first time
            else:
                pending = outbox.queue(session, record, actor=actor, claim_at=claim_at, lease=lease)
            if also is not None:
                also(session)
            return record.message_id, pending

        def queued(done: asyncio.Future[tuple[str, outbox.PendingDelivery | None]]) -> None:
            pending = None if done.cancelled() or done.exception() else done.result()[1]
            if claim_at is None:
                self.delivery.notify(recipient)
            else:
                self.delivery.hand_over(recipient, size, pending)

        submitted = asyncio.ensure_future(self.committer.submit(work))
        submitted.add_done_callback(queued)
        message_id, _pending = await asyncio.shield(submitted)
        return message_id

    async def acknowledge(
        self,
        message_id: str,
        status: notice_pb2.AckStatus.ValueType,
        comment: str,
        *,
        actor: str,
        idempotency_key: str = "",
    ) -> SendOutcome:
        """Acknowledge a received notice or reply to its sender; returns the acknowledgement.

        Raises ``RequestError`` (a status other than acknowledged, action taken or
        declined; a comment over its limit or with control characters; a message
        that is not a received notice) and ``NotFound``.
        """
        _check_message_id(message_id)
        if status not in OPERATOR_ACK_STATUSES:
            raise RequestError("the status must be acknowledged, action-taken or declined")
        original = await self._received(message_id)
        request_sha256 = ""
        if idempotency_key:  # a retry first: its state has moved on since the first call
            _check_idempotency_key(idempotency_key)
            asked = notice_pb2.Acknowledgement(
                message_id=message_id, status=status, comment=comment
            )
            request_sha256 = _request_digest(f"ack:{original.sender}", asked, 0)
            earlier = await asyncio.to_thread(self._earlier, actor, idempotency_key, request_sha256)
            if earlier is not None:
                return await self._outcome(earlier, 0)
        # A RED notice is acknowledged only by a reader it names.
        answered = await asyncio.to_thread(self._open, original)
        if answered is not None:
            await self._check_red(original, answered, actor)
        state = lifecycle.ACK_STATES[status]
        if lifecycle.INBOUND_RANK[state.value] <= lifecycle.INBOUND_RANK.get(original.state, 0):
            raise RequestError(
                f"the message is {original.state} already; an acknowledgement only moves it on "
                "(read, acknowledged, action-taken, declined)"
            )
        return await self._send_acknowledgement(
            original,
            status,
            comment,
            actor=actor,
            idempotency_key=idempotency_key,
            request_sha256=request_sha256,
        )

    async def _send_acknowledgement(
        self,
        original: Message,
        status: notice_pb2.AckStatus.ValueType,
        comment: str,
        *,
        actor: str,
        idempotency_key: str = "",
        request_sha256: str = "",
    ) -> SendOutcome:
        now = self.clock()
        ack = notice_pb2.Acknowledgement(
            message_id=original.message_id, status=status, comment=comment
        )
        ack.at.FromDatetime(now.replace(microsecond=0))
        problems = acknowledgement_problems(ack)
        if problems:
            raise RequestError("invalid acknowledgement: " + "; ".join(problems))
        card = await asyncio.to_thread(self._recipient, original.sender)
        state = lifecycle.ACK_STATES[status]
        record = await asyncio.to_thread(
            self._seal_other,
            ack.SerializeToString(),
            content_type=ACKNOWLEDGEMENT_CONTENT_TYPE,
            summary=acknowledgement_summary(state.value),
            card=card,
            original=original,
            now=now,
        )

        also = _answered_here(
            original,
            state,
            AuditKind.READ if state is MessageState.READ else AuditKind.ACKNOWLEDGED,
            f"{state.value}; acknowledgement {record.message_id}",
            actor=actor,
            at=now,
        )
        message_id = await self._queue(record, actor, idempotency_key, request_sha256, also)
        return await self._outcome(message_id, 0)

    async def reply(
        self,
        message_id: str,
        notice: notice_pb2.CaseNotice,
        *,
        actor: str,
        ttl_seconds: int = 0,
        idempotency_key: str = "",
    ) -> SendOutcome:
        """Answer a received notice or reply with ``notice``, sent to its sender.

        The case reference, category, priority and handling of the message answered,
        and its subject prefixed with "Re: ", fill what ``notice`` leaves unset;
        handling may stay or get stricter, never looser. Raises ``RequestError``
        and ``NotFound``.
        """
        _check_message_id(message_id)
        original = await self._received(message_id)
        request_sha256 = ""
        if idempotency_key:
            _check_idempotency_key(idempotency_key)
            request_sha256 = _request_digest(f"reply:{message_id}", notice, ttl_seconds)
            earlier = await asyncio.to_thread(self._earlier, actor, idempotency_key, request_sha256)
            if earlier is not None:
                return await self._outcome(earlier, 0)
        answered = await asyncio.to_thread(self._open, original)
        if answered is None:
            raise RequestError("the message answered has no notice to answer (destroyed?)")
        # A RED notice is answered only by a reader it names: a reply carries its subject.
        await self._check_red(original, answered, actor)
        now = self.clock()
        own = self.keys.current.agency_id
        notice = _complete(_carried_over(notice, answered), own, now, sent_by=actor)
        if _looser(notice.handling, answered.handling):
            raise RequestError(
                "a reply may keep or tighten the handling of the message it answers, "
                "never loosen it"
            )
        reply = notice_pb2.Reply(in_reply_to=original.message_id, notice=notice)
        problems = reply_problems(reply)
        if problems:
            raise RequestError("invalid reply: " + "; ".join(problems))
        ttl = self._ttl(ttl_seconds)
        card = await asyncio.to_thread(self._recipient, original.sender)
        record = await asyncio.to_thread(
            self._seal_other,
            reply.SerializeToString(),
            content_type=REPLY_CONTENT_TYPE,
            summary=Summary(subject=notice.subject, case_reference=notice.case_reference),
            card=card,
            original=original,
            now=now,
            notice=notice,
            ttl=dt.timedelta(seconds=ttl),
        )

        also = _answered_here(
            original,
            MessageState.REPLIED,
            AuditKind.REPLIED,
            f"reply {record.message_id}",
            actor=actor,
            at=now,
        )
        message_id = await self._queue(record, actor, idempotency_key, request_sha256, also)
        return await self._outcome(message_id, 0)

    async def forward(
        self,
        message_id: str,
        recipient: str,
        *,
        actor: str,
        readers: Sequence[str] = (),
        comment: str = "",
        ttl_seconds: int = 0,
        idempotency_key: str = "",
    ) -> SendOutcome:
        """Forward a received case notice to the third agency ``recipient``, whole and
        under its originator's signature (docs/PROTOCOL.md 10.5), and tell the
        originator by an acknowledgement queued in the same transaction.

        Refused (``RequestError``, audited) when the notice's handling does not let it
        go to ``recipient``: TLP:AMBER+STRICT and RED only to an agency its originator
        named in ``forwardable_to``. Also ``RequestError`` for anything but a case notice
        received from its originator, a recipient that is the originator, not pinned or
        revoked, an originator that cannot be told, or an envelope that no longer opens;
        ``NotFound``; ``Withheld`` for a TLP:RED notice ``actor`` may not read.
        """
        _check_message_id(message_id)
        original = await self._received(message_id)
        if original.content_type != CASE_NOTICE_CONTENT_TYPE:
            raise RequestError(
                "only a case notice received from its originator can be forwarded; ask the "
                "originator of a reply or a forwarded notice to send it"
            )
        if not is_agency_id(recipient):
            raise RequestError(f"the recipient is not an agency id ({AGENCY_ID_FORM})")
        if recipient == original.sender:
            raise RequestError(f"{recipient} sent this notice: it holds it already")
        request_sha256 = ""
        if idempotency_key:
            _check_idempotency_key(idempotency_key)
            asked = node_pb2.ForwardRequest(
                message_id=message_id, recipient=recipient, readers=readers, comment=comment
            )
            request_sha256 = _request_digest(f"forward:{recipient}", asked, ttl_seconds)
            earlier = await asyncio.to_thread(self._earlier, actor, idempotency_key, request_sha256)
            if earlier is not None:
                return await self._outcome(earlier, 0)
        notice = await asyncio.to_thread(self._open, original)
        if notice is None:
            raise RequestError("the notice's content was destroyed: nothing to forward")
        await self._check_red(original, notice, actor)
        await self._check_forwardable(original, notice, recipient, actor)
        card = await asyncio.to_thread(self._recipient, recipient)
        try:  # the originator learns of every forward: it must be one we can tell
            originator = await asyncio.to_thread(self._recipient, original.sender)
        except RequestError as error:
            raise RequestError(f"not forwarded: its originator cannot be told ({error})") from None
        try:
            header_bytes, content, signature = await asyncio.to_thread(
                reopen_signed_content, original.envelope, self.keys.ring.decryption_keys
            )
        except EnvelopeError as error:
            raise RequestError(f"not forwarded: {error}; ask {original.sender}") from None
        forward = notice_pb2.Forward(
            original_header=header_bytes,
            original_content=content,
            original_signature=signature,
            readers=readers,
            comment=comment,
            forwarded_by=actor,
        )
        forwarded, problems = parse_forward(forward, forwarder=self.keys.current.agency_id)
        if forwarded is None:
            raise RequestError("invalid forward: " + "; ".join(problems))
        ttl = self._ttl(ttl_seconds)
        now = self.clock()
        record = await asyncio.to_thread(
            self._seal_other,
            forward.SerializeToString(),
            content_type=FORWARD_CONTENT_TYPE,
            summary=Summary(subject=notice.subject, case_reference=notice.case_reference),
            card=card,
            original=original,
            now=now,
            notice=forwarded.shown(),
            ttl=dt.timedelta(seconds=ttl),
        )
        telling = await asyncio.to_thread(
            self._forward_told, original, originator, recipient, record.message_id, now
        )

        def also(session: Session) -> None:
            outbox.queue(session, telling, actor=actor)
            audit.append(
                session,
                AuditKind.FORWARDED,
                at=now,
                actor=actor,
                message_id=original.message_id,
                peer=original.sender,
                detail=f"to {recipient} as {record.message_id}; originator told by "
                f"{telling.message_id}",
            )

        message_id = await self._queue(record, actor, idempotency_key, request_sha256, also)
        self.delivery.notify(original.sender)
        return await self._outcome(message_id, 0)

    async def _check_forwardable(
        self, original: Message, notice: notice_pb2.CaseNotice, recipient: str, actor: str
    ) -> None:
        """``RequestError``, audited, unless ``notice``'s handling lets it go to ``recipient``."""
        if may_forward(notice, recipient):
            return
        handling = notice_pb2.Tlp.Name(notice.handling).removeprefix("TLP_")
        why = (
            f"TLP:{handling.replace('_', '+')} and its originator {original.sender} did "
            f"not name {recipient} among the agencies it may go to (forwardable_to)"
        )
        await self._audit_message(
            original, AuditKind.ACCESS_DENIED, actor, f"forward to {recipient} refused: {why}"
        )
        raise RequestError(f"not forwarded: the notice is {why}; ask {original.sender}")

    def _forward_told(
        self,
        original: Message,
        originator: PeerCard,
        recipient: str,
        forward_id: str,
        now: dt.datetime,
    ) -> NoticeRecord:
        """The acknowledgement that tells a forwarded notice's originator where it went."""
        told = notice_pb2.Acknowledgement(
            message_id=original.message_id,
            status=notice_pb2.ACK_STATUS_FORWARDED,
            forwarded_to=recipient,
            forward_id=forward_id,
        )
        told.at.FromDatetime(now.replace(microsecond=0))
        return self._seal_other(
            told.SerializeToString(),
            content_type=ACKNOWLEDGEMENT_CONTENT_TYPE,
            summary=acknowledgement_summary(f"forwarded to {recipient}"),
            card=originator,
            original=original,
            now=now,
        )

    async def cancel(self, message_id: str, *, actor: str) -> SendOutcome:
        """Cancel a queued outbound message: it is not sent. ``RequestError``, ``NotFound``."""
        return await self._operator_step(message_id, cancel=True, actor=actor)

    async def retry(self, message_id: str, *, actor: str) -> SendOutcome:
        """Try a queued outbound message now (and its peer, if it is down, now too)."""
        return await self._operator_step(message_id, cancel=False, actor=actor)

    async def _operator_step(self, message_id: str, *, cancel: bool, actor: str) -> SendOutcome:
        _check_message_id(message_id)
        now = self.clock()
        step = await self.committer.submit(
            lambda session: outbox.operator_step(
                session, message_id, cancel=cancel, actor=actor, at=now
            )
        )
        message = step.message
        if message is None:
            if step.refused_state is None:
                raise NotFound(f"no outbound message {message_id}")
            verb = "cancelled" if cancel else "retried"
            why = (
                "its delivery attempt is in flight; its outcome is on its way"
                if step.refused_state == MessageState.SENT.value
                else f"it is {step.refused_state}"
            )
            raise RequestError(f"only a queued message can be {verb}: {why}")
        if cancel:
            self.delivery.cancelled(message_id)
        else:
            self.delivery.retry_now(message.recipient)
        return SendOutcome(message_id, MessageState(message.state))

    async def watch(self, after: int, kinds: Sequence[str]) -> AsyncIterator[AuditEvent]:
        """Every message event after audit seq ``after`` (of ``kinds``, if given), in
        order, as it happens; ends only when the caller goes.

        The events come from the audit trail, whose seq is gap-free in commit
        order: a caller that resumes from the last seq it saw misses and repeats
        nothing. Raises ``RequestError`` for an unknown kind.
        """
        known = {kind.value for kind in AuditKind}
        unknown = [kind for kind in kinds if kind not in known]
        if unknown:
            raise RequestError(f"unknown event kind {unknown[0][:64]!r}")
        wanted = frozenset(kinds)
        while True:
            events, reached = await asyncio.to_thread(
                self.store.message_events, after, wanted, WATCH_BATCH
            )
            for event in events:
                yield event
            if reached > after:
                after = reached
                continue
            await self.feed.wait(WATCH_IDLE_SECONDS)

    async def thread(self, message_id: str) -> builtins.list[MessageSummaryRow]:
        """The conversation of ``message_id``: the first notice, then acknowledgements and
        replies, oldest first. Raises ``RequestError`` and ``NotFound``."""
        _check_message_id(message_id)
        rows = await asyncio.to_thread(self._thread, message_id)
        if not rows:
            raise NotFound(f"no message {message_id}")
        return rows

    def _thread(self, message_id: str) -> builtins.list[MessageSummaryRow]:
        with self.store.read() as session:
            messages = lifecycle.thread(session, message_id)
            rows = [MessageSummaryRow.of(message) for message in messages]
        return [self._opened_summary(row) for row in rows]

    async def _received(self, message_id: str) -> Message:
        """The received notice or reply ``message_id``; ``NotFound`` or ``RequestError``."""
        message = await asyncio.to_thread(self.store.received_message, message_id)
        if message is None:
            raise NotFound(f"no received message {message_id}")
        if message.content_type not in NOTICE_CONTENT_TYPES:
            raise RequestError(
                "only received notices, replies and forwards are acknowledged or answered"
            )
        return message

    def _seal_other(
        self,
        content: bytes,
        *,
        content_type: str,
        summary: Summary,
        card: PeerCard,
        original: Message,
        now: dt.datetime,
        notice: notice_pb2.CaseNotice | None = None,
        ttl: dt.timedelta | None = None,
    ) -> NoticeRecord:
        """Seal an acknowledgement or a reply of ``original`` to ``card``, and at rest."""
        lifetime = ttl or dt.timedelta(seconds=self.limits.default_ttl_seconds)
        sealed = self._seal(content, card, lifetime, now, content_type)
        record = sealed_record(
            self.storage,
            Direction.OUTBOUND,
            sealed.header,
            notice,
            content=content,
            envelope=sealed.envelope,
            envelope_sha256=sealed.envelope_sha256,
            summary=summary,
        )
        return dataclasses.replace(
            record,
            refers_to=original.message_id,
            thread_id=original.thread_id or original.message_id,
        )

    async def _outcome(self, message_id: str, wait: int) -> SendOutcome:
        """The message's state (each recipient's, for a notice to several), after waiting
        up to ``wait`` seconds for each to reach a final one."""
        if wait:
            group = await asyncio.to_thread(self.store.outbound_states, message_id)
            await asyncio.gather(*(self._settled(row[1], wait) for row in group))
        rows = await asyncio.to_thread(self.store.outbound_states, message_id)
        if not rows:
            raise NotFound(f"no message {message_id}")
        outcomes = [
            RecipientOutcome(recipient, one, MessageState(state), reason or "")
            for recipient, one, state, reason in rows
        ]
        first = outcomes[0]
        return SendOutcome(
            first.message_id,
            first.state,
            first.reason,
            notice_id=message_id,
            recipients=outcomes if len(outcomes) > 1 else [],
        )

    async def recipients(self, message_id: str) -> builtins.list[RecipientOutcome]:
        """Each recipient's message of the notice ``message_id`` belongs to, as they are
        now; [] for a notice sent to one recipient."""
        group = await asyncio.to_thread(self.store.notice_messages, message_id)
        return [
            RecipientOutcome(
                m.recipient, m.message_id, MessageState(m.state), m.failure_reason or ""
            )
            for m in group
        ]

    async def _settled(self, message_id: str, wait: int) -> None:
        """Until the outbound message is final, or ``wait`` seconds."""
        settled = self.delivery.watch(message_id)
        try:
            state = await asyncio.to_thread(self.store.state, message_id)
            if state not in {s.value for s in FINAL_OUTBOUND_STATES}:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(settled), wait)
        finally:
            self.delivery.unwatch(message_id, settled)

    def _earlier(self, actor: str, key: str, request_sha256: str) -> str | None:
        """The message a call with this idempotency key queued before, if any; a key used
        for another request (or another kind of request) is refused."""
        earlier = self._sent_request(actor, key)
        if earlier is None:
            return None
        if earlier.request_sha256 != request_sha256:
            raise RequestError(
                "this idempotency key was used for another request; use a new key for each "
                "notice, acknowledgement or reply"
            )
        return earlier.message_id

    def _sent_request(self, actor: str, key: str) -> outbox.EarlierRequest | None:
        with self.store.lookup() as connection:
            return outbox.earlier_request(connection, actor, key)

    def _seal_record(
        self, notice: notice_pb2.CaseNotice, card: PeerCard, ttl: dt.timedelta, now: dt.datetime
    ) -> NoticeRecord:
        """Seal ``notice`` to ``card`` (``_seal``), and for the database under a data key."""
        content = notice.SerializeToString()
        sealed = self._seal(content, card, ttl, now)
        return sealed_record(
            self.storage,
            Direction.OUTBOUND,
            sealed.header,
            notice,
            content=content,
            envelope=sealed.envelope,
            envelope_sha256=sealed.envelope_sha256,
        )

    def _seal(
        self,
        content: bytes,
        card: PeerCard,
        ttl: dt.timedelta,
        now: dt.datetime,
        content_type: str = CASE_NOTICE_CONTENT_TYPE,
    ) -> SealedMessage:
        """Seal ``content`` if the envelope will fit ``limits.max_envelope_bytes``.

        The size is known before sealing. Of the header, only the recipient's
        agency id varies in length (message ids, key ids and the content type
        have fixed lengths, and timestamps encode in five bytes from 1978 to
        3058), so its size is measured once per recipient key by sealing nothing.
        """
        # The card of ours the recipient pins: it verifies what that card's key signs.
        sender = self.keys.for_peer(card.agency_id)
        key = (card.agency_id, card.encryption_key_id, content_type)
        header_size = self._header_sizes.get(key)
        if header_size is None:
            probe = seal_content(
                b"",
                content_type=content_type,
                sender=sender,
                recipient=card,
                ttl=ttl,
                now=now,
            )
            header_size = self._header_sizes[key] = probe.header.ByteSize()
        size = sealed_envelope_size(len(content), header_size)
        limit = self.limits.max_envelope_bytes
        if size > limit:
            raise RequestError(
                f"the notice is {size:,} bytes sealed; this node's limit is {limit:,} bytes "
                "(limits.max_envelope_bytes)"
            )
        return seal_content(
            content,
            content_type=content_type,
            sender=sender,
            recipient=card,
            ttl=ttl,
            now=now,
        )

    async def status(self, message_id: str, *, wait_seconds: int = 0) -> MessageView:
        """Like ``get``; with ``wait_seconds``, first wait for a final outbound state.

        Raises ``RequestError`` for a malformed id or a wait over the limit, ``NotFound``.
        """
        _check_message_id(message_id)
        wait = self._wait(wait_seconds)
        settled = self.delivery.watch(message_id)
        try:
            view = await self.get(message_id)
            pending = view.message.state not in {s.value for s in FINAL_OUTBOUND_STATES}
            if wait and pending and view.message.direction == Direction.OUTBOUND.value:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(settled), wait)
                view = await self.get(message_id)
        finally:
            self.delivery.unwatch(message_id, settled)
        return view

    async def list(self, request: node_pb2.ListMessagesRequest, *, subjects: bool = True) -> Page:
        """One page of message summaries matching ``request``'s filters.

        Flash and urgent first, then the newest (or by time only, ``newest_first``).
        The filters on clear columns run in the database; the case reference and
        the text are matched in the summaries once opened, a batch at a time, at
        most ``limits.list_scan_max`` rows per page. Raises ``RequestError`` for a
        filter that is malformed or over its limit.
        """
        query, cursor, limit, case_reference, text = self._query(request)
        return await asyncio.to_thread(
            functools.partial(self._page, subjects=subjects),
            query,
            cursor,
            limit,
            case_reference,
            text,
        )

    def _query(
        self, request: node_pb2.ListMessagesRequest
    ) -> tuple[MessageQuery, ListCursor | None, int, str, str]:
        if request.direction not in _DIRECTIONS:
            raise RequestError(
                f"direction {request.direction} is unknown; use 0 (both), 1 (inbound) or "
                "2 (outbound)"
            )
        if request.limit > self.limits.list_max:
            raise RequestError(
                f"the limit is {request.limit:,}; this node lists at most "
                f"{self.limits.list_max:,} messages (limits.list_max)"
            )
        states = []
        for state in request.states:
            if state not in _STATE_NAMES:
                raise RequestError(f"state {state} is unknown")
            states.append(_STATE_NAMES[state])
        if request.peer and not is_agency_id(request.peer):
            raise RequestError(f"the peer is not an agency id ({AGENCY_ID_FORM})")
        for name, enum in (
            ("category", notice_pb2.Category),
            ("handling", notice_pb2.Tlp),
            ("priority", notice_pb2.Priority),
        ):
            if getattr(request, name) not in enum.values():
                raise RequestError(f"{name} {getattr(request, name)} is unknown")
        for name in ("case_reference", "text"):
            value = getattr(request, name)
            if len(value) > MAX_FILTER_TEXT or first_control_character(value) is not None:
                raise RequestError(
                    f"the {name.replace('_', ' ')} filter must be one line of at most "
                    f"{MAX_FILTER_TEXT} characters"
                )
        since = _moment("since", request.since) if request.HasField("since") else None
        until = _moment("until", request.until) if request.HasField("until") else None
        query = MessageQuery(
            direction=_DIRECTIONS[request.direction],
            states=tuple(states),
            peer=request.peer,
            category=request.category,
            handling=request.handling,
            priority=request.priority,
            since=since,
            until=until,
            newest_first=request.newest_first,
        )
        cursor = _parse_cursor(request.cursor) if request.cursor else None
        limit = request.limit or self.limits.list_default
        return query, cursor, limit, request.case_reference, request.text.casefold()

    def _page(
        self,
        query: MessageQuery,
        cursor: ListCursor | None,
        limit: int,
        case_reference: str,
        text: str,
        *,
        subjects: bool = True,
    ) -> Page:
        """Scan in batches until ``limit`` rows match (and one more shows that more do).

        Without ``subjects`` (a caller who may not see them) the text matches case
        references only; a TLP:RED subject is never matched: a yes or no on a substring,
        asked often enough, would spell out what the listing hides."""
        found: builtins.list[MessageSummaryRow] = []
        scanned = 0
        batch = limit + 1 if not (case_reference or text) else max(4 * limit, 200)
        while True:
            rows = self.store.page(query, cursor, batch)
            for row in rows:
                opened = self._opened_summary(row)
                if _matches(opened, case_reference, text, subjects=subjects):
                    if len(found) == limit:
                        return Page(found, _cursor_text(found[-1]))
                    found.append(opened)
            scanned += len(rows)
            if len(rows) < batch:
                return Page(found, "")
            cursor = ListCursor(rows[-1].priority, rows[-1].pk)
            if scanned >= self.limits.list_scan_max:
                # Not all rows were looked at: the caller may go on from here.
                return Page(found, _cursor_text(rows[-1]))

    def _opened_summary(self, row: MessageSummaryRow) -> MessageSummaryRow:
        if row.content_format != ContentFormat.SEALED_V1.value:
            return row.opened(row.subject, row.case_reference)  # clear, or destroyed: empty
        try:
            summary = open_summary(
                self.storage,
                summary=row.summary,
                storage_key_id=row.storage_key_id,
                row=Row(row.direction, row.sender, row.message_id),
            )
        except StoredContentError as error:
            log.error("the summary of stored message %s does not open: %s", row.message_id, error)
            return row.opened(UNREADABLE_SUMMARY, "")
        return row.opened(summary.subject, summary.case_reference)

    async def get(self, message_id: str, *, opened_by: str | None = None) -> MessageView:
        """The message, its notice opened from its sealed form (None if destroyed).

        With ``opened_by`` (an operator's call), a received notice or reply opened
        for the first time becomes READ, audited, and the sender gets a read
        notification unless this node does not disclose reads (``policy``).

        Raises ``RequestError`` for a malformed id, ``NotFound``, and
        ``StoredContentError`` if the stored notice does not open (altered or
        damaged in the database; nothing is changed).
        """
        _check_message_id(message_id)
        found = await asyncio.to_thread(self.store.message, message_id)
        if found is None:
            raise NotFound(f"no message {message_id}")
        message, receipt = found
        notice, forwarded_from = await asyncio.to_thread(self._opened, message)
        if opened_by is not None and notice is not None:
            await self._check_red(message, notice, opened_by)
        if opened_by is not None and notice is not None and _unread(message):
            await self._first_read(message, opened_by)
            found = await asyncio.to_thread(self.store.message, message_id)
            assert found is not None
            message, receipt = found
        timeline = await asyncio.to_thread(self.store.timeline, message)
        summary = MessageSummaryRow.of(message)
        if notice is not None:
            summary = summary.opened(notice.subject, notice.case_reference)
        else:  # destroyed (nothing to open), or not a notice: its sealed summary says what
            summary = await asyncio.to_thread(self._opened_summary, summary)
        return MessageView(message, receipt, timeline, notice, summary, forwarded_from)

    def _open(self, message: Message) -> notice_pb2.CaseNotice | None:
        """The stored notice in clear; None if its content was destroyed, or if the
        message is not a notice (a card update: its summary says what it is). A forward
        gives the forwarded notice, with the readers the forward names here."""
        return self._opened(message, provenance=False)[0]

    def _opened(
        self, message: Message, *, provenance: bool = True
    ) -> tuple[notice_pb2.CaseNotice | None, node_pb2.ForwardedFrom | None]:
        """``_open``'s notice and, for a forward (with ``provenance``), where it comes
        from, its originator's signature checked: one decryption for both."""
        content = self._content(message)
        if content is None:
            return None, None
        try:
            if message.content_type == REPLY_CONTENT_TYPE:
                return notice_pb2.Reply.FromString(content).notice, None
            if message.content_type == FORWARD_CONTENT_TYPE:
                forwarded = self._forwarded(message, content)
                origin = self._provenance(forwarded) if provenance else None
                return forwarded.shown(), origin
            return notice_pb2.CaseNotice.FromString(content), None
        except DecodeError:
            raise StoredContentError(
                f"the stored notice {message.message_id} opens but does not parse"
            ) from None

    def _forwarded(self, message: Message, content: bytes) -> ForwardedNotice:
        forwarder = message.sender if message.direction == Direction.INBOUND.value else None
        forwarded, _ = parse_forward(
            notice_pb2.Forward.FromString(content),
            forwarder=forwarder or self.keys.current.agency_id,
        )
        if forwarded is None:
            raise StoredContentError(f"the stored forward {message.message_id} is not valid")
        return forwarded

    def _content(self, message: Message) -> bytes | None:
        """The stored content bytes of a notice, reply or forward, opened at rest."""
        if message.content_format == ContentFormat.DESTROYED.value:
            return None
        if message.content_type not in NOTICE_CONTENT_TYPES:
            return None
        if message.content_format == ContentFormat.CLEAR.value:
            return message.content  # not sealed yet (see Node)
        if message.content_format != ContentFormat.SEALED_V1.value:
            raise StoredContentError(
                f"the stored notice {message.message_id} has an unknown content format"
            )
        try:
            return open_content_at_rest(
                self.storage,
                content=message.content,
                data_key=message.data_key,
                storage_key_id=message.storage_key_id,
                row=Row(message.direction, message.sender, message.message_id),
            )
        except StoredContentError as error:
            log.error("stored message %s does not open: %s", message.message_id, error)
            raise StoredContentError(
                f"the stored notice {message.message_id} does not open: {error}; the "
                "database was altered or damaged (restore it from a backup)"
            ) from None

    def _provenance(self, forwarded: ForwardedNotice) -> node_pb2.ForwardedFrom:
        """Where a forwarded notice comes from, its originator's signature checked against
        the pins as they are now."""
        return node_pb2.ForwardedFrom(
            originator=forwarded.originator,
            original_message_id=forwarded.header.message_id,
            original_sent_at=forwarded.header.created_at,
            forwarded_by=forwarded.forward.forwarded_by,
            comment=forwarded.forward.comment,
            originator_signature_verified=forwarded.verified_by(self.peers.trust) is True,
        )

    async def _check_red(
        self, message: Message, notice: notice_pb2.CaseNotice, caller: str
    ) -> None:
        """A TLP:RED body goes only to a reader the notice names (received) or to the
        identity that sent it (sent); anyone else is refused, and that is audited."""
        if notice.handling != notice_pb2.TLP_RED:
            return
        inbound = message.direction == Direction.INBOUND.value
        if (caller in notice.readers) if inbound else (caller == notice.sent_by):
            return
        await self._audit_message(
            message,
            AuditKind.ACCESS_DENIED,
            caller,
            "TLP:RED body withheld: "
            + ("not a reader it names" if inbound else "not the identity that sent it"),
        )
        raise Withheld(
            f"message {message.message_id} is TLP:RED and {caller} is not "
            + ("one of the readers it names" if inbound else "the identity that sent it")
        )

    async def opened(self, message: Message, actor: str, *, what: str = "body") -> None:
        """Record that ``actor`` is given a notice's body (or ``what`` else of it): who,
        when, which. The caller awaits it before it leaves (nothing without its audit
        event)."""
        detail = f"{message.direction} notice's {what} given to {actor}"
        await self._audit_message(message, AuditKind.OPENED, actor, detail)

    async def _audit_message(
        self, message: Message, kind: AuditKind, actor: str, detail: str
    ) -> None:
        """One audit event about ``message``, its peer the other agency of it."""
        outbound = message.direction == Direction.OUTBOUND.value
        at = self.clock()
        await self.committer.submit(
            lambda session: audit.append(
                session,
                kind,
                at=at,
                actor=actor,
                message_id=message.message_id,
                peer=message.recipient if outbound else message.sender,
                detail=detail,
            )
        )

    async def _first_read(self, message: Message, actor: str) -> None:
        """An operator opened a received notice for the first time: READ, and tell the sender."""
        if self.disclose_reads:
            try:
                await self._send_acknowledgement(
                    message, notice_pb2.ACK_STATUS_READ, "", actor=actor
                )
                return
            except RequestError as error:  # e.g. the sender is revoked meanwhile: stay local
                log.warning("no read notification for %s: %s", message.message_id, error)
        now = self.clock()

        def work(session: Session) -> None:
            if lifecycle.advance_inbound(session, message.id, MessageState.READ, at=now):
                audit.append(
                    session,
                    AuditKind.READ,
                    at=now,
                    message_id=message.message_id,
                    peer=message.sender,
                    actor=actor,
                    detail="read (not disclosed to the sender)",
                )

        await self.committer.submit(work)

    def _ttl(self, ttl_seconds: int) -> int:
        """An envelope's lifetime in seconds: ``ttl_seconds``, or the node's default for 0;
        ``RequestError`` for a negative one or one over ``limits.max_lifetime_days``."""
        ttl = ttl_seconds or self.limits.default_ttl_seconds
        if ttl < 0:
            raise RequestError("ttl must not be negative")
        if ttl > self.limits.max_lifetime_days * 86400:
            raise RequestError(f"ttl exceeds the limit of {self.limits.max_lifetime_days} days")
        return ttl

    def _wait(self, wait_seconds: int) -> int:
        """``wait_seconds`` if within ``limits.max_wait_seconds``, else ``RequestError``."""
        most = self.limits.max_wait_seconds
        if wait_seconds > most:
            raise RequestError(
                f"wait_seconds is {wait_seconds:,}; this node waits at most {most:,} seconds "
                "(limits.max_wait_seconds)"
            )
        return wait_seconds


# What holds a case notice: a notice, a reply, a forward.
NOTICE_CONTENT_TYPES = frozenset(
    {CASE_NOTICE_CONTENT_TYPE, REPLY_CONTENT_TYPE, FORWARD_CONTENT_TYPE}
)
# What an operator may say of a received message (READ is the node's own notification).
OPERATOR_ACK_STATUSES = frozenset(
    {
        notice_pb2.ACK_STATUS_ACKNOWLEDGED,
        notice_pb2.ACK_STATUS_ACTION_TAKEN,
        notice_pb2.ACK_STATUS_DECLINED,
    }
)
MAX_SUBJECT = 300


def _unread(message: Message) -> bool:
    return (
        message.direction == Direction.INBOUND.value
        and message.state == MessageState.RECEIVED.value
        and message.content_type in NOTICE_CONTENT_TYPES
    )


def _answered_here(
    original: Message,
    state: MessageState,
    kind: AuditKind,
    detail: str,
    *,
    actor: str,
    at: dt.datetime,
) -> Callable[[Session], None]:
    """Write work for an operator's answer to a received message: its new state, audited
    on its own timeline (queued with the acknowledgement or reply that carries it)."""

    def work(session: Session) -> None:
        lifecycle.advance_inbound(session, original.id, state, at=at)
        audit.append(
            session,
            kind,
            at=at,
            message_id=original.message_id,
            peer=original.sender,
            actor=actor,
            detail=detail,
        )

    return work


def _looser(handling: int, than: int) -> bool:
    """True if ``handling`` is a looser TLP code than ``than``."""
    order = [int(code) for code in TLP_ORDER]
    return handling in order and than in order and order.index(handling) < order.index(than)


def _carried_over(
    notice: notice_pb2.CaseNotice, answered: notice_pb2.CaseNotice
) -> notice_pb2.CaseNotice:
    """``notice`` with what it leaves unset taken from the notice it answers."""
    reply = notice_pb2.CaseNotice()
    reply.CopyFrom(notice)
    for name in ("case_reference", "category", "priority", "handling"):
        if not getattr(reply, name):
            setattr(reply, name, getattr(answered, name))
    if not reply.subject:
        subject = answered.subject
        reply.subject = (subject if subject.startswith("Re: ") else f"Re: {subject}")[:MAX_SUBJECT]
    if not reply.HasField("evaluation"):
        reply.evaluation.CopyFrom(answered.evaluation)
    if reply.handling == notice_pb2.TLP_RED and not reply.readers and answered.sent_by:
        # Back to whoever sent what is answered: the one identity there who may read it.
        reply.readers.append(answered.sent_by)
    return reply


MAX_FILTER_TEXT = 200
MAX_RECIPIENTS = 50
# Watch: events read per query, and how long a quiet follower waits before looking anyway.
WATCH_BATCH = 500
WATCH_IDLE_SECONDS = 5.0
_STATE_NAMES = {
    node_pb2.MessageState.Value(f"MESSAGE_STATE_{state.name}"): state.value
    for state in MessageState
}
_CURSOR = re.compile(r"v1\.([0-9]{1,2})\.([0-9]{1,19})")


def _moment(name: str, stamp: Timestamp) -> dt.datetime:
    if not is_valid_timestamp(stamp):
        raise RequestError(f"{name} is not a valid time")
    return stamp.ToDatetime(tzinfo=dt.UTC)


def _cursor_text(row: MessageSummaryRow) -> str:
    return f"v1.{row.priority}.{row.pk}"


def _parse_cursor(text: str) -> ListCursor:
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise RequestError("the cursor is not one this node gave")
    return ListCursor(int(match[1]), int(match[2]))


def _matches(
    row: MessageSummaryRow, case_reference: str, text: str, *, subjects: bool = True
) -> bool:
    """The sealed-field filters, on a row whose summary is opened."""
    if case_reference and row.case_reference != case_reference:
        return False
    in_subject = subjects and row.handling != notice_pb2.TLP_RED and text in row.subject.casefold()
    return not text or in_subject or text in row.case_reference.casefold()


IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _check_idempotency_key(key: str) -> None:
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise RequestError("the idempotency key must be 1 to 64 of A-Z a-z 0-9 . _ : -")


def _request_digest(recipient: str, notice: ProtoMessage, ttl_seconds: int) -> str:
    """What identifies a request across its retries: recipient, notice as sent, ttl."""
    digest = hashlib.sha256()
    for part in (recipient.encode(), notice.SerializeToString(deterministic=True)):
        digest.update(len(part).to_bytes(8, "big") + part)
    digest.update(ttl_seconds.to_bytes(8, "big"))
    return digest.hexdigest()


def _check_message_id(message_id: str) -> None:
    # Never repeat a malformed id: it may carry control characters or megabytes.
    if not is_message_id(message_id):
        raise RequestError("message id is not a UUIDv7")


def sealed_envelope_size(content_size: int, header_size: int) -> int:
    """Bytes of the ``SealedEnvelope`` that seals ``content_size`` bytes under a
    header of ``header_size`` bytes (docs/PROTOCOL.md): a ``SignedContent`` of the
    content and the inner signature, HPKE-encrypted, beside the header and the
    outer signature."""
    signature = _bytes_field(ED25519_SIGNATURE_LENGTH)
    ciphertext = HPKE_SUITE_OVERHEAD + _bytes_field(content_size) + signature
    return _bytes_field(header_size) + _bytes_field(ciphertext) + signature


def _bytes_field(size: int) -> int:
    """A protobuf bytes field numbered 1 to 15: tag, length varint, bytes; absent when empty."""
    return 1 + _varint_size(size) + size if size else 0


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _complete(
    notice: notice_pb2.CaseNotice, agency_id: str, now: dt.datetime, *, sent_by: str
) -> notice_pb2.CaseNotice:
    """A copy with the originator agency and creation time filled in where unset, and
    stamped with the identity that sends it (whatever the caller wrote there)."""
    completed = notice_pb2.CaseNotice()
    completed.CopyFrom(notice)
    completed.sent_by = sent_by
    if not completed.originator.agency_id:
        completed.originator.agency_id = agency_id
    if not completed.HasField("created_at"):
        completed.created_at.FromDatetime(now.replace(microsecond=0))
    return completed

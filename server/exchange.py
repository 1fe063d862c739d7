"""Receiving envelopes from peers: check, open, store once, sign a receipt.

Every outcome returns a signed receipt and leaves an audit event; only an
accepted notice is stored. The checks themselves live in ``liaison.keys``;
this module adds the node's state: the trust snapshot, the replay check
against stored messages, and the group commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from liaison.keys.card import PeerCard
from liaison.keys.envelope import (
    CheckedEnvelope,
    EnvelopeLimits,
    OpenedNotice,
    check_envelope,
    issue_receipt,
    open_checked,
)
from liaison.keys.errors import EnvelopeRejected, reason_name
from liaison.keys.identity import NodeIdentity
from liaison.keys.ids import is_agency_id, is_message_id
from liaison.keys.storage import Row, StorageKey, Summary, seal_content_at_rest
from liaison.server.committer import GroupCommitter
from liaison.server.own_keys import OwnKeys
from liaison.server.peers import PeerDirectory
from liaison.server.store import cards, inbox, lifecycle
from liaison.server.store.models import Direction
from liaison.server.store.records import NoticeRecord
from liaison.server.store.store import Store
from liaison.v1 import envelope_pb2, notice_pb2

Clock = Callable[[], dt.datetime]
log = logging.getLogger(__name__)
MAX_DETAIL = 200


class _ReceiptSigner:
    """Signs an ACCEPTED receipt naming its own log entry, inside the storing transaction;
    the last one signed is the one committed (a batch that fails runs again)."""

    def __init__(
        self,
        receiver: NodeIdentity,
        header: envelope_pb2.EnvelopeHeader,
        envelope_sha256: bytes,
        now: dt.datetime,
    ) -> None:
        self._receiver, self._header, self._digest, self._now = (
            receiver,
            header,
            envelope_sha256,
            now,
        )
        self.signed = b""

    def __call__(self, log_index: int) -> bytes:
        self.signed = issue_receipt(
            receiver=self._receiver,
            message_id=self._header.message_id,
            envelope_sha256=self._digest,
            sender=self._header.sender,
            status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
            now=self._now,
            log_index=log_index,
        )
        return self.signed


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sealed_record(
    storage: StorageKey,
    direction: Direction,
    header: envelope_pb2.EnvelopeHeader,
    notice: notice_pb2.CaseNotice | None,
    *,
    content: bytes,
    envelope: bytes,
    envelope_sha256: bytes,
    summary: Summary | None = None,
) -> NoticeRecord:
    """The record to store of a message, its content sealed at rest under a fresh data key.

    A notice's summary is its subject and case reference; other content (a card
    update) gives its own ``summary``. CPU work (AES-GCM over the whole
    content): run it off the event loop.
    """
    if summary is None:
        assert notice is not None
        summary = Summary(subject=notice.subject, case_reference=notice.case_reference)
    sealed = seal_content_at_rest(
        storage, content, summary, Row(direction.value, header.sender, header.message_id)
    )
    return NoticeRecord.of(
        header,
        notice,
        envelope=envelope,
        envelope_sha256=envelope_sha256,
        content=sealed.content,
        data_key=sealed.data_key,
        storage_key_id=sealed.storage_key_id,
        summary=sealed.summary,
    )


def card_update_summary(card: PeerCard) -> Summary:
    """What a listing shows of a card update: which card of whom."""
    return Summary(subject=f"Card update: {card.agency_id} card {card.sequence}", case_reference="")


def acknowledgement_summary(state: str) -> Summary:
    return Summary(subject=f"Acknowledgement: {state}", case_reference="")


def _summary_of(opened: OpenedNotice) -> Summary | None:
    """The listing summary of content that is not a plain notice (None: the notice's own)."""
    if opened.card_update is not None:
        return card_update_summary(opened.card_update)
    ack = opened.acknowledgement
    if ack is not None and ack.status == notice_pb2.ACK_STATUS_FORWARDED:
        return acknowledgement_summary(f"forwarded to {ack.forwarded_to}")
    if ack is not None:
        return acknowledgement_summary(lifecycle.ACK_STATES[ack.status].value)
    return None


def _unraised(error: Exception) -> EnvelopeRejected:
    """``error`` as a refusal with no traceback, cause or context; a check that broke
    (any other error) is a MALFORMED_ENVELOPE refusal, logged by its type."""
    if isinstance(error, EnvelopeRejected):
        return EnvelopeRejected(
            error.reason, error.detail, message_id=error.message_id, sender=error.sender
        )
    log.error("an envelope could not be checked: %s", type(error).__name__)
    return EnvelopeRejected(envelope_pb2.REJECT_REASON_MALFORMED_ENVELOPE, "could not be checked")


@dataclass
class Receiver:
    keys: OwnKeys
    peers: PeerDirectory
    store: Store
    committer: GroupCommitter
    limits: EnvelopeLimits
    # Wraps the data key of every stored notice (liaison.keys.storage).
    storage: StorageKey
    clock: Clock = utc_now
    # Told (sender, envelope bytes) of every envelope stored: the peers' quotas.
    on_stored: Callable[[str, int], None] | None = None

    async def deliver(self, envelope: bytes, peer: str) -> bytes:
        """Process one envelope from the pinned peer ``peer`` (its agency id).

        The caller has matched the connection's certificate to that peer's
        pinned one. Returns the serialized ``SignedReceipt``: the original one
        for a replay.
        """
        now = self.clock()
        try:
            checked = check_envelope(
                envelope,
                receiver=self.keys.current,
                trust=self.peers.trust,
                authenticated_peer=peer,
                now=now,
                limits=self.limits,
            )
        except Exception as error:
            return await self._refuse(error, envelope, peer, now)
        digest = checked.envelope_sha256.hex()
        header = checked.header
        # One trip to a worker thread: the replay check, the opening, the answered message
        # and the sealing at rest. A store that fails there is UNAVAILABLE to the caller,
        # who retries, not a verdict on the envelope.
        prepared = await asyncio.to_thread(self._prepare, checked, envelope)
        if isinstance(prepared, inbox.StoredReceipt):
            return await self._duplicate(prepared, header, digest, now)
        if isinstance(prepared, EnvelopeRejected):
            return await self._refuse(prepared, envelope, peer, now)
        opened, found, record = prepared
        answered: lifecycle.Answered | None = None
        if found is not None:  # check 19a: it answers a message we sent the sender
            if isinstance(found, lifecycle.Refusal):
                refusal = EnvelopeRejected(
                    envelope_pb2.RejectReason.Value(f"REJECT_REASON_{found.value}"),
                    "names a message this node did not send to the sender",
                    message_id=header.message_id,
                    sender=header.sender,
                )
                return await self._refuse(refusal, envelope, peer, now)
            answered = found
            record = dataclasses.replace(
                record, refers_to=answered.message_id, thread_id=answered.thread_id
            )
        sign_receipt = _ReceiptSigner(
            self.keys.for_peer(peer), header, checked.envelope_sha256, now
        )
        update = opened.card_update
        ack = opened.acknowledgement
        is_reply = opened.reply is not None
        del opened
        grace_until = now + self.limits.max_lifetime + self.limits.clock_skew

        def accept(session: Session) -> inbox.StoredReceipt | None:
            earlier = inbox.accept(session, record, sign_receipt=sign_receipt, received_at=now)
            if earlier is None and answered is not None:
                if ack is not None and ack.status == notice_pb2.ACK_STATUS_FORWARDED:
                    lifecycle.forwarded_by_peer(
                        session,
                        answered,
                        peer=header.sender,
                        to=ack.forwarded_to,
                        forward_id=ack.forward_id,
                        at=now,
                    )
                elif ack is not None:
                    lifecycle.acknowledged_by_peer(
                        session,
                        answered,
                        peer=header.sender,
                        state=lifecycle.ACK_STATES[ack.status],
                        at=now,
                    )
                elif is_reply:
                    lifecycle.replied_by_peer(
                        session, answered, peer=header.sender, reply_id=header.message_id, at=now
                    )
            if earlier is None and update is not None:
                cards.apply_card_update(
                    session,
                    card=update,
                    replaced=checked.sender.signed_card,
                    replaced_fingerprint=checked.sender.fingerprint,
                    grace_until=grace_until,
                    message_id=header.message_id,
                    at=now,
                )
            return earlier

        earlier = await self.committer.submit(accept)
        if earlier is not None:
            return await self._duplicate(earlier, header, digest, now)

        if self.on_stored is not None:
            self.on_stored(header.sender, len(envelope))
        if update is not None:
            log.info(
                "pinned card %d of %s, from its card update", update.sequence, update.agency_id
            )
            await asyncio.to_thread(self.peers.refresh)
        log.info("received %s from %s", header.message_id, header.sender)
        return sign_receipt.signed

    async def refuse_unparsed(self, request: bytes, peer: str) -> bytes:
        """Answer request bytes that are not a ``DeliverRequest`` from the pinned peer
        ``peer``: a ``MALFORMED_ENVELOPE`` rejection over the request's own bytes,
        audited once. Returns the serialized ``SignedReceipt``."""
        rejection = EnvelopeRejected(
            envelope_pb2.REJECT_REASON_MALFORMED_ENVELOPE, "the request is not a DeliverRequest"
        )
        return await self._reject(rejection, request, peer, self.clock())

    async def _refuse(
        self, error: Exception, envelope: bytes, peer: str, now: dt.datetime
    ) -> bytes:
        """Reject for a failed check; a check that broke must still refuse, audit and answer."""
        refusal = error if isinstance(error, EnvelopeRejected) else _unraised(error)
        return await self._reject(refusal, envelope, peer, now)

    def _prepare(
        self, checked: CheckedEnvelope, envelope: bytes
    ) -> (
        inbox.StoredReceipt
        | EnvelopeRejected
        | tuple[OpenedNotice, lifecycle.Answered | lifecycle.Refusal | None, NoticeRecord]
    ):
        """``deliver``'s work between the checks and the write (on a worker thread): the
        receipt already issued for this sender and id; else the reason the envelope
        does not open; else what it holds, the message it answers (if any) and the
        record to store. A store that fails raises."""
        header = checked.header
        with self.store.lookup() as connection:
            earlier = inbox.stored_receipt(connection, header.sender, header.message_id)
        if earlier is not None:
            return earlier
        if header.recipient_encryption_key_id not in self.keys.ring.decryption_keys:
            # Perhaps sealed to a key rotated in by another process a moment ago, and
            # announced before this node looked at its key store again.
            self.keys.reload_if_changed()
        ring = self.keys.ring
        try:
            opened = open_checked(
                checked, receiver=ring.current, decryption_keys=ring.decryption_keys
            )
        except Exception as error:  # every failure is a refusal (``_refuse``)
            # A copy that was never raised: the error itself holds, through its traceback
            # and the errors it was raised from, the frames that hold the envelope and
            # what was opened of it, in a cycle only the garbage collector frees (32
            # refused 16 MiB envelopes kept 1.5 GB alive; tests/test_hostile_network.py).
            return _unraised(error)
        found = None
        if opened.refers_to is not None:
            with self.store.read() as session:
                found = lifecycle.answered(session, header.sender, opened.refers_to)
        record = sealed_record(
            self.storage,
            Direction.INBOUND,
            header,
            opened.notice,
            content=opened.content,
            envelope=envelope,
            envelope_sha256=checked.envelope_sha256,
            summary=_summary_of(opened),
        )
        return opened, found, record

    async def _duplicate(
        self,
        earlier: inbox.StoredReceipt,
        header: envelope_pb2.EnvelopeHeader,
        digest: str,
        now: dt.datetime,
    ) -> bytes:
        same = earlier.envelope_sha256 == digest
        log_index = await self.committer.submit(
            lambda session: inbox.record_duplicate(
                session,
                sender=header.sender,
                message_id=header.message_id,
                envelope_sha256=digest,
                at=now,
                same_bytes=same,
            )
        )
        if same:
            return earlier.signed_receipt
        return issue_receipt(
            receiver=self.keys.for_peer(header.sender),
            message_id=header.message_id,
            envelope_sha256=bytes.fromhex(digest),
            sender=header.sender,
            status=envelope_pb2.RECEIPT_STATUS_DUPLICATE,
            now=now,
            log_index=log_index,
        )

    async def _reject(
        self,
        rejection: EnvelopeRejected,
        envelope: bytes,
        peer: str,
        now: dt.datetime,
    ) -> bytes:
        digest = hashlib.sha256(envelope).digest()
        reason = reason_name(rejection.reason)
        log.warning("rejected envelope sha256:%s from %s: %s", digest.hex()[:16], peer, reason)
        # What the header claimed is untrusted: keep it only if well-formed.
        message_id = rejection.message_id if is_message_id(rejection.message_id) else ""
        claimed = rejection.sender if is_agency_id(rejection.sender) else ""
        log_index = await self.committer.submit(
            lambda session: inbox.record_rejection(
                session,
                claimed_sender=claimed,
                authenticated_peer=peer,
                message_id=message_id,
                envelope_sha256=digest.hex(),
                reason=reason,
                detail=rejection.detail[:MAX_DETAIL],
                at=now,
            )
        )
        return issue_receipt(
            receiver=self.keys.for_peer(peer),
            message_id=message_id,
            envelope_sha256=digest,
            sender=claimed or peer,
            status=envelope_pb2.RECEIPT_STATUS_REJECTED,
            reason=rejection.reason,
            now=now,
            log_index=log_index,
        )

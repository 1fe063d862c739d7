"""What auditors ask of a node's audit log: does it verify, what happened, and the proof.

Everything here reads a database (a running node's, a stopped node's, or a backup copy)
and never writes. Notice bodies and subjects are never read; case references are
sealed at rest, so a case filter needs the storage key (the home's passphrase).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from liaison.keys.card import PeerCard, parse_card
from liaison.keys.checkpoint import (
    cosignature_key_id,
    origin_of,
    parse_note,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from liaison.keys.errors import CardError, CheckpointError, KeysError
from liaison.keys.evidence import Bundle, PeerLogProof, ProvenEntry, encode_bundle
from liaison.keys.ids import is_agency_id, is_message_id
from liaison.keys.merkle import inclusion_proof
from liaison.keys.rotation import verify_card_update
from liaison.keys.storage import Row, StorageKey, StoredContentError, open_summary
from liaison.server.checkpoints import cosigned_note
from liaison.server.errors import RequestError
from liaison.server.store import auditlog, checkpoints
from liaison.server.store.audit import INBOUND_EVENTS, OUTBOUND_EVENTS, AuditKind
from liaison.server.store.auditlog import StoredTree, Verdict
from liaison.server.store.models import (
    WITHOUT_BODY,
    AuditCheckpoint,
    AuditEvent,
    AuditLeaf,
    ContentFormat,
    Direction,
    Message,
    Peer,
    Receipt,
)
from liaison.server.store.store import Store
from liaison.v1 import envelope_pb2


@dataclass(frozen=True)
class LogVerdict:
    """``audit verify``: the tree's verdict, then the checkpoints' and cosignatures'."""

    tree: Verdict
    checkpoints: int = 0
    # (checkpoint size, peer) of every cosignature that verified.
    cosignatures: tuple[tuple[int, str], ...] = ()
    # The newest checkpoint, if any: its size and the peers that cosigned it.
    newest: tuple[int, tuple[str, ...]] | None = None
    # The first problem with a checkpoint (the tree verified), and its size.
    problem: str | None = None
    checkpoint_size: int | None = None
    # Our card that anchors the checkpoint signatures (the newest in the chain).
    anchor_fingerprint: str | None = None
    # Cosignatures by a card the peers table no longer holds: not checkable here.
    unchecked: tuple[tuple[int, str], ...] = ()
    # Split views this node found as a witness of its peers (evidence kept).
    alarms: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.tree.ok and self.problem is None


def verify_log(session: Session, anchor: PeerCard | None = None) -> LogVerdict:
    """Recompute the tree, then check every checkpoint: its root against the recomputed
    tree, its signature by a card of ours (the chain of cards kept in ``own_cards``,
    which must end in ``anchor`` when given), and every peer cosignature under the
    peer's pinned card."""
    tree = auditlog.verify(session)
    if not tree.ok:
        return LogVerdict(tree)
    alarms = tuple(
        f"{row.peer}: {row.refusal} at {row.detected_at.isoformat()}"
        for row in checkpoints.evidence(session)
    )
    chain = _own_chain(session, anchor)
    if isinstance(chain, str):
        return LogVerdict(tree, problem=chain, alarms=alarms)
    peers = _peer_cards(session)
    stored = StoredTree(session)
    rows = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.size)).all()
    missing = _missing_checkpoint(session, {row.size for row in rows})
    if missing is not None:
        size, seq = missing
        return LogVerdict(
            tree,
            checkpoints=len(rows),
            problem=f"the checkpoint that event {seq} says was signed is not kept (deleted)",
            checkpoint_size=size,
            alarms=alarms,
        )
    cosigned: list[tuple[int, str]] = []
    unchecked: list[tuple[int, str]] = []
    for row in rows:
        problem = _checkpoint_problem(row, tree, stored, chain)
        if problem is not None:
            return LogVerdict(
                tree,
                checkpoints=len(rows),
                problem=problem,
                checkpoint_size=row.size,
                alarms=alarms,
            )
        for cosignature in checkpoints.cosignatures(session, row.size):
            verdict = _cosignature_verdict(
                row.note, cosignature.line, peers.get(cosignature.peer, []), cosignature.peer
            )
            if verdict is False:
                return LogVerdict(
                    tree,
                    checkpoints=len(rows),
                    problem=f"the cosignature by {cosignature.peer} does not verify",
                    checkpoint_size=row.size,
                    alarms=alarms,
                )
            (cosigned if verdict else unchecked).append((row.size, cosignature.peer))
    newest = None
    if rows:
        last = rows[-1].size
        newest = (last, tuple(peer for size, peer in cosigned if size == last))
    return LogVerdict(
        tree,
        checkpoints=len(rows),
        cosignatures=tuple(cosigned),
        newest=newest,
        anchor_fingerprint=chain[-1].fingerprint if chain else None,
        unchecked=tuple(unchecked),
        alarms=alarms,
    )


_SIGNED = re.compile(r"tree size (\d+), root ([0-9a-f]{64})")


def _missing_checkpoint(session: Session, kept: set[int]) -> tuple[int, int] | None:
    """(size, seq) of the first ``checkpoint-signed`` event whose checkpoint is not kept:
    the log itself says which checkpoints were signed, and it verified."""
    signed = auditlog.select_events(session, events=frozenset({AuditKind.CHECKPOINT_SIGNED}))
    for event in signed:
        found = _SIGNED.fullmatch(event.detail or "")
        if found is None:
            return (0, event.seq)
        if int(found[1]) not in kept:  # its root is checked with the row's (below)
            return (int(found[1]), event.seq)
    return None


def _own_chain(session: Session, anchor: PeerCard | None) -> list[PeerCard] | str:
    """Our cards that signed checkpoints, each handed trust by the one before."""
    chain: list[PeerCard] = []
    for row in checkpoints.own_cards(session):
        try:
            card = parse_card(row.signed_card)
            if chain:
                if row.card_update is None:
                    return f"our card {row.sequence} is kept without the update to it"
                successor = verify_card_update(row.card_update, pinned=chain[-1])
                if successor.signed_card != card.signed_card:
                    return f"our card {row.sequence} is not the one its update names"
        except KeysError as error:
            return f"our card {row.sequence} does not verify: {error}"
        chain.append(card)
    if anchor is not None and chain and chain[-1].signed_card != anchor.signed_card:
        known = any(card.signed_card == anchor.signed_card for card in chain)
        if not known:
            return "the checkpoints are signed by cards that do not lead to this node's card"
    return chain


def _peer_cards(session: Session) -> dict[str, list[PeerCard]]:
    cards: dict[str, list[PeerCard]] = {}
    for peer in session.scalars(select(Peer)):
        for raw in (peer.signed_card, peer.previous_card):
            if raw is None:
                continue
            try:
                cards.setdefault(peer.agency_id, []).append(parse_card(raw))
            except CardError:
                continue
    return cards


def _checkpoint_problem(
    row: AuditCheckpoint, tree: Verdict, stored: StoredTree, chain: list[PeerCard]
) -> str | None:
    if row.size > tree.size:
        return (
            f"the checkpoint of size {row.size} is larger than the log ({tree.size} events): "
            "the log was rolled back"
        )
    if row.size == 0 or stored.root(row.size) != row.root:
        return f"the checkpoint of size {row.size} names a root the log does not have"
    if not chain:
        return "no card of ours is kept to check the checkpoint signatures with"
    origin = origin_of(chain[-1].agency_id)
    for card in chain:
        try:
            checkpoint = verify_checkpoint(
                row.note,
                origin=origin,
                name=origin,
                ed25519_public=card.signing_key,
                mldsa65_public=card.mldsa65_key,
            )
        except CheckpointError:
            continue
        if (checkpoint.size, checkpoint.root) != (row.size, row.root):
            return f"the checkpoint of size {row.size} is signed for another tree"
        return None
    return f"the checkpoint of size {row.size} is not signed by a card of ours"


def _cosignature_verdict(note: bytes, line: bytes, cards: list[PeerCard], peer: str) -> bool | None:
    """True if ``line`` verifies under one of ``peer``'s cards; False if it is by one of
    them (or by nobody's key name) and does not verify; None if it is by a key of
    ``peer``'s that is no longer on file (a card the peer replaced twice since)."""
    try:
        signature = parse_note(note + line).signatures[-1]
    except CheckpointError:
        return False
    name = witness_name(peer)
    if signature.name != name:
        return False
    for card in cards:
        if signature.key_id != cosignature_key_id(name, card.signing_key):
            continue
        try:
            verify_cosignature(note, signature, name=name, ed25519_public=card.signing_key)
        except CheckpointError:
            return False
        return True
    return None


# Queries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditScope:
    """Which events: every field given must hold (``message_ids`` from a case lookup)."""

    message_ids: frozenset[str] | None = None
    peer: str | None = None
    actor: str | None = None
    events: frozenset[str] = frozenset()
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def events(
    session: Session, scope: AuditScope, *, limit: int | None = None, after: int = 0
) -> list[AuditEvent]:
    """Events in ``scope`` after seq ``after``, in sequence order."""
    return auditlog.select_events(
        session,
        message_ids=scope.message_ids,
        peer=scope.peer,
        actor=scope.actor,
        events=scope.events,
        since=scope.since,
        until=scope.until,
        limit=limit,
        after=after,
    )


AUDIT_PAGE = 500
AUDIT_PAGE_MAX = 5000
MAX_SEQ = 2**63 - 1  # SQLite's (and PostgreSQL's BIGINT's) largest integer
MAX_ACTOR = 128  # the audit_events.actor column


@dataclass(frozen=True)
class AuditReader:
    """The audit trail as the local API pages it for auditors (``ListAuditEvents``)."""

    store: Store

    async def page(
        self, scope: AuditScope, *, after: int, limit: int
    ) -> tuple[list[AuditEvent], bool]:
        """Up to ``limit`` events in ``scope`` after seq ``after`` (0: ``AUDIT_PAGE``),
        and whether more may follow. Raises ``RequestError`` for a limit over
        ``AUDIT_PAGE_MAX`` or an unknown event kind."""
        if limit > AUDIT_PAGE_MAX:
            raise RequestError(f"at most {AUDIT_PAGE_MAX} events per page, not {limit:,}")
        if after > MAX_SEQ:
            raise RequestError(f"after is beyond the largest sequence number ({MAX_SEQ})")
        if scope.message_ids is not None and not all(map(is_message_id, scope.message_ids)):
            raise RequestError("message_id is not a message id (a UUIDv7)")
        if scope.peer is not None and not is_agency_id(scope.peer):
            raise RequestError("peer is not an agency id")
        if scope.actor is not None and len(scope.actor) > MAX_ACTOR:
            raise RequestError(f"actor is longer than {MAX_ACTOR} characters")
        known = {kind.value for kind in AuditKind}
        unknown = sorted(scope.events - known)
        if unknown:
            raise RequestError(f"unknown event kind {unknown[0][:64]!r}")
        size = limit or AUDIT_PAGE

        def read() -> list[AuditEvent]:
            with self.store.read() as session:
                return events(session, scope, limit=size + 1, after=after)

        rows = await asyncio.to_thread(read)
        return rows[:size], len(rows) > size


@dataclass(frozen=True)
class MessageFacts:
    """A message's metadata for auditors: never its subject or body."""

    message_id: str
    direction: str
    peer: str
    state: str
    category: int
    priority: int
    handling: int
    envelope_sha256: str
    created_at: dt.datetime
    content_type: str
    case_reference: str | None = None
    events: tuple[AuditEvent, ...] = field(default=())


def message_facts(
    session: Session, message_ids: Iterable[str] | None, scope: AuditScope
) -> list[MessageFacts]:
    """The messages named (or all in ``scope``'s time range and peer), with their events."""
    query = select(Message).options(WITHOUT_BODY).order_by(Message.id)
    if message_ids is not None:
        query = query.where(Message.message_id.in_(list(message_ids)))
    if scope.since is not None:
        query = query.where(Message.created_at >= scope.since)
    if scope.until is not None:
        query = query.where(Message.created_at < scope.until)
    found = []
    for message in session.scalars(query):
        outbound = message.direction == Direction.OUTBOUND.value
        peer = message.recipient if outbound else message.sender
        if scope.peer is not None and peer != scope.peer:
            continue
        kinds = OUTBOUND_EVENTS if outbound else INBOUND_EVENTS
        timeline = auditlog.select_events(
            session,
            message_ids=frozenset({message.message_id}),
            peer=peer,
            events=frozenset(kind.value for kind in kinds),
        )
        found.append(
            MessageFacts(
                message_id=message.message_id,
                direction=message.direction,
                peer=peer,
                state=message.state,
                category=message.category,
                priority=message.priority,
                handling=message.handling,
                envelope_sha256=message.envelope_sha256,
                created_at=message.created_at,
                content_type=message.content_type,
                events=tuple(timeline),
            )
        )
    return found


def case_message_ids(
    session: Session, storage: StorageKey, case_reference: str, *, scan_max: int
) -> frozenset[str]:
    """Ids of the messages filed under ``case_reference``: the sealed summaries of at most
    ``scan_max`` messages (newest first) are opened to find them."""
    found = set()
    rows = session.execute(
        select(
            Message.message_id,
            Message.direction,
            Message.sender,
            Message.case_reference,
            Message.content_format,
            Message.summary,
            Message.storage_key_id,
        )
        .order_by(Message.id.desc())
        .limit(scan_max)
    )
    for message_id, direction, sender, clear, content_format, summary, key_id in rows:
        if content_format != ContentFormat.SEALED_V1.value:
            reference = clear
        else:
            try:
                reference = open_summary(
                    storage,
                    summary=summary,
                    storage_key_id=key_id,
                    row=Row(direction, sender, message_id),
                ).case_reference
            except StoredContentError:
                continue
        if reference == case_reference:
            found.add(message_id)
    return frozenset(found)


# Evidence ----------------------------------------------------------------------------


class NoEvidence(Exception):
    """An evidence bundle cannot be made (no such message, no checkpoint covers it)."""


@dataclass(frozen=True)
class EvidencePlan:
    """Our side of a bundle, and what to ask the peer for its side."""

    bundle: Bundle
    # The receiver's log index the receipt names, and a checkpoint of the receiver's log
    # that we cosigned covering it (size, note with our cosignature), if any.
    peer_index: int | None
    peer_checkpoint: tuple[int, bytes, bytes] | None


def evidence_plan(session: Session, message_id: str, our_agency: str) -> EvidencePlan:
    """Our entries of ``message_id`` with inclusion proofs against our newest checkpoint
    (with its cosignatures), and the receipt; raises ``NoEvidence``."""
    message = session.scalars(
        select(Message)
        .options(WITHOUT_BODY)
        .where(Message.message_id == message_id)
        .order_by(Message.direction.desc(), Message.id)
        .limit(1)
    ).first()
    if message is None:
        raise NoEvidence(f"no message {message_id}")
    outbound = message.direction == Direction.OUTBOUND.value
    peer = message.recipient if outbound else message.sender
    kinds = OUTBOUND_EVENTS if outbound else INBOUND_EVENTS
    timeline = auditlog.select_events(
        session,
        message_ids=frozenset({message_id}),
        peer=peer,
        events=frozenset(kind.value for kind in kinds),
    )
    # The newest checkpoint the peer cosigned: a bundle proves nothing without that.
    newest = checkpoints.latest_cosigned_by(session, peer)
    if newest is None:
        raise NoEvidence(
            f"no checkpoint of the audit log has been cosigned by {peer} yet "
            "(liaison audit checkpoint asks for one)"
        )
    covered = [event for event in timeline if event.seq <= newest.size]
    if not covered:
        raise NoEvidence(
            f"the newest checkpoint {peer} cosigned (size {newest.size}) does not cover the "
            "message yet; sign one first (liaison audit checkpoint)"
        )
    tree = StoredTree(session)
    entries = tuple(
        ProvenEntry(
            index=event.seq - 1,
            entry=session.get_one(AuditLeaf, event.seq).entry,
            proof=tuple(inclusion_proof(tree, event.seq - 1, newest.size)),
        )
        for event in covered
    )
    receipt_row = session.scalars(select(Receipt).where(Receipt.message_pk == message.id)).first()
    receipt = receipt_row.signed_receipt if receipt_row is not None else b""
    peer_index, peer_checkpoint = None, None
    if outbound and receipt:
        parsed = envelope_pb2.Receipt.FromString(
            envelope_pb2.SignedReceipt.FromString(receipt).receipt
        )
        if parsed.HasField("log_index"):
            peer_index = parsed.log_index
            witnessed = checkpoints.witnessed_covering(session, peer, peer_index + 1)
            if witnessed is not None:
                peer_checkpoint = (
                    witnessed.size,
                    witnessed.note,
                    witnessed.cosignature,
                )
    bundle = Bundle(
        log=our_agency,
        message_id=message_id,
        peer=peer,
        checkpoint=cosigned_note(session, newest, only=peer),
        entries=entries,
        receipt=receipt,
    )
    return EvidencePlan(bundle, peer_index, peer_checkpoint)


def with_peer_proof(plan: EvidencePlan, entry: bytes, proof: list[bytes]) -> bytes:
    """The bundle with the receiver's entry and proof (as the receiver answered)."""
    assert plan.peer_index is not None
    assert plan.peer_checkpoint is not None
    _size, note, cosignature = plan.peer_checkpoint
    peer_log = PeerLogProof(
        checkpoint=note + cosignature,
        entry=ProvenEntry(index=plan.peer_index, entry=entry, proof=tuple(proof)),
    )
    return encode_bundle(replace(plan.bundle, peer_log=peer_log))

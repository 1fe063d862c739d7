"""Signed checkpoints of the audit log, and each peer as the other's witness (PROTOCOL.md 11).

``Checkpointer`` signs a checkpoint of our log (origin, tree size, root) at a fixed
cadence when the log grew, or on demand, and sends it to every active peer with a
consistency proof from the last checkpoint that peer cosigned; a verified cosignature is
stored beside the checkpoint. ``Witness`` is the other side: it checks a peer's
checkpoint against the last one it cosigned for that peer and cosigns, or refuses and
keeps both signed checkpoints as evidence. ``prove_inclusion`` answers a peer's request
for an inclusion proof of an entry about it.

Signed with every card of ours that some peer pins (during a rotation, the old and the
new one): a signed note carries any number of signatures, and each peer verifies the one
its pinned card makes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from sqlalchemy.orm import Session

from liaison.keys.card import PeerCard
from liaison.keys.checkpoint import (
    Checkpoint,
    Note,
    NoteLimits,
    NoteSignature,
    add_signatures,
    cosign,
    ed25519_key_id,
    mldsa65_key_id,
    origin_of,
    parse_body,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from liaison.keys.errors import CheckpointError
from liaison.keys.identity import NodeIdentity
from liaison.keys.merkle import consistency_proof, inclusion_proof, verify_consistency
from liaison.server.committer import GroupCommitter
from liaison.server.config import Limits
from liaison.server.own_keys import OwnKeys
from liaison.server.peers import PeerDirectory
from liaison.server.store import checkpoints
from liaison.server.store.audit import AuditKind
from liaison.server.store.auditlog import StoredTree
from liaison.server.store.models import AuditCheckpoint, AuditLeaf
from liaison.server.store.store import Store
from liaison.v1 import audit_pb2, peer_pb2, peer_pb2_grpc

log = logging.getLogger(__name__)

# A witness request holds a note (at most NoteLimits.max_note_bytes, 128 KiB) and a proof
# of at most 64 hashes, with framing.
MAX_WITNESS_REQUEST = 136 * 1024
MAX_PROOF_HASHES = 64
MAX_LOG_SIZE = 2**63 - 1
# Evidence kept about one peer at most; more (the same refusal again and again) is logged.
MAX_EVIDENCE_PER_PEER = 100
REFUSAL_AUDIT_SECONDS = 60.0
R = peer_pb2.WitnessRefusal
S = peer_pb2.WitnessStatus
# Our own notes with every peer's cosignature: more lines than signed-note's 16 (one per
# peer). An evidence bundle carries only the one cosignature it needs.
COSIGNED_LIMITS = NoteLimits(max_note_bytes=4 * 1024 * 1024, max_signatures=4096)


def _name(enum: Any, value: int, prefix: str) -> str:
    """An enum value's name without ``prefix``; a number no version defines as is."""
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return f"UNKNOWN-{int(value)}"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ProofDenied(Exception):
    """A peer asked for an inclusion proof it may not have (``code`` says how to answer;
    ``audit``, if given, is the detail of the ``access-denied`` event it deserves)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, audit: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.audit = audit


@dataclass(frozen=True)
class SignedCheckpoint:
    """One of our checkpoints, and the peers whose cosignature of it was verified."""

    size: int
    root: bytes
    # The signed note with our signatures only, as signed.
    note: bytes
    signed_at: dt.datetime
    cosigners: tuple[str, ...]
    # The note with every cosignature line appended: what a verifier reads.
    cosigned: bytes


def _signers(keys: OwnKeys, peers: PeerDirectory) -> list[NodeIdentity]:
    """Every card of ours that an active peer pins, and the current one, once each."""
    found: dict[int, NodeIdentity] = {keys.current.sequence: keys.current}
    trust = peers.trust
    for card in trust.cards():
        if not trust.is_revoked(card.agency_id):
            identity = keys.for_peer(card.agency_id)
            found.setdefault(identity.sequence, identity)
    return [found[sequence] for sequence in sorted(found)]


def sign_note(checkpoint: Checkpoint, signers: list[NodeIdentity]) -> bytes:
    """The checkpoint as a signed note, with the Ed25519 (and ML-DSA-65) signatures of
    every identity in ``signers``."""
    notes = [
        sign_checkpoint(
            checkpoint,
            name=checkpoint.origin,
            ed25519_key=identity.signing_key,
            mldsa65_key=identity.mldsa65_key,
        )
        for identity in signers
    ]
    extra = [signature for note in notes[1:] for signature in parse_note(note).signatures]
    return add_signatures(notes[0], *extra) if extra else notes[0]


class Checkpointer:
    """Signs our checkpoints and has every active peer cosign them."""

    def __init__(
        self,
        *,
        keys: OwnKeys,
        peers: PeerDirectory,
        store: Store,
        committer: GroupCommitter,
        limits: Limits,
        channel: Callable[[PeerCard], grpc.aio.Channel],
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._keys = keys
        self._peers = peers
        self._store = store
        self._committer = committer
        self._limits = limits
        self._channel = channel
        self._clock = clock
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()

    def request(self) -> None:
        """Sign and witness now, not at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        """Every ``checkpoint_interval_seconds`` (or when asked): sign a checkpoint if the
        log grew, then bring every peer's cosignature up to date. Survives any error."""
        while True:
            # The first round after one interval: a node restarted in a loop signs nothing.
            try:
                async with asyncio.timeout(self._limits.checkpoint_interval_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.round(on_schedule=True)
            except Exception:
                log.exception(
                    "checkpointing failed; next round in %g s",
                    self._limits.checkpoint_interval_seconds,
                )

    async def round(
        self, *, force: bool = False, on_schedule: bool = False
    ) -> SignedCheckpoint | None:
        """Sign a checkpoint if one is due (``force``: if the log grew at all), then send
        the newest to every active peer that has not cosigned it. Returns the newest.

        ``on_schedule``: the round of the interval's timer, which signs nothing if a
        checkpoint was signed less than most of an interval ago: replicas of the node
        that share its database sign one checkpoint per interval between them."""
        async with self._round:
            await self.sign(force=force, on_schedule=on_schedule)
            newest = await asyncio.to_thread(self._newest)
            if newest is None:
                return None
            trust = self._peers.trust
            targets = [c for c in trust.cards() if not trust.is_revoked(c.agency_id)]
            await asyncio.gather(*(self._witness_safely(card, newest) for card in targets))
            return await asyncio.to_thread(self._newest)

    async def _witness_safely(self, card: PeerCard, newest: SignedCheckpoint) -> None:
        """One peer's failure is logged at once and costs the others nothing."""
        try:
            await self._witness(card, newest)
        except Exception:
            log.exception("witnessing by %s failed; retried at the next round", card.agency_id)

    async def sign(self, *, force: bool = False, on_schedule: bool = False) -> None:
        signers = _signers(self._keys, self._peers)
        origin = origin_of(self._keys.current.agency_id)
        ring = self._keys.ring
        cards = [
            (
                identity.sequence,
                identity.card.signed_card,
                ring.update if identity is ring.current and ring.previous is not None else None,
            )
            for identity in signers
        ]

        def write(session: Session) -> None:
            checkpoints.record_cards(session, cards)
            latest = checkpoints.latest(session)
            if force:
                size, root = checkpoints.size_and_root(session)
                if size == 0 or (latest is not None and latest.size >= size):
                    return
            else:
                interval = dt.timedelta(seconds=self._limits.checkpoint_interval_seconds)
                before = self._clock() - interval * 0.9 if on_schedule else None
                grown = checkpoints.due(session, signed_before=before)
                if grown is None:
                    return
                size, root = grown
            note = sign_note(Checkpoint(origin=origin, size=size, root=root), signers)
            checkpoints.add(session, size=size, root=root, note=note, at=self._clock())

        await self._committer.submit(write)

    def _newest(self) -> SignedCheckpoint | None:
        with self._store.read() as session:
            latest = checkpoints.latest(session)
            return signed_checkpoint(session, latest) if latest is not None else None

    async def _witness(self, card: PeerCard, newest: SignedCheckpoint) -> None:
        """Ask ``card``'s node to cosign ``newest``; a failure is logged and retried at
        the next round."""
        peer = card.agency_id
        if peer in newest.cosigners:
            return
        old = await asyncio.to_thread(self._cosigned_size, peer)
        try:
            for _ in range(2):  # once more after a CONFLICT names the size the peer knows
                response = await self._ask(card, newest, old)
                if response.status != S.WITNESS_STATUS_CONFLICT:
                    break
                if response.known_size > newest.size:
                    await self._refused(
                        newest, peer, "AHEAD", f"it cosigned size {response.known_size}"
                    )
                    return
                old = response.known_size
        except grpc.aio.AioRpcError as error:
            log.warning("checkpoint %d not cosigned by %s yet: %s", newest.size, peer, error.code())
            return
        if response.status == S.WITNESS_STATUS_COSIGNED:
            await self._cosigned(card, newest, response.cosignature)
        else:
            why = _name(R, response.refusal, "WITNESS_REFUSAL_")
            if response.status != S.WITNESS_STATUS_REFUSED:
                why = _name(S, response.status, "WITNESS_STATUS_")
            await self._refused(newest, peer, why, "not cosigned")

    def _cosigned_size(self, peer: str) -> int:
        with self._store.read() as session:
            return checkpoints.cosigned_size(session, peer)

    async def _ask(
        self, card: PeerCard, newest: SignedCheckpoint, old: int
    ) -> peer_pb2.WitnessResponse:
        proof = await asyncio.to_thread(self._proof, old, newest.size)
        request = peer_pb2.WitnessRequest(
            checkpoint=newest.note, old_size=old, consistency_proof=proof
        )
        # A channel of its own, so that a peer that is down costs the deliveries nothing.
        channel = self._channel(card)
        try:
            response: peer_pb2.WitnessResponse = await peer_pb2_grpc.PeerExchangeStub(
                channel
            ).Witness(request, timeout=self._limits.delivery_timeout_seconds)
        finally:
            await channel.close(grace=None)
        return response

    def _proof(self, old: int, new: int) -> list[bytes]:
        if old == 0 or old >= new:
            return []
        with self._store.read() as session:
            return consistency_proof(StoredTree(session), old, new)

    async def _cosigned(self, card: PeerCard, newest: SignedCheckpoint, line: bytes) -> None:
        """Keep the witness's cosignature once it verifies under a card of the witness's we
        trust (the one replaced, in its grace period, too: it signs with the card it knows
        we pin); exactly one signature line."""
        peer = card.agency_id
        previous = self._peers.trust.previous(peer)
        try:
            ours = len(parse_note(newest.note).signatures)
            signatures = parse_note(newest.note + line).signatures
            if len(signatures) != ours + 1:
                raise CheckpointError("the answer is not exactly one signature line")
            stamp = _verified_cosignature(
                newest.note, signatures[-1], peer, [card, *([previous] if previous else [])]
            )
        except CheckpointError as error:
            await self._refused(newest, peer, "BAD_COSIGNATURE", str(error)[:200])
            return
        now = self._clock()
        await self._committer.submit(
            lambda session: checkpoints.add_cosignature(
                session, size=newest.size, peer=peer, line=line, timestamp=stamp, at=now
            )
        )
        log.info("checkpoint %d cosigned by %s", newest.size, peer)

    async def _refused(self, newest: SignedCheckpoint, peer: str, why: str, detail: str) -> None:
        log.error("checkpoint %d refused by %s: %s (%s)", newest.size, peer, why, detail)
        now = self._clock()
        await self._committer.submit(
            lambda session: checkpoints.refused_by_peer(
                session, size=newest.size, peer=peer, why=why, at=now
            )
        )


def _verified_cosignature(
    note: bytes, signature: NoteSignature, peer: str, cards: list[PeerCard]
) -> int:
    """The cosignature's time, if it verifies under one of ``cards``; else CheckpointError."""
    name = witness_name(peer)
    failure: CheckpointError | None = None
    for card in cards:
        try:
            return verify_cosignature(note, signature, name=name, ed25519_public=card.signing_key)
        except CheckpointError as error:
            failure = failure or error
    raise failure or CheckpointError("no card to check the cosignature with")


def signed_checkpoint(
    session: Session, row: AuditCheckpoint, only: str | None = None
) -> SignedCheckpoint:
    """``row`` with the cosignatures kept for it (``only`` that peer's, if given)."""
    lines = [
        line
        for line in checkpoints.cosignatures(session, row.size)
        if only is None or line.peer == only
    ]
    signatures = [parse_note(row.note + line.line).signatures[-1] for line in lines]
    cosigned = row.note
    if signatures:
        cosigned = add_signatures(row.note, *signatures, limits=COSIGNED_LIMITS)
    return SignedCheckpoint(
        size=row.size,
        root=row.root,
        note=row.note,
        signed_at=row.signed_at,
        cosigners=tuple(line.peer for line in lines),
        cosigned=cosigned,
    )


def cosigned_note(session: Session, row: AuditCheckpoint, only: str | None = None) -> bytes:
    """Our checkpoint's note with every peer's cosignature line (``only`` that peer's)."""
    return signed_checkpoint(session, row, only).cosigned


@dataclass(frozen=True)
class _Checked:
    checkpoint: Checkpoint
    note: bytes
    proof: list[bytes]
    old_size: int


class Witness:
    """Cosigns the checkpoints of pinned peers' logs, each consistent with the last."""

    def __init__(
        self,
        *,
        keys: OwnKeys,
        peers: PeerDirectory,
        committer: GroupCommitter,
        clock: Callable[[], dt.datetime] = utc_now,
        on_stored: Callable[[str, int], None] | None = None,
    ) -> None:
        self._keys = keys
        self._peers = peers
        self._committer = committer
        self._clock = clock
        # Told (peer, bytes) of every note stored for a peer: counted against its quota.
        self._on_stored = on_stored
        # When a refusal of each (peer, reason) was last audited (monotonic seconds).
        self._refusals: dict[tuple[str, str], float] = {}

    async def witness(self, peer: str, raw: bytes) -> peer_pb2.WitnessResponse:
        """Answer the pinned peer ``peer``'s ``WitnessRequest`` bytes."""
        now = self._clock()
        checked = (
            _refusal(R.WITNESS_REFUSAL_REVOKED)
            if self._peers.trust.is_revoked(peer)
            else self._check(peer, raw)
        )
        if isinstance(checked, peer_pb2.WitnessResponse):
            await self._refused(peer, _name(R, checked.refusal, "WITNESS_REFUSAL_"), now)
            return checked
        me = self._keys.for_peer(peer)
        response, stored = await self._committer.submit(
            lambda session: self._decide(session, peer, checked, me, now)
        )
        if stored and self._on_stored is not None:
            self._on_stored(peer, stored)
        if response.status == S.WITNESS_STATUS_REFUSED and stored:
            log.error(
                "SPLIT VIEW: %s presented a checkpoint of size %d inconsistent with the one "
                "this node cosigned (%s); evidence kept",
                peer,
                checked.checkpoint.size,
                _name(R, response.refusal, "WITNESS_REFUSAL_"),
            )
        return response

    async def _refused(self, peer: str, why: str, now: dt.datetime) -> None:
        """Audit a refused request, at most once a minute for each peer and reason (a peer
        may send them as fast as the gate lets it); each is logged."""
        log.warning("refused to cosign a checkpoint of %s: %s", peer, why)
        moment, last = time.monotonic(), self._refusals.get((peer, why))
        if last is not None and moment - last < REFUSAL_AUDIT_SECONDS:
            return
        self._refusals[(peer, why)] = moment
        await self._committer.submit(
            lambda session: checkpoints.refused(
                session, peer=peer, why=why, detail="the checkpoint was not cosigned", at=now
            )
        )

    def _check(self, peer: str, raw: bytes) -> _Checked | peer_pb2.WitnessResponse:
        """Parse the request and check the caller's signature; a refusal if it fails."""
        if len(raw) > MAX_WITNESS_REQUEST:
            return _refusal(R.WITNESS_REFUSAL_MALFORMED)
        origin = origin_of(peer)
        try:
            request = peer_pb2.WitnessRequest.FromString(raw)
            stated = parse_body(parse_note(request.checkpoint).body)
        except (DecodeError, CheckpointError):
            return _refusal(R.WITNESS_REFUSAL_MALFORMED)
        proof = list(request.consistency_proof)
        if len(proof) > MAX_PROOF_HASHES or any(len(h) != 32 for h in proof):
            return _refusal(R.WITNESS_REFUSAL_MALFORMED)
        # Sizes are stored as signed 64-bit integers.
        if stated.size > MAX_LOG_SIZE or request.old_size > MAX_LOG_SIZE:
            return _refusal(R.WITNESS_REFUSAL_MALFORMED)
        if stated.origin != origin:
            return _refusal(R.WITNESS_REFUSAL_WRONG_ORIGIN)
        trust = self._peers.trust
        cards = [c for c in (trust.peer(peer), trust.previous(peer)) if c is not None]
        for card in cards:
            try:
                checkpoint = verify_checkpoint(
                    request.checkpoint,
                    origin=origin,
                    name=origin,
                    ed25519_public=card.signing_key,
                    mldsa65_public=card.mldsa65_key,
                )
            except CheckpointError:
                continue
            # Kept as the card's own lines only: other lines are the caller's to pad with.
            note = _only_lines_of(request.checkpoint, origin, card)
            return _Checked(checkpoint, note, proof, request.old_size)
        return _refusal(R.WITNESS_REFUSAL_BAD_SIGNATURE)

    def _decide(
        self,
        session: Session,
        peer: str,
        checked: _Checked,
        me: NodeIdentity,
        now: dt.datetime,
    ) -> tuple[peer_pb2.WitnessResponse, int]:
        """Against the last checkpoint of ``peer``'s we cosigned, in the write transaction
        (so two calls at once, or two replicas, decide one after the other). Returns the
        answer and the bytes of notes stored."""
        new = checked.checkpoint
        known = checkpoints.witnessed(session, peer)
        known_size = known.size if known is not None else 0
        if known is not None and new.size < known.size:
            return self._evidence(session, peer, checked, known.note, R.WITNESS_REFUSAL_ROLLBACK)
        if known is not None and new.size == known.size:
            if new.root != known.root:
                return self._evidence(
                    session, peer, checked, known.note, R.WITNESS_REFUSAL_INCONSISTENT
                )
            same = peer_pb2.WitnessResponse(
                status=S.WITNESS_STATUS_COSIGNED, cosignature=known.cosignature
            )
            return same, 0
        if checked.old_size != known_size:
            conflict = peer_pb2.WitnessResponse(
                status=S.WITNESS_STATUS_CONFLICT, known_size=known_size
            )
            return conflict, 0
        if known is not None and not verify_consistency(
            known.size, new.size, known.root, new.root, checked.proof
        ):
            return self._evidence(
                session, peer, checked, known.note, R.WITNESS_REFUSAL_INCONSISTENT
            )
        signature = cosign(
            new.body(),
            name=witness_name(me.agency_id),
            ed25519_key=me.signing_key,
            timestamp=int(now.timestamp()),
        )
        line = signature.line()
        checkpoints.add_witnessed(
            session,
            peer=peer,
            size=new.size,
            root=new.root,
            note=checked.note,
            cosignature=line,
            at=now,
        )
        cosigned = peer_pb2.WitnessResponse(status=S.WITNESS_STATUS_COSIGNED, cosignature=line)
        return cosigned, len(checked.note) + len(line)

    def _evidence(
        self,
        session: Session,
        peer: str,
        checked: _Checked,
        cosigned_note: bytes,
        refusal: peer_pb2.WitnessRefusal.ValueType,
    ) -> tuple[peer_pb2.WitnessResponse, int]:
        """Refuse, and keep both notes as evidence unless the same evidence is kept already
        (or this peer has ``MAX_EVIDENCE_PER_PEER`` pieces: one is proof enough)."""
        why = _name(R, refusal, "WITNESS_REFUSAL_")
        stored = checkpoints.keep_evidence(
            session,
            limit=MAX_EVIDENCE_PER_PEER,
            peer=peer,
            why=why,
            cosigned_note=cosigned_note,
            presented_note=checked.note,
            old_size=checked.old_size,
            proof=b"".join(checked.proof),
            detail=f"presented tree size {checked.checkpoint.size}, "
            f"root {checked.checkpoint.root.hex()}",
            at=self._clock(),
        )
        return _refusal(refusal), stored


def _only_lines_of(note: bytes, name: str, card: PeerCard) -> bytes:
    """``note`` with only the signature lines of ``card``'s keys under ``name``."""
    keys = {ed25519_key_id(name, card.signing_key)}
    if card.mldsa65_key is not None:
        keys.add(mldsa65_key_id(name, card.mldsa65_key))
    parsed = parse_note(note)
    kept = tuple(s for s in parsed.signatures if s.name == name and s.key_id in keys)
    return Note(parsed.body, kept).text()


def _refusal(refusal: peer_pb2.WitnessRefusal.ValueType) -> peer_pb2.WitnessResponse:
    return peer_pb2.WitnessResponse(status=S.WITNESS_STATUS_REFUSED, refusal=refusal)


# The entries a receipt names (PROTOCOL.md 8.2): the only ones a peer may have proven. Other
# entries about a peer are this node's own business (who read its notice, when it was
# revoked and why), even when their ``peer`` is that peer.
PROVABLE_EVENTS = frozenset(
    {AuditKind.RECEIVED.value, AuditKind.DUPLICATE.value, AuditKind.REJECTED.value}
)


def prove_inclusion(
    session: Session,
    peer: str,
    request: peer_pb2.InclusionRequest,
    *,
    revoked: bool = False,
) -> peer_pb2.InclusionResponse | ProofDenied:
    """An inclusion proof of entry ``request.index`` in the tree of ``request.tree_size``,
    for the pinned peer ``peer``: only of an entry a receipt to that peer names, never to
    a revoked peer. Reads only; a denial that should be audited says so (``audit``).
    """
    if revoked:
        return ProofDenied(
            grpc.StatusCode.PERMISSION_DENIED,
            "this node has revoked the caller",
            audit="inclusion proof asked by a revoked peer",
        )
    tree = StoredTree(session)
    if not 0 < request.tree_size <= tree.size() or request.index >= request.tree_size:
        return ProofDenied(
            grpc.StatusCode.OUT_OF_RANGE,
            f"index {request.index} is not in a tree of size {request.tree_size} of this log",
        )
    leaf = session.get(AuditLeaf, request.index + 1)
    if leaf is None:
        return ProofDenied(grpc.StatusCode.OUT_OF_RANGE, "no such entry")
    entry = audit_pb2.AuditEntry.FromString(leaf.entry)
    if entry.peer != peer or entry.event not in PROVABLE_EVENTS:
        return ProofDenied(
            grpc.StatusCode.PERMISSION_DENIED,
            "the entry is not one a receipt to the caller names",
            audit=f"inclusion proof of entry {request.index}, which no receipt to it names",
        )
    return peer_pb2.InclusionResponse(
        entry=leaf.entry, proof=inclusion_proof(tree, request.index, request.tree_size)
    )

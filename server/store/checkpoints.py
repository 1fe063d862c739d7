"""Checkpoints of the audit log: the ones we signed and the peers' cosignatures of them;
the peers' checkpoints we cosigned as their witness; evidence of a rewritten history.

Every write function runs inside a write transaction and audits what it records.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from liaison.server.store import audit
from liaison.server.store.audit import CHECKPOINT_BOOKKEEPING, AuditKind
from liaison.server.store.auditlog import StoredTree, write_pending
from liaison.server.store.models import (
    AuditCheckpoint,
    AuditEvent,
    CheckpointCosignature,
    OwnCard,
    Peer,
    PeerCheckpoint,
    WitnessEvidence,
)


def latest(session: Session) -> AuditCheckpoint | None:
    """Our newest signed checkpoint."""
    return session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.size.desc()).limit(1)
    ).first()


def latest_cosigned_by(session: Session, peer: str) -> AuditCheckpoint | None:
    """Our newest checkpoint that ``peer`` cosigned."""
    return session.scalars(
        select(AuditCheckpoint)
        .join(CheckpointCosignature, CheckpointCosignature.size == AuditCheckpoint.size)
        .where(CheckpointCosignature.peer == peer)
        .order_by(AuditCheckpoint.size.desc())
        .limit(1)
    ).first()


def due(session: Session, *, signed_before: dt.datetime | None = None) -> tuple[int, bytes] | None:
    """The log's size and root, if it grew by more than checkpoint bookkeeping since our
    newest checkpoint: a checkpoint is then due. With ``signed_before``, only if the
    newest was signed before then: replicas of one node sharing its database sign one
    checkpoint per interval between them, not one each."""
    write_pending(session)  # events appended in this transaction count too
    newest = latest(session)
    if newest is not None and signed_before is not None and newest.signed_at > signed_before:
        return None
    since = newest.size if newest is not None else 0
    grew = session.scalars(  # one such event is enough: no count of them all
        select(AuditEvent.seq)
        .where(AuditEvent.seq > since)
        .where(AuditEvent.event.not_in([kind.value for kind in CHECKPOINT_BOOKKEEPING]))
        .limit(1)
    ).first()
    return size_and_root(session) if grew is not None else None


def size_and_root(session: Session) -> tuple[int, bytes]:
    """The log's size and its root at that size."""
    tree = StoredTree(session)
    size = tree.size()
    return size, tree.root(size)


def record_cards(session: Session, cards: list[tuple[int, bytes, bytes | None]]) -> None:
    """Keep each (sequence, signed card, update from the card before) not yet kept."""
    for sequence, card, update in cards:
        if session.get(OwnCard, sequence) is None:
            session.add(OwnCard(sequence=sequence, signed_card=card, card_update=update))


def own_cards(session: Session) -> list[OwnCard]:
    return list(session.scalars(select(OwnCard).order_by(OwnCard.sequence)))


def add(session: Session, *, size: int, root: bytes, note: bytes, at: dt.datetime) -> None:
    """Record a checkpoint we signed (``note``: the signed note)."""
    session.add(AuditCheckpoint(size=size, root=root, note=note, signed_at=at))
    audit.append(
        session,
        AuditKind.CHECKPOINT_SIGNED,
        at=at,
        actor="node",
        detail=f"tree size {size}, root {root.hex()}",
    )


def cosigned_size(session: Session, peer: str) -> int:
    """The size of the newest of our checkpoints that ``peer`` cosigned; 0 if none."""
    return int(
        session.scalar(
            select(func.max(CheckpointCosignature.size)).where(CheckpointCosignature.peer == peer)
        )
        or 0
    )


def cosignatures(session: Session, size: int) -> list[CheckpointCosignature]:
    return list(
        session.scalars(
            select(CheckpointCosignature)
            .where(CheckpointCosignature.size == size)
            .order_by(CheckpointCosignature.peer)
        )
    )


def add_cosignature(
    session: Session, *, size: int, peer: str, line: bytes, timestamp: int, at: dt.datetime
) -> None:
    """Record ``peer``'s verified cosignature of our checkpoint of ``size``."""
    if session.get(CheckpointCosignature, (size, peer)) is not None:
        return
    session.add(
        CheckpointCosignature(size=size, peer=peer, line=line, timestamp=timestamp, received_at=at)
    )
    audit.append(
        session,
        AuditKind.CHECKPOINT_COSIGNED_BY_PEER,
        at=at,
        peer=peer,
        detail=f"tree size {size}",
    )


def refused_by_peer(session: Session, *, size: int, peer: str, why: str, at: dt.datetime) -> None:
    audit.append(
        session,
        AuditKind.CHECKPOINT_REFUSED_BY_PEER,
        at=at,
        peer=peer,
        reason=why,
        detail=f"tree size {size}",
    )


# As a peer's witness -------------------------------------------------------------


def witnessed(session: Session, peer: str) -> PeerCheckpoint | None:
    """The newest checkpoint of ``peer``'s log that we cosigned since the operator pinned
    its current card: a peer pinned anew (``peers add --replace``, after a
    reinstallation) starts a new history; the old one stays in the table."""
    return session.scalars(
        select(PeerCheckpoint)
        .join(Peer, Peer.agency_id == PeerCheckpoint.peer)
        .where(PeerCheckpoint.peer == peer, PeerCheckpoint.cosigned_at >= Peer.added_at)
        .order_by(PeerCheckpoint.size.desc())
        .limit(1)
    ).first()


def witnessed_covering(session: Session, peer: str, size: int) -> PeerCheckpoint | None:
    """The smallest checkpoint of ``peer``'s we cosigned that covers ``size`` entries."""
    return session.scalars(
        select(PeerCheckpoint)
        .where(PeerCheckpoint.peer == peer, PeerCheckpoint.size >= size)
        .order_by(PeerCheckpoint.size)
        .limit(1)
    ).first()


def add_witnessed(
    session: Session,
    *,
    peer: str,
    size: int,
    root: bytes,
    note: bytes,
    cosignature: bytes,
    at: dt.datetime,
) -> None:
    """Record that we cosigned ``peer``'s checkpoint (idempotent for the same size)."""
    if session.get(PeerCheckpoint, (peer, size)) is not None:
        return
    session.add(
        PeerCheckpoint(
            peer=peer, size=size, root=root, note=note, cosignature=cosignature, cosigned_at=at
        )
    )
    audit.append(
        session,
        AuditKind.CHECKPOINT_COSIGNED,
        at=at,
        peer=peer,
        detail=f"tree size {size}, root {root.hex()}",
    )


def refused(session: Session, *, peer: str, why: str, detail: str, at: dt.datetime) -> None:
    """Audit a checkpoint of ``peer``'s we would not cosign (no evidence to keep)."""
    audit.append(session, AuditKind.CHECKPOINT_REFUSED, at=at, peer=peer, reason=why, detail=detail)


def keep_evidence(
    session: Session,
    *,
    peer: str,
    why: str,
    cosigned_note: bytes,
    presented_note: bytes,
    old_size: int,
    proof: bytes,
    detail: str,
    at: dt.datetime,
    limit: int,
) -> int:
    """Keep two signed checkpoints of ``peer`` that contradict each other, and raise the
    alarm in our own log; not again for a note already kept, nor beyond ``limit`` pieces
    for one peer. Returns the bytes stored (0 if nothing was)."""
    kept = session.scalars(
        select(WitnessEvidence.presented_note).where(WitnessEvidence.peer == peer)
    ).all()
    if presented_note in kept or len(kept) >= limit:
        return 0
    session.add(
        WitnessEvidence(
            peer=peer,
            refusal=why,
            cosigned_note=cosigned_note,
            presented_note=presented_note,
            old_size=old_size,
            proof=proof,
            detected_at=at,
        )
    )
    audit.append(
        session, AuditKind.SPLIT_VIEW_DETECTED, at=at, peer=peer, reason=why, detail=detail
    )
    return len(cosigned_note) + len(presented_note) + len(proof)


def evidence(session: Session, peer: str | None = None) -> list[WitnessEvidence]:
    query = select(WitnessEvidence).order_by(WitnessEvidence.id)
    if peer is not None:
        query = query.where(WitnessEvidence.peer == peer)
    return list(session.scalars(query))

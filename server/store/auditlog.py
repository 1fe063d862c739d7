"""The audit trail as a verifiable log: every event a leaf of an RFC 9162 Merkle tree.

Each event is also written as the canonical bytes of a ``liaison.v1.AuditEntry``
(``audit_entries``), serialized once and stored as is; its leaf hash is the
SHA-256 of those bytes behind a zero byte. The hash of every perfect subtree is
stored as it completes (``audit_tree``), so appending costs about two small
writes, and any root or proof is O(log n) lookups (``liaison.keys.merkle``).

``verify`` recomputes everything from the entries alone and names the first
event where the stored log disagrees with itself: a changed, deleted, inserted
or reordered row, in either table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from liaison.keys.merkle import MemoryTree, leaf_hash, node_hash, root
from liaison.server.store.models import AuditEvent, AuditLeaf, AuditNode
from liaison.v1 import audit_pb2

_NODES = "liaison_audit_nodes"
VERIFY_BATCH = 10_000


def entry_of(event: AuditEvent) -> bytes:
    """The canonical bytes of ``event`` (serialized once; stored as they are)."""
    return entry_bytes(
        seq=event.seq,
        at=event.at,
        event=event.event,
        actor=event.actor,
        peer=event.peer,
        message_id=event.message_id,
        envelope_sha256=event.envelope_sha256,
        reason=event.reason,
        detail=event.detail,
    )


def entry_bytes(
    *,
    seq: int,
    at: dt.datetime,
    event: str,
    actor: str | None,
    peer: str | None,
    message_id: str | None,
    envelope_sha256: str | None,
    reason: str | None,
    detail: str | None,
) -> bytes:
    """``AuditEntry`` bytes of an event's columns (``at`` is UTC)."""
    entry = audit_pb2.AuditEntry(
        index=seq - 1,
        event=event,
        actor=actor or "",
        peer=peer or "",
        message_id=message_id or "",
        envelope_sha256=bytes.fromhex(envelope_sha256) if envelope_sha256 else b"",
        reason=reason or "",
        detail=detail or "",
    )
    moment = at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
    entry.at.FromDatetime(moment.astimezone(dt.UTC))
    return entry.SerializeToString(deterministic=True)


def append(session: Session, event: AuditEvent) -> None:
    """Write ``event``'s entry as the next leaf, and the subtrees it completes.

    Runs in the event's own write transaction (``audit.append``). Nodes written
    earlier in the same transaction are kept in the session, so a batch of
    events reads each left sibling at most once.
    """
    entry = entry_of(event)
    session.add(AuditLeaf(seq=event.seq, entry=entry))
    nodes: dict[tuple[int, int], bytes] = session.info.setdefault(_NODES, {})
    level, index, current = 0, event.seq - 1, leaf_hash(entry)
    _store(session, nodes, level, index, current)
    while index & 1:
        left = nodes.get((level, index - 1))
        if left is None:  # written by an earlier transaction: read it (no flush needed)
            with session.no_autoflush:
                left = session.get_one(AuditNode, (level, index - 1)).hash
        level, index = level + 1, index >> 1
        current = node_hash(left, current)
        _store(session, nodes, level, index, current)


def _store(
    session: Session, nodes: dict[tuple[int, int], bytes], level: int, index: int, value: bytes
) -> None:
    nodes[(level, index)] = value
    session.add(AuditNode(level=level, idx=index, hash=value))


class StoredTree:
    """The log's tree as stored: ``perfect`` reads ``audit_tree`` (for roots and proofs)."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def perfect(self, level: int, index: int) -> bytes:
        node = self._session.get(AuditNode, (level, index))
        if node is None:
            raise LookupError(f"the audit log has no subtree ({level}, {index})")
        return node.hash

    def size(self) -> int:
        return int(self._session.scalar(select(func.count()).select_from(AuditLeaf)) or 0)

    def root(self, size: int | None = None) -> bytes:
        return root(self, self.size() if size is None else size)


@dataclass(frozen=True)
class Verdict:
    """What ``verify`` found: the size and root it recomputed, and the first problem."""

    size: int
    root: bytes
    problem: str | None = None
    # The sequence number of the first event that disagrees, if one does.
    seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(session: Session) -> Verdict:
    """Recompute the log from its entries and check every stored row against it.

    A database so damaged that its rows cannot be read at all is a verdict too.
    """
    try:
        return _verify(session)
    except SQLAlchemyError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return Verdict(0, b"", f"the database cannot be read ({type(error).__name__}: {first})")


def _verify(session: Session) -> Verdict:
    tree = MemoryTree()
    expected = 1
    for event, leaf in _rows(session):
        if event is None or leaf is None or event.seq != expected or leaf.seq != expected:
            seq = min(x.seq for x in (event, leaf) if x is not None)
            what = "an event without its entry, or an entry without its event"
            if seq != expected:
                what = f"sequence numbers jump from {expected - 1} to {seq}"
            return Verdict(tree.size, root(tree, tree.size), what, seq)
        problem = _entry_problem(event, leaf.entry)
        if problem:
            return Verdict(tree.size, root(tree, tree.size), problem, event.seq)
        tree.append(leaf_hash(leaf.entry))
        expected += 1
    size = tree.size
    stored = {(n.level, n.idx): n.hash for n in session.scalars(select(AuditNode))}
    for (level, index), value in sorted(stored.items(), key=lambda item: item[0][1] << item[0][0]):
        if (index + 1) << level > size:
            return Verdict(size, root(tree, size), "the tree holds a subtree past the log's end")
        if tree.perfect(level, index) != value:
            seq = (index << level) + 1
            return Verdict(size, root(tree, size), "a stored tree hash does not recompute", seq)
    if len(stored) != _expected_nodes(size):
        return Verdict(size, root(tree, size), "the stored tree lacks subtrees")
    return Verdict(size, root(tree, size))


def _expected_nodes(size: int) -> int:
    return sum(size >> level for level in range(size.bit_length()))


def _entry_problem(event: AuditEvent, entry: bytes) -> str | None:
    try:
        parsed = audit_pb2.AuditEntry.FromString(entry)
    except DecodeError:
        return "the entry does not parse"
    if entry != entry_of(event):
        if parsed.index != event.seq - 1:
            return "the entry is of another position"
        return "the event's row and its entry disagree (one was changed)"
    return None


def _rows(session: Session) -> Iterator[tuple[AuditEvent | None, AuditLeaf | None]]:
    """Events and entries side by side, in sequence order, a batch at a time."""
    batched = {"yield_per": VERIFY_BATCH}
    events = session.execute(
        select(AuditEvent).order_by(AuditEvent.seq), execution_options=batched
    ).scalars()
    leaves = session.execute(
        select(AuditLeaf).order_by(AuditLeaf.seq), execution_options=batched
    ).scalars()
    pending_event, pending_leaf = next(events, None), next(leaves, None)
    while pending_event is not None or pending_leaf is not None:
        if pending_event is not None and pending_leaf is not None:
            if pending_event.seq == pending_leaf.seq:
                yield pending_event, pending_leaf
                pending_event, pending_leaf = next(events, None), next(leaves, None)
            elif pending_event.seq < pending_leaf.seq:
                yield pending_event, None
                pending_event = next(events, None)
            else:
                yield None, pending_leaf
                pending_leaf = next(leaves, None)
        elif pending_event is not None:
            yield pending_event, None
            pending_event = next(events, None)
        else:
            yield None, pending_leaf
            pending_leaf = next(leaves, None)


def select_events(
    session: Session,
    *,
    message_ids: frozenset[str] | None = None,
    peer: str | None = None,
    actor: str | None = None,
    events: frozenset[str] = frozenset(),
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    """Events matching every filter given, in sequence order (``until`` excluded)."""
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if message_ids is not None:
        query = query.where(AuditEvent.message_id.in_(sorted(message_ids)))
    if peer is not None:
        query = query.where(AuditEvent.peer == peer)
    if actor is not None:
        query = query.where(AuditEvent.actor == actor)
    if events:
        query = query.where(AuditEvent.event.in_(sorted(events)))
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))

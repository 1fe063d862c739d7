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
import functools
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from sqlalchemy import Row, func, select
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


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _verify(session: Session) -> Verdict:
    tree = MemoryTree()
    append = tree.append
    expected = 1
    connection = session.connection()  # Core rows, in batches: no ORM for a million rows
    rows = connection.execute(
        select(
            AuditEvent.seq,
            AuditEvent.at,
            AuditEvent.event,
            AuditEvent.actor,
            AuditEvent.peer,
            AuditEvent.message_id,
            AuditEvent.envelope_sha256,
            AuditEvent.reason,
            AuditEvent.detail,
            AuditLeaf.entry,
        )
        .outerjoin(AuditLeaf, AuditLeaf.seq == AuditEvent.seq)
        .order_by(AuditEvent.seq),
        execution_options={"yield_per": VERIFY_BATCH},
    )
    for batch in rows.partitions():
        for row in batch:
            seq, entry = row[0], row[9]
            if seq != expected:
                what = f"sequence numbers jump from {expected - 1} to {seq}"
                return Verdict(tree.size, root(tree, tree.size), what, seq)
            if entry is None:
                what = "an event without its entry"
                return Verdict(tree.size, root(tree, tree.size), what, seq)
            problem = _entry_problem(row, entry)
            if problem:
                return Verdict(tree.size, root(tree, tree.size), problem, seq)
            append(leaf_hash(entry))
            expected += 1
    orphan = connection.execute(
        select(func.min(AuditLeaf.seq))
        .outerjoin(AuditEvent, AuditEvent.seq == AuditLeaf.seq)
        .where(AuditEvent.seq.is_(None))
    ).scalar()
    if orphan is not None:
        size = min(tree.size, orphan - 1)
        return Verdict(size, root(tree, size), "an entry without its event", orphan)
    return _check_stored_tree(session, tree)


def _check_stored_tree(session: Session, tree: MemoryTree) -> Verdict:
    """Every stored subtree hash against the recomputed tree; the first wrong one named."""
    size = tree.size
    count, past_end, wrong = 0, False, None
    nodes = session.connection().execute(
        select(AuditNode.level, AuditNode.idx, AuditNode.hash),
        execution_options={"yield_per": VERIFY_BATCH},
    )
    for level, index, value in nodes:
        count += 1
        if (index + 1) << level > size:
            past_end = True
        elif tree.perfect(level, index) != value:
            seq = (index << level) + 1
            wrong = seq if wrong is None else min(wrong, seq)
    verdict = functools.partial(Verdict, size, root(tree, size))
    if wrong is not None:
        return verdict("a stored tree hash does not recompute", wrong)
    if past_end:
        return verdict("the tree holds a subtree past the log's end")
    if count != _expected_nodes(size):
        return verdict("the stored tree lacks subtrees")
    return verdict()


def _expected_nodes(size: int) -> int:
    return sum(size >> level for level in range(size.bit_length()))


def _entry_problem(event: Row[Any], entry: bytes) -> str | None:
    """Whether ``entry`` is the canonical entry of the event's row (compared field by
    field: parsing is several times cheaper than serializing the expected entry)."""
    seq, at, kind, actor, peer, message_id, digest, reason, detail, _ = event
    try:
        parsed = audit_pb2.AuditEntry.FromString(entry)
    except DecodeError:
        return "the entry does not parse"
    if parsed.index != seq - 1:
        return "the entry is of another position"
    since = (at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)) - _EPOCH
    stamp = parsed.at
    if (
        parsed.event != kind
        or parsed.actor != (actor or "")
        or parsed.peer != (peer or "")
        or parsed.message_id != (message_id or "")
        or parsed.envelope_sha256 != (bytes.fromhex(digest) if digest else b"")
        or parsed.reason != (reason or "")
        or parsed.detail != (detail or "")
        or stamp.seconds != since.days * 86400 + since.seconds
        or stamp.nanos != since.microseconds * 1000
    ):
        return "the event's row and its entry disagree (one was changed)"
    if parsed.SerializeToString(deterministic=True) != entry:
        return "the entry is not in its canonical form"
    return None


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

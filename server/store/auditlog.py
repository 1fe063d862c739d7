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
import hashlib
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from sqlalchemy import create_engine, func, insert, select, tuple_
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from liaison.keys.merkle import LEAF_PREFIX, MemoryTree, leaf_hash, node_hash, root
from liaison.server.store.models import AuditEvent, AuditLeaf, AuditNode
from liaison.v1 import audit_pb2

_PENDING = "liaison_audit_pending"
# The key of a store's ``EdgeCache`` in its write sessions' ``info``.
EDGE_CACHE = "liaison_audit_edge"
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


@dataclass
class _Pending:
    """A transaction's appends: the hashes on the tree's right edge (loaded once, then
    kept up to date), and the rows still to write."""

    size: int
    edge: dict[tuple[int, int], bytes]
    leaves: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    # The event rows themselves, written with their leaves (one INSERT for all of a
    # transaction's events, not an ORM object each).
    events: list[dict[str, Any]] = field(default_factory=list)


class EdgeCache:
    """The right edge of the tree as the last commit of this process left it.

    A store's write sessions share one (``session.info``). The next transaction uses it
    only if the log still has the size it had then (read under the write lock): the log
    is append-only, so the same size is the same tree, whoever else appends to it.
    """

    def __init__(self) -> None:
        # One (size, edge) pair, replaced whole: another thread of this process may read
        # it while a commit publishes the next one.
        self._kept: tuple[int, dict[tuple[int, int], bytes]] = (-1, {})
        self._lock = threading.Lock()

    def edge_at(self, size: int) -> dict[tuple[int, int], bytes] | None:
        """A copy of the edge kept for a log of ``size`` leaves, if that is what is kept."""
        kept_size, edge = self._kept
        return dict(edge) if kept_size == size else None

    def publish(self, session: Session) -> None:
        """After a commit: keep the edge the committed appends left (never an older one:
        commits of two threads may publish out of order)."""
        pending: _Pending | None = session.info.pop(_PENDING, None)
        if pending is not None:
            with self._lock:
                if pending.size > self._kept[0]:
                    self._kept = (pending.size, dict(pending.edge))

    def forget(self, session: Session) -> None:
        """After a rollback the appends never happened."""
        session.info.pop(_PENDING, None)


def _right_edge(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees, (level, index), that a tree of ``size`` leaves ends with: the
    left siblings of every subtree later appends will complete."""
    edge, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            edge.append((level, start >> level))
            start += 1 << level
    return edge


def _load_edge(session: Session, size: int) -> dict[tuple[int, int], bytes]:
    """The right edge of the stored tree of ``size`` leaves, in one read (a leaf's hash
    from its entry: leaf hashes are not stored)."""
    edge = _right_edge(size)
    found: dict[tuple[int, int], bytes] = {}
    inner = [(level, index) for level, index in edge if level > 0]
    if inner:
        rows = session.execute(
            select(AuditNode.level, AuditNode.idx, AuditNode.hash).where(
                tuple_(AuditNode.level, AuditNode.idx).in_(inner)
            )
        )
        found.update({(level, index): value for level, index, value in rows})
    if (0, size - 1) in edge:
        entry = session.scalar(select(AuditLeaf.entry).where(AuditLeaf.seq == size))
        if entry is not None:
            found[(0, size - 1)] = leaf_hash(entry)
    missing = [place for place in edge if place not in found]
    if missing:
        raise LookupError(f"the audit log's tree lacks the subtree {missing[0]}")
    return found


def append(session: Session, event: AuditEvent) -> None:
    """Add ``event``'s entry as the next leaf, and the subtrees it completes.

    Runs in the event's own write transaction (``audit.append``). The first append of a
    transaction reads the tree's right edge once; the rows are written together just
    before the transaction commits (``write_pending``), or before anything reads the tree.
    """
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is None:
        size = event.seq - 1
        cache: EdgeCache | None = session.info.get(EDGE_CACHE)
        kept = cache.edge_at(size) if cache is not None else None
        edge = kept if kept is not None else _load_edge(session, size)
        pending = _Pending(size, edge)
        session.info[_PENDING] = pending
    pending.size = event.seq
    pending.events.append(
        {
            "seq": event.seq,
            "at": event.at,
            "event": event.event,
            "message_id": event.message_id,
            "peer": event.peer,
            "actor": event.actor,
            "envelope_sha256": event.envelope_sha256,
            "reason": event.reason,
            "detail": event.detail,
        }
    )
    entry = entry_of(event)
    pending.leaves.append({"seq": event.seq, "entry": entry})
    edge = pending.edge
    level, index, current = 0, event.seq - 1, leaf_hash(entry)
    edge[(0, index)] = current
    while index & 1:
        left = edge.pop((level, index - 1))
        edge.pop((level, index), None)
        level, index = level + 1, index >> 1
        current = node_hash(left, current)
        edge[(level, index)] = current
        pending.nodes.append({"level": level, "idx": index, "hash": current})


# Built once: they run in every write transaction.
_INSERT_EVENTS = insert(AuditEvent.__table__)  # type: ignore[arg-type]
_INSERT_LEAVES = insert(AuditLeaf.__table__)  # type: ignore[arg-type]
_INSERT_NODES = insert(AuditNode.__table__)  # type: ignore[arg-type]


def write_pending(session: Session) -> None:
    """Write the entries and subtree hashes appended in this transaction (a session
    ``before_commit`` hook, and called before the tree is read)."""
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is None or not (pending.events or pending.leaves or pending.nodes):
        return
    connection = session.connection()
    if pending.events:
        connection.execute(_INSERT_EVENTS, pending.events)
    if pending.leaves:
        connection.execute(_INSERT_LEAVES, pending.leaves)
    if pending.nodes:
        connection.execute(_INSERT_NODES, pending.nodes)
    pending.events, pending.leaves, pending.nodes = [], [], []


class StoredTree:
    """The log's tree as stored (for roots and proofs): subtree hashes from ``audit_tree``,
    leaf hashes from the entries."""

    def __init__(self, session: Session) -> None:
        self._session = session
        write_pending(session)

    def perfect(self, level: int, index: int) -> bytes:
        if level == 0:
            entry = self._session.scalar(select(AuditLeaf.entry).where(AuditLeaf.seq == index + 1))
            if entry is None:
                raise LookupError(f"the audit log has no entry {index}")
            return leaf_hash(entry)
        node = self._session.get(AuditNode, (level, index))
        if node is None:
            raise LookupError(f"the audit log has no subtree ({level}, {index})")
        return node.hash

    def size(self) -> int:
        # Gap-free from 1 (``verify`` checks it): the largest sequence number is the size.
        return int(self._session.scalar(select(func.max(AuditLeaf.seq))) or 0)

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


# Leaf hashes are computed from the entries in ranges of sequence numbers; a large log is
# split between two worker processes (each reading its own range on its own connection;
# rows up to the log's size never change, so every reader sees the same ones).
PARALLEL_FROM = 200_000
WORKERS = 2
_EVENTS_WITH_ENTRIES = (
    "SELECT e.seq, e.at, e.event, e.actor, e.peer, e.message_id, e.envelope_sha256, "
    "e.reason, e.detail, l.entry FROM audit_events e "
    "LEFT JOIN audit_entries l ON l.seq = e.seq "
    "WHERE e.seq BETWEEN {low} AND {high} ORDER BY e.seq"
)
_ORPHAN_ENTRY = (
    "SELECT min(l.seq) FROM audit_entries l "
    "LEFT JOIN audit_events e ON e.seq = l.seq WHERE e.seq IS NULL"
)


@dataclass(frozen=True)
class _Range:
    """Leaf hashes of events ``low``.. (concatenated), up to the first problem if any."""

    leaves: bytes
    problem: str | None = None
    seq: int | None = None


def _verify(session: Session) -> Verdict:
    """Read every event with its entry on the driver's own cursor (a million rows through
    the ORM, or even Core rows, cost several times more), check them, build the tree a
    level at a time, then compare the stored tree with it."""
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute("SELECT min(seq), max(seq) FROM audit_events")
        first, last = cursor.fetchone() or (None, None)
        last = last or 0
        if first is not None and first < 1:
            return Verdict(0, root(MemoryTree(), 0), "an event before the first", first)
        with _Checking(session, last) as checking:
            # While the workers check the entries, this process reads the stored tree.
            stored = _stored_tree(cursor, last)
            ranges = checking.results()
        leaves: list[bytes] = []
        for checked in ranges:
            blob = checked.leaves
            leaves += [blob[i : i + 32] for i in range(0, len(blob), 32)]
            if checked.problem is not None:
                assert checked.seq is not None
                tree = MemoryTree.of_leaves(leaves)
                return Verdict(tree.size, root(tree, tree.size), checked.problem, checked.seq)
        cursor.execute(_ORPHAN_ENTRY)
        orphan = _first(cursor)
        if orphan is not None:
            tree = MemoryTree.of_leaves(leaves[: orphan - 1])
            return Verdict(tree.size, root(tree, tree.size), "an entry without its event", orphan)
        return _compare_tree(stored, MemoryTree.of_leaves(leaves))
    finally:
        cursor.close()


class _Checking:
    """Every event from 1 to ``last`` checked: in this process, or split between worker
    processes that run while this one goes on (``results`` waits for them)."""

    def __init__(self, session: Session, last: int) -> None:
        self._session, self._last = session, last
        self._pool: ProcessPoolExecutor | None = None
        self._futures: list[Future[_Range]] = []

    def __enter__(self) -> _Checking:
        url = self._session.connection().engine.url
        forking = "fork" in multiprocessing.get_all_start_methods()
        last = self._last
        if last >= PARALLEL_FROM and forking and url.database not in (None, "", ":memory:"):
            step = -(-last // WORKERS)
            bounds = [(low, min(low + step - 1, last)) for low in range(1, last + 1, step)]
            self._pool = ProcessPoolExecutor(
                len(bounds), mp_context=multiprocessing.get_context("fork")
            )
            address = url.render_as_string(hide_password=False)
            self._futures = [
                self._pool.submit(_check_range_at, address, low, high) for low, high in bounds
            ]
        return self

    def results(self) -> list[_Range]:
        if self._pool is None:
            connection = self._session.connection().connection.dbapi_connection
            cursor = connection.cursor()  # type: ignore[union-attr]
            try:
                return [_check_range(cursor, 1, self._last)]
            finally:
                cursor.close()
        return [future.result() for future in self._futures]

    def __exit__(self, *_exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def _check_range_at(address: str, low: int, high: int) -> _Range:
    """``_check_range`` in a worker process, on a connection of its own."""
    engine = create_engine(address)
    try:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            return _check_range(cursor, low, high)
        finally:
            connection.close()
    finally:
        engine.dispose()


def _check_range(cursor: Any, low: int, high: int) -> _Range:
    leaves: list[bytes] = []
    add = leaves.append
    sha256, prefix = hashlib.sha256, LEAF_PREFIX
    expected = low

    def stop(problem: str, seq: int) -> _Range:
        return _Range(b"".join(leaves), problem, seq)

    cursor.execute(_EVENTS_WITH_ENTRIES.format(low=int(low), high=int(high)))
    while batch := cursor.fetchmany(VERIFY_BATCH):
        for row in batch:
            seq, entry = row[0], row[9]
            if seq != expected:
                return stop(f"sequence numbers jump from {expected - 1} to {seq}", seq)
            if entry is None:
                return stop("an event without its entry", seq)
            entry = bytes(entry)
            problem = _entry_problem(row, entry)
            if problem:
                return stop(problem, seq)
            add(sha256(prefix + entry).digest())
            expected += 1
    if expected != high + 1:
        return stop(f"sequence numbers jump from {expected - 1}", expected)
    return _Range(b"".join(leaves))


@dataclass(frozen=True)
class _StoredTree:
    """The stored subtree hashes, level by level, as (index, hash) in index order."""

    levels: list[list[tuple[int, bytes]]]
    # A subtree stored at a level no tree of the log's size has.
    too_high: bool


def _first(cursor: Any) -> Any:
    """The first column of the one row a query returned."""
    row = cursor.fetchone()
    return row[0] if row is not None else None


def _stored_tree(cursor: Any, last: int) -> _StoredTree:
    cursor.execute("SELECT max(level) FROM audit_tree")
    top = _first(cursor)
    levels: list[list[tuple[int, bytes]]] = [[]]  # leaf hashes are not stored
    for level in range(1, max(last, 1).bit_length()):
        # An int from range(): nothing of anyone else goes into the statement.
        cursor.execute(f"SELECT idx, hash FROM audit_tree WHERE level = {level} ORDER BY idx")  # noqa: S608
        levels.append(cursor.fetchall())
    return _StoredTree(levels, top is not None and top >= max(last, 1).bit_length())


def _compare_tree(stored: _StoredTree, tree: MemoryTree) -> Verdict:
    """Every stored subtree hash against the recomputed tree; the first wrong one named."""
    size = tree.size
    verdict = functools.partial(Verdict, size, root(tree, size))
    wrong: int | None = None
    past_end = stored.too_high
    lacking = False
    for level in range(1, size.bit_length()):
        expected = tree.level(level)
        rows = stored.levels[level] if level < len(stored.levels) else []
        if len(rows) > len(expected):
            past_end = True
            rows = rows[: len(expected)]
        if len(rows) < len(expected):
            lacking = True
        if [bytes(row[1]) for row in rows] == expected[: len(rows)] and all(
            row[0] == index for index, row in enumerate(rows)
        ):
            continue
        for index, (idx, value) in enumerate(rows):
            if idx != index or bytes(value) != expected[index]:
                seq = (index << level) + 1
                wrong = seq if wrong is None else min(wrong, seq)
                break
    for rows in stored.levels[size.bit_length() :]:
        past_end = past_end or bool(rows)
    if wrong is not None:
        return verdict("a stored tree hash does not recompute", wrong)
    if past_end:
        return verdict("the tree holds a subtree past the log's end")
    if lacking:
        return verdict("the stored tree lacks subtrees")
    return verdict()


def _entry_problem(event: tuple[Any, ...], entry: bytes) -> str | None:
    """Whether ``entry`` is the canonical entry of the event's row (compared field by
    field: parsing is several times cheaper than serializing the expected entry)."""
    seq, at, kind, actor, peer, message_id, digest, reason, detail, _ = event
    try:
        parsed = audit_pb2.AuditEntry.FromString(entry)
    except DecodeError:
        return "the entry does not parse"
    if parsed.index != seq - 1:
        return "the entry is of another position"
    try:
        if isinstance(at, str):
            at = dt.datetime.fromisoformat(at)
        since = (at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)) - _EPOCH
        stored_digest = bytes.fromhex(digest) if digest else b""
    except (TypeError, ValueError):
        return "the event's row is malformed (its time or digest does not read)"
    if digest and digest != stored_digest.hex():
        return "the event's row is malformed (its digest is not lower-case hex)"
    stamp = parsed.at
    if (
        parsed.event != kind
        or parsed.actor != (actor or "")
        or parsed.peer != (peer or "")
        or parsed.message_id != (message_id or "")
        or parsed.envelope_sha256 != stored_digest
        or parsed.reason != (reason or "")
        or parsed.detail != (detail or "")
        or stamp.seconds != since.days * 86400 + since.seconds
        or stamp.nanos != since.microseconds * 1000
    ):
        return "the event's row and its entry disagree (one was changed)"
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
    after: int = 0,
) -> list[AuditEvent]:
    """Events after seq ``after`` matching every filter given, in sequence order
    (``until`` excluded)."""
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if after:
        query = query.where(AuditEvent.seq > after)
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

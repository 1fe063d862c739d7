"""The node's storage: SQLAlchemy over SQLite (default) or PostgreSQL.

The store knows tables and transactions, never gRPC. Write work runs inside
``Store.write()``, which on SQLite begins with ``BEGIN IMMEDIATE`` so that
concurrent writers (the node and a CLI pinning a peer) queue on the lock
instead of failing mid-transaction.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from liaison.keys.card import PeerCard, parse_card
from liaison.keys.text import code_point, first_control_character
from liaison.server.store import audit, auditlog
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import (
    WITHOUT_BODY,
    AuditEvent,
    ContentFormat,
    Direction,
    Message,
    MessageBody,
    MessageState,
    Peer,
    PeerState,
    Receipt,
)
from liaison.server.store.records import MessageSummaryRow, summary_columns

# What identifies the pinned set and its states without parsing a card: (agency id, TLS
# fingerprint, pinned at, state, revoked at, previous card trusted until, our card it pins).
PinSummary = tuple[
    tuple[str, str, dt.datetime, str, dt.datetime | None, dt.datetime | None, int], ...
]
MAX_REVOKE_REASON = 200
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest migration (a test holds it equal to Alembic's head): a database already
# there is opened without loading Alembic and its scripts, a quarter of a second of
# every start of a node or a command.
SCHEMA_HEAD = "0013"
_WRITE = "liaison_write"
# How long a statement waits for another writer's lock before failing (tests shorten it).
SQLITE_BUSY_TIMEOUT_MS = 30_000


class StoreError(Exception):
    """The database is unreachable, or its contents break an invariant."""


class SchemaMismatch(StoreError):
    """The database's schema is not the one this version of the node needs."""


class DestroyOutcome(enum.StrEnum):
    DESTROYED = "destroyed"
    ALREADY = "already destroyed"
    NOT_FOUND = "not found"
    # An outbound notice still queued or in flight: its envelope is yet to be delivered.
    PENDING = "pending delivery"


@dataclass(frozen=True)
class ClearRow:
    """A message stored in clear by an earlier version, to be sealed."""

    pk: int
    direction: str
    sender: str
    message_id: str
    content: bytes
    subject: str
    case_reference: str


@dataclass(frozen=True)
class SealedRow:
    """The sealed form of a ``ClearRow`` (liaison.keys.storage.SealedContent's bytes)."""

    pk: int
    content: bytes
    data_key: bytes
    storage_key_id: str
    summary: bytes


class PinOutcome(enum.StrEnum):
    PINNED = "pinned"  # the agency was not pinned
    UNCHANGED = "unchanged"  # it was pinned with this very card
    REPLACED = "replaced"  # it was pinned with another card, now replaced


@dataclass(frozen=True)
class PinnedPeer:
    """A pinned card, verified again, with the operator's decisions about it."""

    card: PeerCard
    state: PeerState
    pinned_at: dt.datetime
    revoked_at: dt.datetime | None
    revoke_reason: str | None
    # The card a card update replaced, trusted beside ``card`` until ``previous_until``.
    previous: PeerCard | None = None
    previous_until: dt.datetime | None = None
    # The sequence of our card the peer pins, and the one being announced to it.
    our_card: int = 0
    announcing: int | None = None

    @property
    def revoked(self) -> bool:
        return self.state is PeerState.REVOKED


@dataclass(frozen=True)
class PeerChange:
    """A peer after an operator's command; ``changed`` is False if it was already so."""

    peer: PinnedPeer
    changed: bool


@dataclass(frozen=True)
class DeliveryHealth:
    """How deliveries to a peer went lately (from the audit trail)."""

    last_delivered_at: dt.datetime | None
    last_error_at: dt.datetime | None
    last_error: str | None


@dataclass(frozen=True)
class MessageQuery:
    """What a listing asks for, in the columns a database can filter (the sealed subject
    and case reference are matched after their summaries are opened)."""

    direction: Direction | None = None
    states: tuple[str, ...] = ()
    peer: str = ""
    category: int = 0
    handling: int = 0
    priority: int = 0
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    newest_first: bool = False


@dataclass(frozen=True)
class ListCursor:
    """Where a page ended: the last row's priority and primary key."""

    priority: int
    pk: int


class PinConflict(Exception):
    """The agency is pinned with another card, and replacing it was not asked for."""

    def __init__(self, pinned: PinnedPeer, offered: PeerCard) -> None:
        self.pinned = pinned
        self.offered = offered
        super().__init__(
            f"{offered.agency_id} is pinned with card {pinned.card.fingerprint}, "
            f"not {offered.fingerprint}"
        )


def revoke_reason_problem(reason: str) -> str | None:
    """Why ``reason`` cannot be a revocation's reason, or None if it can.

    It is the local operator's text, shown to other operators: one line, not
    empty, at most ``MAX_REVOKE_REASON`` characters, no control characters.
    """
    if not reason.strip():
        return "the reason is empty"
    if len(reason) > MAX_REVOKE_REASON:
        return f"the reason is {len(reason)} characters long; at most {MAX_REVOKE_REASON}"
    char = first_control_character(reason)
    if char is not None:
        return f"the reason contains control character {code_point(char)}"
    return None


def _pinned(peer: Peer) -> PinnedPeer:
    return PinnedPeer(
        card=parse_card(peer.signed_card),
        state=PeerState(peer.state),
        pinned_at=peer.added_at,
        revoked_at=peer.revoked_at,
        revoke_reason=peer.revoke_reason,
        previous=parse_card(peer.previous_card) if peer.previous_card else None,
        previous_until=peer.previous_until,
        our_card=peer.our_card,
        announcing=peer.announcing,
    )


def _bare(fingerprint: str) -> str:
    """A card fingerprint as the audit trail writes it: 64 hex digits, no spaces."""
    return fingerprint.replace(" ", "")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _configure_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT;
    # take it over so that SQLAlchemy's begin is the real one.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a receipt that was signed and returned is on disk, even after power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # Freed and overwritten cells and pages are zeroed, so a destroyed message's
        # bytes (or a clear row's, once sealed) do not linger in the file.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# The lock every write transaction on PostgreSQL takes first (a transaction-level
# advisory lock; the number spells "LIAISON"). It is SQLite's BEGIN IMMEDIATE for a
# database that several replicas of a node share: writes are serialised across all of
# them, so that each transaction reads the audit log's last sequence number and right
# edge and appends after them with no other append in between. The group committer
# keeps the number of such transactions to one per batch.
POSTGRESQL_WRITE_LOCK = 0x4C494149534F4E


# A writer waits this long for the lock, then fails (and is retried, logged): a replica
# frozen while holding it must not stall every other one for as long as TCP takes to
# notice (SQLite's busy timeout is the same bound).
POSTGRESQL_LOCK_TIMEOUT = "30s"
# Every statement of a write sees what the previous holder of the lock committed: the
# design needs READ COMMITTED whatever the role's or database's default is.
POSTGRESQL_OPTIONS: dict[str, Any] = {
    "isolation_level": "READ COMMITTED",
    # A connection to a database host that vanished is found by keepalives, not hours
    # of TCP retransmission.
    "connect_args": {
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    },
}


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_WRITE, False):
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{POSTGRESQL_LOCK_TIMEOUT}'")
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({POSTGRESQL_WRITE_LOCK})")


# Statements of every call or send, built once: SQLAlchemy derives a cache key from a
# statement each time it runs one, and building it anew costs more than running it.
_PEER_STATE = select(Peer.state).where(Peer.agency_id == bindparam("agency"))
_STATE_COLUMNS = (Message.recipient, Message.message_id, Message.state, Message.failure_reason)
_OUTBOUND_STATE = select(*_STATE_COLUMNS, Message.notice_id).where(
    Message.direction == Direction.OUTBOUND.value, Message.message_id == bindparam("message_id")
)
_EVENTS_AFTER = (
    select(AuditEvent)
    .where(AuditEvent.seq > bindparam("after"))
    .order_by(AuditEvent.seq)
    .limit(bindparam("limit"))
)
_NOTICE_STATES = (
    select(*_STATE_COLUMNS).where(Message.notice_id == bindparam("notice_id")).order_by(Message.id)
)


def known_revisions() -> set[str]:
    """The revisions of this version's migrations (their files are named after them)."""
    return {path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9]*.py")}


class Store:
    """Opens the database, applies migrations, and hands out sessions."""

    def __init__(self, url: str) -> None:
        self.url = url
        # hide_parameters: SQL errors must never carry notice content into a log.
        postgresql = url.startswith("postgresql")
        self.engine = create_engine(
            url,
            pool_pre_ping=not url.startswith("sqlite"),
            hide_parameters=True,
            **(POSTGRESQL_OPTIONS if postgresql else {}),
        )
        if self.engine.dialect.name == "sqlite":
            _configure_sqlite(self.engine)
        elif self.engine.dialect.name == "postgresql":
            _configure_postgresql(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        edge = auditlog.EdgeCache()
        self._write = sessionmaker(
            self.engine.execution_options(**{_WRITE: True}),
            expire_on_commit=False,
            info={auditlog.EDGE_CACHE: edge},
        )
        # The audit log's entries and subtree hashes of a transaction, written in one go;
        # the tree's right edge kept for the next transaction.
        event.listen(self._write, "before_commit", auditlog.write_pending)
        event.listen(self._write, "after_commit", edge.publish)
        event.listen(self._write, "after_rollback", edge.forget)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        if self.schema_revision() == SCHEMA_HEAD:
            return
        from alembic import command  # noqa: PLC0415 - only when there is work for it
        from alembic.config import Config  # noqa: PLC0415

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def check_schema(self) -> None:
        """Raise ``SchemaMismatch`` unless the database is at ``SCHEMA_HEAD``, saying what
        to do: a node never changes a schema by itself (several replicas may share the
        database, and an upgrade is the administrator's step, after a backup)."""
        revision = self.schema_revision()
        if revision == SCHEMA_HEAD:
            return
        if revision is None:
            raise SchemaMismatch(
                "the database holds no node schema: run `liaison db upgrade` to create it "
                "(or `liaison init` for a new node)"
            )
        if revision in known_revisions():
            raise SchemaMismatch(
                f"the database schema is at revision {revision} and this version of liaison "
                f"needs {SCHEMA_HEAD}: back the database up, then run `liaison db upgrade` "
                "(with several replicas: stop them all first)"
            )
        raise SchemaMismatch(
            f"the database schema is at revision {revision[:32]!r}, which this version of "
            f"liaison does not know (it knows up to {SCHEMA_HEAD}): a newer version wrote "
            "it; run that version"
        )

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None: none yet)."""
        with self.engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A fresh session in one write transaction, committed on success."""
        with self._write() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def lookup(self) -> Iterator[Connection]:
        """A read transaction without an ORM session, for the small lookups made on every
        call (who is calling, a key's earlier request, a state): a quarter of the cost."""
        with self.engine.connect() as connection:
            yield connection

    # Peers -----------------------------------------------------------------

    def pin_peer(
        self,
        card: PeerCard,
        *,
        actor: str,
        now: dt.datetime,
        replace: bool = False,
        our_card: int = 0,
    ) -> PinOutcome:
        """Trust ``card`` and audit it; the same card again changes nothing.

        An agency pinned with another card keeps it unless ``replace`` is
        given: raises ``PinConflict`` (nothing written). A replaced card keeps
        the peer's state: a revoked peer stays revoked; the card it replaced
        by a card update, if any, is no longer trusted. ``our_card`` is the
        sequence of our own current card, which a newly pinned peer is taken
        to pin (it was handed our card out of band, as we were its).
        """
        with self.write() as session:
            peer = session.get(Peer, card.agency_id)
            if peer is not None and peer.signed_card == card.signed_card:
                return PinOutcome.UNCHANGED
            if peer is not None and not replace:
                raise PinConflict(_pinned(peer), card)
            outcome = PinOutcome.PINNED if peer is None else PinOutcome.REPLACED
            new = _bare(card.fingerprint)
            if peer is None:
                peer = Peer(
                    agency_id=card.agency_id, state=PeerState.ACTIVE.value, our_card=our_card
                )
                session.add(peer)
                kind, detail = AuditKind.PEER_PINNED, f"card {new}"
            else:
                old = _bare(_pinned(peer).card.fingerprint)
                kind, detail = AuditKind.PEER_REPLACED, f"card {old} replaced by card {new}"
            peer.name = card.name
            peer.endpoint = card.endpoint
            peer.signed_card = card.signed_card
            peer.tls_fingerprint = card.tls_fingerprint
            peer.added_at = now
            peer.previous_card = None
            peer.previous_until = None
            audit.append(session, kind, at=now, peer=card.agency_id, actor=actor, detail=detail)
        return outcome

    def remove_peer(self, agency_id: str, *, actor: str, now: dt.datetime) -> PinnedPeer | None:
        """Unpin ``agency_id`` and audit it; returns what was pinned, None if nothing was."""
        with self.write() as session:
            peer = session.get(Peer, agency_id)
            if peer is None:
                return None
            removed = _pinned(peer)
            session.delete(peer)
            audit.append(
                session,
                AuditKind.PEER_REMOVED,
                at=now,
                peer=agency_id,
                actor=actor,
                detail=f"card {_bare(removed.card.fingerprint)}, {removed.state.value}",
            )
        return removed

    def revoke_peer(
        self, agency_id: str, reason: str, *, actor: str, now: dt.datetime
    ) -> PeerChange | None:
        """Revoke a pinned peer with the operator's ``reason``, audited; None if not pinned.

        Raises ``ValueError`` for a reason that ``revoke_reason_problem`` refuses.
        An already revoked peer is left as it is (``changed`` is False).
        """
        problem = revoke_reason_problem(reason)
        if problem:
            raise ValueError(problem)
        with self.write() as session:
            peer = session.get(Peer, agency_id)
            if peer is None:
                return None
            if peer.state == PeerState.REVOKED.value:
                return PeerChange(_pinned(peer), changed=False)
            peer.state = PeerState.REVOKED.value
            peer.revoked_at = now
            peer.revoke_reason = reason
            revoked = _pinned(peer)
            audit.append(
                session,
                AuditKind.PEER_REVOKED,
                at=now,
                peer=agency_id,
                actor=actor,
                detail=f"card {_bare(revoked.card.fingerprint)}; reason: {reason}",
            )
        return PeerChange(revoked, changed=True)

    def reinstate_peer(self, agency_id: str, *, actor: str, now: dt.datetime) -> PeerChange | None:
        """End a peer's revocation, audited; None if not pinned, unchanged if not revoked."""
        with self.write() as session:
            peer = session.get(Peer, agency_id)
            if peer is None:
                return None
            if peer.state != PeerState.REVOKED.value:
                return PeerChange(_pinned(peer), changed=False)
            since = peer.revoked_at
            peer.state = PeerState.ACTIVE.value
            peer.revoked_at = None
            peer.revoke_reason = None
            reinstated = _pinned(peer)
            audit.append(
                session,
                AuditKind.PEER_REINSTATED,
                at=now,
                peer=agency_id,
                actor=actor,
                detail=f"card {_bare(reinstated.card.fingerprint)}; revoked since "
                + (since.isoformat() if since else "unknown"),
            )
        return PeerChange(reinstated, changed=True)

    def handed_our_card(
        self, agency_id: str, sequence: int, *, actor: str, now: dt.datetime
    ) -> PeerChange | None:
        """Record that ``agency_id`` now pins our card ``sequence``, handed to it out of
        band (its announcement failed or expired); audited. None if it is not pinned.

        It then gets the next rotation's announcement like every other peer.
        """
        with self.write() as session:
            peer = session.get(Peer, agency_id)
            if peer is None:
                return None
            if peer.our_card == sequence and peer.announcement_id is None:
                return PeerChange(_pinned(peer), changed=False)
            before = peer.our_card
            if peer.announcement_id is not None:  # its announcement, if still queued, is moot
                session.execute(
                    update(Message)
                    .where(
                        Message.message_id == peer.announcement_id,
                        Message.direction == Direction.OUTBOUND.value,
                        Message.state == MessageState.QUEUED.value,
                    )
                    .values(state=MessageState.CANCELLED.value, failure_reason="SUPERSEDED")
                )
            peer.our_card = sequence
            peer.announcing = None
            peer.announcement_id = None
            audit.append(
                session,
                AuditKind.CARD_HANDED_OVER,
                at=now,
                peer=agency_id,
                actor=actor,
                detail=f"pins our card {sequence} (was {before}), handed over out of band",
            )
            return PeerChange(_pinned(peer), changed=True)

    def pin_summary(self) -> PinSummary:
        """A cheap fingerprint of the ``peers`` table: it changes with every pin and its state."""
        with self.read() as session:
            rows = session.execute(
                select(
                    Peer.agency_id,
                    Peer.tls_fingerprint,
                    Peer.added_at,
                    Peer.state,
                    Peer.revoked_at,
                    Peer.previous_until,
                    Peer.our_card,
                ).order_by(Peer.agency_id)
            ).all()
        return tuple((r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows)

    def pinned_peer(self, agency_id: str) -> PinnedPeer | None:
        """The pinned card of ``agency_id`` (verified again) and its state, if pinned."""
        with self.read() as session:
            peer = session.get(Peer, agency_id)
            return None if peer is None else _pinned(peer)

    def pinned_peers(self) -> list[PinnedPeer]:
        """Every pinned peer with its state, each card verified again, by agency id."""
        with self.read() as session:
            return [
                _pinned(peer) for peer in session.scalars(select(Peer).order_by(Peer.agency_id))
            ]

    def peer_cards(self) -> list[PeerCard]:
        """Every pinned card, each verified again."""
        return [peer.card for peer in self.pinned_peers()]

    def is_revoked(self, agency_id: str) -> bool:
        """True if ``agency_id`` is pinned and revoked."""
        with self.lookup() as connection:
            state = connection.scalar(_PEER_STATE, {"agency": agency_id})
        return state == PeerState.REVOKED.value

    def delivery_health(self, agency_id: str) -> DeliveryHealth:
        """When a notice to ``agency_id`` was last delivered, and the last delivery error."""

        def last(session: Session, kinds: tuple[AuditKind, ...]) -> AuditEvent | None:
            return session.scalars(
                select(AuditEvent)
                .where(
                    AuditEvent.peer == agency_id,
                    AuditEvent.event.in_([kind.value for kind in kinds]),
                )
                .order_by(AuditEvent.seq.desc())
                .limit(1)
            ).first()

        with self.read() as session:
            success = last(session, (AuditKind.DELIVERED,))
            error = last(
                session,
                (
                    AuditKind.DELIVERY_RETRY,
                    AuditKind.PEER_UNREACHABLE,
                    AuditKind.REJECTED_BY_PEER,
                    AuditKind.RECEIPT_INVALID,
                ),
            )
        return DeliveryHealth(
            last_delivered_at=success.at if success else None,
            last_error_at=error.at if error else None,
            last_error=(
                f"{error.event}: {error.reason or error.detail or ''}".rstrip(": ")
                if error
                else None
            ),
        )

    def pending_by_recipient(self) -> dict[str, int]:
        """Outbound notices not yet delivered, failed or expired (queued or in flight),
        per recipient: held while it is revoked."""
        with self.read() as session:
            rows = session.execute(
                select(Message.recipient, func.count())
                .where(
                    Message.direction == Direction.OUTBOUND.value,
                    Message.state.in_([MessageState.QUEUED.value, MessageState.SENT.value]),
                )
                .group_by(Message.recipient)
            ).all()
        return {row[0]: int(row[1]) for row in rows}

    # Messages ----------------------------------------------------------------

    def stored_bytes_by_sender(self) -> dict[str, int]:
        """Envelope bytes stored from each peer: what counts against its quota."""
        with self.read() as session:
            rows = session.execute(
                select(Message.sender, func.sum(func.length(MessageBody.envelope)))
                .join(MessageBody, MessageBody.message_pk == Message.id)
                .where(Message.direction == Direction.INBOUND.value)
                .group_by(Message.sender)
            ).all()
        return {row[0]: int(row[1] or 0) for row in rows}

    def message(self, message_id: str) -> tuple[Message, Receipt | None] | None:
        """A message by id, with its receipt if it has one.

        Should a peer have reused an id of ours, this node's own message is the one found.
        """
        with self.read() as session:
            row = session.scalars(
                select(Message)
                .where(Message.message_id == message_id)
                # "outbound" sorts after "inbound": descending puts our own message first.
                .order_by(Message.direction.desc(), Message.id)
            ).first()
            if row is None:
                return None
            receipt = session.scalars(select(Receipt).where(Receipt.message_pk == row.id)).first()
            return row, receipt

    def outbound_states(self, message_id: str) -> list[tuple[str, str, str, str | None]]:
        """(recipient, message id, state, failure reason) of the outbound message
        ``message_id``, or of every recipient's message of its notice; light columns only."""
        with self.lookup() as connection:
            row = connection.execute(_OUTBOUND_STATE, {"message_id": message_id}).first()
            if row is None:
                return []
            if row.notice_id is None:
                return [(row[0], row[1], row[2], row[3])]
            rows = connection.execute(_NOTICE_STATES, {"notice_id": row.notice_id}).all()
            return [(r[0], r[1], r[2], r[3]) for r in rows]

    def notice_messages(self, message_id: str) -> list[Message]:
        """The messages of the notice that ``message_id`` (its notice id, or the message
        id of one of its recipients) belongs to, by recipient order; [] for a notice sent
        to one recipient, or an unknown id."""
        with self.read() as session:
            notice_id = session.scalar(
                select(Message.notice_id).where(
                    Message.direction == Direction.OUTBOUND.value,
                    Message.message_id == message_id,
                )
            )
            if notice_id is None:
                return []
            return list(
                session.scalars(
                    select(Message)
                    .options(WITHOUT_BODY)
                    .where(Message.notice_id == notice_id)
                    .order_by(Message.id)
                )
            )

    def received_message(self, message_id: str) -> Message | None:
        """The inbound message ``message_id`` (the newest, should two peers share an id)."""
        with self.read() as session:
            return session.scalars(
                select(Message)
                .where(
                    Message.message_id == message_id,
                    Message.direction == Direction.INBOUND.value,
                )
                .order_by(Message.id.desc())
            ).first()

    def state(self, message_id: str) -> str:
        """State of a message this node sent (raises ``StoreError`` if there is none)."""
        with self.read() as session:
            state = session.scalar(
                select(Message.state).where(
                    Message.message_id == message_id,
                    Message.direction == Direction.OUTBOUND.value,
                )
            )
        if state is None:
            raise StoreError(f"no outbound message {message_id}")
        return state

    def page(
        self, query: MessageQuery, after: ListCursor | None, count: int
    ) -> list[MessageSummaryRow]:
        """Up to ``count`` summaries matching ``query``'s clear columns, in its order,
        after the row ``after`` names. Only summary columns are read."""
        columns = summary_columns()
        statement = select(*columns)
        if query.direction is not None:
            statement = statement.where(Message.direction == query.direction.value)
        if query.states:
            statement = statement.where(Message.state.in_(query.states))
        if query.peer:
            statement = statement.where(
                or_(
                    and_(
                        Message.direction == Direction.OUTBOUND.value,
                        Message.recipient == query.peer,
                    ),
                    and_(
                        Message.direction == Direction.INBOUND.value, Message.sender == query.peer
                    ),
                )
            )
        for column, value in (
            (Message.category, query.category),
            (Message.handling, query.handling),
            (Message.priority, query.priority),
        ):
            if value:
                statement = statement.where(column == value)
        if query.since is not None:
            statement = statement.where(Message.created_at >= query.since)
        if query.until is not None:
            statement = statement.where(Message.created_at < query.until)
        if query.newest_first:
            if after is not None:
                statement = statement.where(Message.id < after.pk)
            statement = statement.order_by(Message.id.desc())
        else:
            if after is not None:
                statement = statement.where(
                    or_(
                        Message.priority < after.priority,
                        and_(Message.priority == after.priority, Message.id < after.pk),
                    )
                )
            statement = statement.order_by(Message.priority.desc(), Message.id.desc())
        with self.read() as session:
            rows = session.execute(statement.limit(count))
            return [MessageSummaryRow(**row._asdict()) for row in rows]

    def messages(self, direction: Direction | None, limit: int) -> list[MessageSummaryRow]:
        """Summaries of the newest ``limit`` messages, newest first.

        Only the summary columns are read: a listing never loads an envelope or
        a notice, however large.
        """
        columns = summary_columns()
        with self.read() as session:
            query = select(*columns).order_by(Message.id.desc()).limit(limit)
            if direction is not None:
                query = query.where(Message.direction == direction.value)
            return [MessageSummaryRow(**row._asdict()) for row in session.execute(query)]

    def destroy_content(
        self,
        message_id: str,
        direction: Direction,
        *,
        sender: str | None = None,
        actor: str,
        now: dt.datetime,
    ) -> DestroyOutcome:
        """Make a message's content unrecoverable; its digests, receipt and audit stay.

        The wrapped data key and the sealed summary are overwritten with NULL,
        the content ciphertext and the envelope with nothing (the envelope too: an inbound one is
        HPKE ciphertext to this node's own key, which would open it). SQLite's
        ``secure_delete`` zeroes the freed bytes, and the write-ahead log is
        checkpointed and truncated after the commit, so no page image holding
        them is left in ``node.db`` or ``node.db-wal``. Audited
        ``content-destroyed``. ``sender`` tells apart inbound messages of one id
        from several peers (a ``StoreError`` if it is needed and not given).
        """
        with self.write() as session:
            query = select(Message).where(
                Message.message_id == message_id, Message.direction == direction.value
            )
            if sender is not None:
                query = query.where(Message.sender == sender)
            rows = session.scalars(query).all()
            if len(rows) > 1:
                raise StoreError(
                    f"several {direction.value} messages {message_id}: name the sender"
                )
            if not rows:
                return DestroyOutcome.NOT_FOUND
            row = rows[0]
            if row.content_format == ContentFormat.DESTROYED.value:
                return DestroyOutcome.ALREADY
            if direction is Direction.OUTBOUND and row.state in {
                MessageState.QUEUED.value,
                MessageState.SENT.value,
            }:
                return DestroyOutcome.PENDING
            row.data_key = None
            row.summary = None
            row.body.content = b""
            row.body.envelope = b""
            row.subject = ""
            row.case_reference = ""
            row.content_format = ContentFormat.DESTROYED.value
            row.updated_at = now
            outbound = direction is Direction.OUTBOUND
            audit.append(
                session,
                AuditKind.CONTENT_DESTROYED,
                at=now,
                message_id=message_id,
                peer=row.recipient if outbound else row.sender,
                actor=actor,
                envelope_sha256=row.envelope_sha256,
                detail=f"{direction.value}; data key, summary, content and envelope forgotten",
            )
        self.checkpoint()
        return DestroyOutcome.DESTROYED

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database and truncate it to nothing.

        Best effort: a reader holding an old snapshot keeps its frames until it ends.
        """
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def clear_rows(self, limit: int) -> list[ClearRow]:
        """Up to ``limit`` messages stored in clear by an earlier version."""
        with self.read() as session:
            rows = session.execute(
                select(
                    Message.id,
                    Message.direction,
                    Message.sender,
                    Message.message_id,
                    MessageBody.content,
                    Message.subject,
                    Message.case_reference,
                )
                .join(MessageBody, MessageBody.message_pk == Message.id)
                .where(Message.content_format == ContentFormat.CLEAR.value)
                .order_by(Message.id)
                .limit(limit)
            ).all()
        return [ClearRow(*row) for row in rows]

    def seal_clear_rows(self, sealed: list[SealedRow]) -> int:
        """Replace clear rows by their sealed form in one transaction; returns how many.

        A row that is no longer clear (destroyed meanwhile) is left alone.
        """
        done = 0
        with self.write() as session:
            for item in sealed:
                row = session.get(Message, item.pk)
                if row is None or row.content_format != ContentFormat.CLEAR.value:
                    continue
                row.body.content = item.content
                row.data_key = item.data_key
                row.storage_key_id = item.storage_key_id
                row.summary = item.summary
                row.subject = ""
                row.case_reference = ""
                row.content_format = ContentFormat.SEALED_V1.value
                done += 1
            if done:
                audit.append(
                    session,
                    AuditKind.CONTENT_SEALED,
                    at=dt.datetime.now(dt.UTC),
                    detail=f"{done} messages stored in clear sealed under storage key "
                    f"{sealed[0].storage_key_id}",
                )
        return done

    def timeline(self, message: Message) -> list[AuditEvent]:
        """Audit events of one message, in order.

        Ids are unique per sender only, so events are matched by id, peer and the
        kinds of the message's direction: a peer that reuses one of our ids cannot
        mix its events into our message's timeline.
        """
        outbound = message.direction == Direction.OUTBOUND.value
        kinds = audit.OUTBOUND_EVENTS if outbound else audit.INBOUND_EVENTS
        with self.read() as session:
            query = (
                select(AuditEvent)
                .where(
                    AuditEvent.message_id == message.message_id,
                    AuditEvent.peer == (message.recipient if outbound else message.sender),
                    AuditEvent.event.in_([kind.value for kind in kinds]),
                )
                .order_by(AuditEvent.seq)
            )
            return list(session.scalars(query).all())

    def last_audit_seq(self) -> int:
        with self.read() as session:
            return int(session.scalar(select(func.max(AuditEvent.seq))) or 0)

    def message_events(
        self, after_seq: int, kinds: frozenset[str], limit: int
    ) -> tuple[list[AuditEvent], int]:
        """Events about messages after ``after_seq`` (of ``kinds``, if given), and the seq
        the read reached: the events and the last seq looked at (to go on from)."""
        with self.read() as session:
            rows = list(session.scalars(_EVENTS_AFTER, {"after": after_seq, "limit": limit}).all())
        reached = rows[-1].seq if rows else after_seq
        wanted = [
            row for row in rows if row.message_id is not None and (not kinds or row.event in kinds)
        ]
        return wanted, reached

    def audit_events(self, after_seq: int = 0, limit: int = 1000) -> list[AuditEvent]:
        with self.read() as session:
            query = (
                select(AuditEvent)
                .where(AuditEvent.seq > after_seq)
                .order_by(AuditEvent.seq)
                .limit(limit)
            )
            return list(session.scalars(query).all())

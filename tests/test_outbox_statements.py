"""The outbox's plain statements: a message claimed in the transaction that queues it,
and a settlement that changes the row only while it is SENT and leaves the session's
copies of the row current."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import inspect, select, text, update

from liaison.server.store import outbox
from liaison.server.store.models import AuditEvent, Message, MessageState, Peer, Receipt
from liaison.server.store.outbox import DeliveryOutcome, PendingDelivery
from liaison.server.store.store import SCHEMA_HEAD, Store
from tests.conftest import migrate_to
from tests.notices import stored_record

MESSAGE_ID = "019ac9f0-8000-7000-8000-000000000001"


@pytest.fixture
def store(database_url: str) -> Store:
    """A migrated store, on SQLite and on PostgreSQL."""
    store = Store(database_url)
    store.migrate()
    return store


def _events(store: Store) -> list[tuple[str, str | None]]:
    with store.read() as session:
        rows = session.execute(
            select(AuditEvent.event, AuditEvent.detail)
            .where(AuditEvent.message_id == MESSAGE_ID)
            .order_by(AuditEvent.seq)
        ).all()
    return [(row[0], row[1]) for row in rows]


def _sent(store: Store, *, peer_status: str | None = None) -> PendingDelivery:
    """A queued message, claimed (SENT) as a delivery worker would have."""
    with store.write() as session:
        outbox.queue(session, stored_record(MESSAGE_ID), actor="ops")
        session.execute(
            update(Message).values(
                state=MessageState.SENT.value, peer_status=peer_status, attempts=1
            )
        )
        pk = session.scalar(select(Message.id))
    assert pk is not None
    record = stored_record(MESSAGE_ID)
    return PendingDelivery(
        pk, MESSAGE_ID, record.recipient, record.envelope, record.envelope_sha256,
        record.expires_at, 1,
    )  # fmt: skip


def _delivered(pending: PendingDelivery) -> DeliveryOutcome:
    return DeliveryOutcome(
        pending=pending,
        state=MessageState.DELIVERED,
        at=dt.datetime.now(dt.UTC),
        signed_receipt=b"receipt",
        receipt_status="accepted",
    )


def test_a_message_for_a_held_recipient_is_queued_not_claimed(store: Store) -> None:
    """An unpinned (or revoked) recipient's notices are held: a free place in its window
    does not make the queueing transaction claim one."""
    with store.write() as session:
        pending = outbox.queue(
            session, stored_record(MESSAGE_ID), actor="ops", claim_at=dt.datetime.now(dt.UTC)
        )
    assert pending is None
    with store.read() as session:
        message = session.scalars(select(Message)).one()
    assert (message.state, message.attempts) == (MessageState.QUEUED.value, 0)
    assert _events(store) == [("sealed", None)]


def test_a_settlement_leaves_a_copy_loaded_earlier_in_the_transaction_current(
    store: Store,
) -> None:
    """Another unit of the same group commit loaded the row before the settlement: what
    it reads afterwards is the settled row, not its stale copy."""
    pending = _sent(store)
    with store.write() as session:
        loaded = session.get_one(Message, pending.pk)
        assert loaded.state == MessageState.SENT.value
        outbox.settle(session, _delivered(pending))
        assert session.get_one(Message, pending.pk).state == MessageState.DELIVERED.value
    assert _events(store)[-2:] == [("receipt-verified", "accepted"), ("delivered", None)]


def test_a_settlement_applies_what_the_peer_said_before_its_receipt(store: Store) -> None:
    pending = _sent(store, peer_status=MessageState.ACKNOWLEDGED.value)
    with store.write() as session:
        outbox.settle(session, _delivered(pending))
    with store.read() as session:
        assert session.get_one(Message, pending.pk).state == MessageState.ACKNOWLEDGED.value


def test_a_settlement_of_a_message_no_longer_sent_changes_nothing(store: Store) -> None:
    """Recorded already (by an attempt whose commit was reported as failed): no second
    receipt, no second audit event."""
    pending = _sent(store)
    with store.write() as session:
        outbox.settle(session, _delivered(pending))
    before = _events(store)
    with store.write() as session:
        outbox.settle(session, _delivered(pending))
    assert _events(store) == before
    with store.read() as session:
        assert len(session.scalars(select(Receipt)).all()) == 1


def test_a_late_settlement_of_an_earlier_attempt_changes_nothing(store: Store) -> None:
    """Attempt 1's outcome is recorded only after the message was claimed again (its
    lease ran out while the commit was retried): attempt 2's claim stands."""
    pending = _sent(store)
    with store.write() as session:
        session.execute(update(Message).values(attempts=2))
    before = _events(store)
    with store.write() as session:
        outbox.settle(session, _delivered(pending))
    assert _events(store) == before
    with store.read() as session:
        row = session.get_one(Message, pending.pk)
        assert (row.state, row.attempts) == (MessageState.SENT.value, 2)
        assert session.scalars(select(Receipt)).all() == []


def test_a_message_body_is_apart_from_its_row_and_survives_the_schema_both_ways(
    store: Store,
) -> None:
    """Revision 0013 moved the envelope and the content out of ``messages`` (a state
    change rewrote them on SQLite); going down and up again keeps every byte."""
    with store.write() as session:
        outbox.queue(session, stored_record(MESSAGE_ID), actor="ops")
    assert {"envelope", "content"}.isdisjoint(_columns(store, "messages"))
    migrate_to(store, "0012")
    with store.engine.connect() as connection:
        row = connection.execute(
            text("SELECT envelope, content FROM messages WHERE message_id = :id"),
            {"id": MESSAGE_ID},
        ).one()
    assert (bytes(row[0]), bytes(row[1])) == (b"envelope", b"content")
    assert "message_bodies" not in inspect(store.engine).get_table_names()
    migrate_to(store, SCHEMA_HEAD)
    assert {"envelope", "content"}.isdisjoint(_columns(store, "messages"))
    found = store.message(MESSAGE_ID)
    assert found is not None
    assert (found[0].envelope, found[0].content) == (b"envelope", b"content")


def _columns(store: Store, table: str) -> set[str]:
    return {column["name"] for column in inspect(store.engine).get_columns(table)}


@pytest.mark.parametrize(
    ("max_bytes", "always_one", "claimed"),
    [(None, True, 3), (25, True, 2), (5, True, 1), (5, False, 0), (30, False, 3)],
)
def test_a_claim_takes_no_more_envelope_bytes_than_it_is_given(
    store: Store, max_bytes: int | None, always_one: bool, claimed: int
) -> None:
    """Three due messages of 10 envelope bytes each (issue 10: the delivery window in
    bytes); the first is taken whatever its size only when the caller says so."""
    ids = [MESSAGE_ID[:-1] + str(n) for n in range(3)]
    with store.write() as session:
        session.add(  # pinned, so that its notices are not held (the card is not read)
            Peer(
                agency_id="DE.BPOL.LO-RABAT",
                name="B",
                endpoint="127.0.0.1:1",
                signed_card=b"card",
                tls_fingerprint="00" * 32,
                added_at=dt.datetime.now(dt.UTC),
            )
        )
        for message_id in ids:
            record = dataclasses.replace(stored_record(message_id), envelope=b"e" * 10)
            outbox.queue(session, record, actor="ops")
    with store.write() as session:
        taken = outbox.claim_due(
            session,
            "DE.BPOL.LO-RABAT",
            now=dt.datetime.now(dt.UTC),
            limit=8,
            max_bytes=max_bytes,
            always_one=always_one,
        )
    assert [p.message_id for p in taken] == ids[:claimed]
    assert all(p.envelope == b"e" * 10 for p in taken)

"""Replicas of one node on one database (issue 11): a claim carries a lease; a replica
that restarts queues its own claims again at once, another replica's only once their
lease has run out; checkpoints are signed once per interval between them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, select, update

from liaison.server.store import auditlog, checkpoints, inbox, outbox
from liaison.server.store.models import AuditEvent, Message, MessageState, Peer, Receipt
from liaison.server.store.outbox import Lease
from liaison.server.store.store import Store
from liaison.v1 import node_pb2
from tests.conftest import RunningNode, make_home, pin_each_other, replica_of
from tests.notices import sample_notice, stored_record

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
WAIT = 60


@pytest.fixture
def store(database_url: str) -> Store:
    store = Store(database_url)
    store.migrate()
    return store


def _claimed(store: Store, message_id: str, replica: str | None, until: dt.datetime | None) -> None:
    with store.write() as session:
        outbox.queue(session, stored_record(message_id), actor="ops")
        session.execute(
            update(Message)
            .where(Message.message_id == message_id)
            .values(state=MessageState.SENT.value, claimed_by=replica, lease_until=until)
        )


def _states(store: Store) -> dict[str, tuple[str, str | None]]:
    with store.read() as session:
        rows = session.execute(select(Message.message_id, Message.state, Message.claimed_by))
        return {row[0]: (row[1], row[2]) for row in rows}


def _requeue_details(store: Store) -> dict[str, str | None]:
    with store.read() as session:
        rows = session.execute(
            select(AuditEvent.message_id, AuditEvent.detail).where(AuditEvent.event == "requeued")
        )
        return {row[0]: row[1] for row in rows}


MINE, LIVE, DEAD, OLD = (f"019ac9f0-8000-7000-8000-00000000000{n}" for n in range(1, 5))


def test_a_restart_queues_its_own_claims_and_the_run_out_ones_not_a_live_replicas(
    store: Store,
) -> None:
    _claimed(store, MINE, "me", NOW + dt.timedelta(minutes=1))
    _claimed(store, LIVE, "other", NOW + dt.timedelta(minutes=1))
    _claimed(store, DEAD, "gone", NOW - dt.timedelta(seconds=1))
    _claimed(store, OLD, None, None)  # claimed before leases existed
    with store.write() as session:
        assert outbox.requeue_in_flight(session, now=NOW, replica="me") == 3
    states = _states(store)
    assert states[LIVE] == (MessageState.SENT.value, "other")
    for message_id in (MINE, DEAD, OLD):
        assert states[message_id] == (MessageState.QUEUED.value, None)
    details = _requeue_details(store)
    assert set(details) == {MINE, DEAD, OLD}
    assert "cut off by a stop of this node" in (details[MINE] or "")
    assert "the lease of replica gone ran out" in (details[DEAD] or "")


def test_the_sweep_queues_only_claims_whose_lease_ran_out(store: Store) -> None:
    _claimed(store, LIVE, "other", NOW + dt.timedelta(seconds=1))
    _claimed(store, DEAD, "gone", NOW - dt.timedelta(seconds=1))
    with store.read() as session:
        assert outbox.any_lease_run_out(session, NOW)
    with store.write() as session:
        assert outbox.requeue_run_out(session, now=NOW) == ["DE.BPOL.LO-RABAT"]
    assert _states(store) == {
        LIVE: (MessageState.SENT.value, "other"),
        DEAD: (MessageState.QUEUED.value, None),
    }
    with store.read() as session:
        assert not outbox.any_lease_run_out(session, NOW)


def test_a_claim_names_the_replica_and_its_lease(store: Store) -> None:
    lease = Lease("me", NOW + dt.timedelta(minutes=1))
    with store.write() as session:
        session.add(  # pinned, so that its notices are not held (the card is not read)
            Peer(
                agency_id=B_ID,
                name="B",
                endpoint="127.0.0.1:1",
                signed_card=b"card",
                tls_fingerprint="00" * 32,
                added_at=NOW,
            )
        )
        outbox.queue(session, stored_record(MINE), actor="ops")
        session.execute(update(Message).values(next_attempt_at=NOW - dt.timedelta(seconds=1)))
    with store.write() as session:
        [pending] = outbox.claim_due(session, "DE.BPOL.LO-RABAT", now=NOW, limit=8, lease=lease)
    with store.read() as session:
        row = session.get_one(Message, pending.pk)
    assert (row.state, row.claimed_by, row.lease_until) == ("sent", "me", lease.until)


def test_replicas_sign_one_checkpoint_per_interval_between_them(store: Store) -> None:
    with store.write() as session:
        auditlog_size = checkpoints.due(session)
        assert auditlog_size is None  # an empty log: nothing to sign
    with store.write() as session:
        outbox.queue(session, stored_record(MINE), actor="ops")
    with store.write() as session:
        grown = checkpoints.due(session, signed_before=NOW)
        assert grown is not None
        checkpoints.add(session, size=grown[0], root=grown[1], note=b"note", at=NOW)
    with store.write() as session:
        outbox.queue(session, stored_record(LIVE), actor="ops")
    with store.write() as session:
        # Another replica, a moment later: the log grew, but a checkpoint is that recent.
        assert checkpoints.due(session, signed_before=NOW - dt.timedelta(minutes=4)) is None
        # Most of an interval later it is due again.
        assert checkpoints.due(session, signed_before=NOW + dt.timedelta(seconds=1)) is not None


# Two replicas running ----------------------------------------------------------------


def test_two_replicas_send_through_one_outbox_and_a_dead_ones_claims_are_delivered(
    tmp_path: Path, postgres_url: str
) -> None:
    a_home = make_home(tmp_path, A_ID, database_url=postgres_url)
    b_home = make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    second_home = replica_of(a_home, tmp_path / "replica-2")
    b, first, second = RunningNode(b_home), RunningNode(a_home), RunningNode(second_home)
    sent = []
    try:
        for node in (b, first, second):
            node.start()
        for replica in (first, second):
            with replica.client() as client:
                sent += [client.send_notice(B_ID, sample_notice(f"CASE-{i}")) for i in range(10)]
        for replica in (first, second):  # each replica sees all of them, whoever sent them
            with replica.client() as client:
                for result in sent:
                    status = client.get_status(result.message_id, wait_seconds=WAIT)
                    assert status.state == node_pb2.MESSAGE_STATE_DELIVERED
        b.stop()
        with first.client() as client:
            stranded = client.send_notice(B_ID, sample_notice("CASE-STRANDED"))
    finally:
        for node in (second, first, b):
            node.stop()
    # The replica that had it in flight died: its claim stays until its lease runs out.
    store = Store(postgres_url)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
    with store.write() as session:
        session.execute(
            update(Message)
            .where(Message.message_id == stranded.message_id)
            .values(state=MessageState.SENT.value, claimed_by="died", lease_until=until)
        )
    b, second = RunningNode(b_home), RunningNode(second_home)
    try:
        b.start()
        second.start()
        with second.client() as client:
            final = client.get_status(stranded.message_id, wait_seconds=WAIT)
        assert final.state == node_pb2.MESSAGE_STATE_DELIVERED
    finally:
        second.stop()
        b.stop()
    details = _requeue_details(store)
    assert "the lease of replica died ran out" in (details[stranded.message_id] or "")
    b_store = Store(b_home.database_url())
    with b_store.read() as session:
        received = session.scalars(
            select(Message.message_id).where(Message.direction == "inbound")
        ).all()
    assert sorted(received) == sorted([r.message_id for r in sent] + [stranded.message_id])
    with store.read() as session:
        assert auditlog.verify(session).ok


def test_two_replicas_receiving_one_envelope_at_once_store_it_once(database_url: str) -> None:
    """The same envelope reaches two replicas at the same moment (a peer retrying on
    another connection): one message and one receipt are stored; the other replica
    answers with that receipt."""
    stores = [Store(database_url), Store(database_url)]
    stores[0].migrate()
    record = dataclasses.replace(stored_record(MINE), sender=B_ID, recipient=A_ID)
    start = threading.Barrier(2)
    answers: list[inbox.StoredReceipt | None] = []

    def receive(store: Store, receipt: bytes) -> None:
        start.wait()
        with store.write() as session:
            answers.append(
                inbox.accept(session, record, sign_receipt=lambda _index: receipt, received_at=NOW)
            )

    threads = [
        threading.Thread(target=receive, args=(store, f"receipt {n}".encode()))
        for n, store in enumerate(stores)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = [answer for answer in answers if answer is None]
    earlier = [answer for answer in answers if answer is not None]
    assert len(stored) == len(earlier) == 1
    with stores[0].read() as session:
        assert session.scalars(select(Message.message_id)).all() == [MINE]
        kept = session.scalars(select(Receipt.signed_receipt)).all()
    assert earlier[0] is not None
    assert kept == [earlier[0].signed_receipt]


def test_a_watch_on_one_replica_sees_what_another_replica_did(
    tmp_path: Path, postgres_url: str
) -> None:
    """Notices sent through replica 1: replica 2's watch stream shows them queued and
    delivered, in the order of the one audit log (it reads the shared trail)."""
    a_home = make_home(tmp_path, A_ID, database_url=postgres_url)
    b_home = make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    second_home = replica_of(a_home, tmp_path / "replica-2")
    nodes = [RunningNode(b_home), RunningNode(a_home), RunningNode(second_home)]
    try:
        for node in nodes:
            node.start()
        with nodes[2].client() as client:
            after = max((e.seq for e in client.audit_events(after=0)), default=0)
        seen: list[tuple[int, str]] = []
        done = threading.Event()

        def follow() -> None:  # replica 2's stream, open before anything is sent
            with nodes[2].client() as client:
                for event in client.watch(after, events=["delivered"]):
                    seen.append((event.seq, event.message_id))
                    if len(seen) == 3:
                        done.set()
                        return

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        with nodes[1].client() as client:
            sent = [client.send_notice(B_ID, sample_notice(f"W-{n}")).message_id for n in range(3)]
        assert done.wait(WAIT)
        assert {message_id for _, message_id in seen} == set(sent)
        assert [seq for seq, _ in seen] == sorted(seq for seq, _ in seen)
    finally:
        for node in reversed(nodes):
            node.stop()


def test_queueing_claims_again_reads_no_envelope_or_content(store: Store) -> None:
    """A dead replica's window may hold 64 envelopes of 16 MiB: queueing its claims again
    reads the columns it changes and audits, not the bytes."""
    _claimed(store, MINE, "me", NOW + dt.timedelta(minutes=1))
    _claimed(store, DEAD, "gone", NOW - dt.timedelta(seconds=1))
    selects: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "messages" in statement:
            selects.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        with store.write() as session:
            outbox.requeue_run_out(session, now=NOW)
        with store.write() as session:
            outbox.requeue_in_flight(session, now=NOW, replica="me")
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    assert selects
    for statement in selects:  # the bodies are in message_bodies (revision 0013)
        assert not re.search(r"\bmessage_bodies\b|\.(envelope|content)\b", statement)
    assert set(_requeue_details(store)) == {MINE, DEAD}

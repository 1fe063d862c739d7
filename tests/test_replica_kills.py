"""Two replicas of one node on PostgreSQL, one of them killed with SIGKILL again and
again while notices are sent through both: every notice is queued once and
delivered once, and the audit log is one log that verifies (issue 11).

The short run is part of the suite; the long one (1,000 notices, five kills) is
opt-in: ``pytest -m soak``.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from liaison.client import LiaisonClient
from liaison.client.errors import NodeUnavailable
from liaison.server.node import replica_name
from liaison.server.store import auditlog
from liaison.server.store.models import AuditEvent, Message, Receipt
from liaison.server.store.store import Store
from liaison.v1 import node_pb2
from tests.cli_homes import run
from tests.conftest import ServedNode, make_home, pin_each_other, replica_of
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
WAIT = 120


def _send(clients: list[LiaisonClient], first: int, key: str, number: int) -> str:
    """Send through replica ``first``; while it is down, through the other, with the same
    idempotency key: a retry returns what an earlier try queued, on either replica."""
    for attempt in itertools.count():
        client = clients[(first + attempt) % len(clients)]
        try:
            return client.send_notice(
                B_ID, sample_notice(f"KILL-{number}"), idempotency_key=key, retries=0
            ).message_id
        except NodeUnavailable:
            if attempt > 400:
                raise
            time.sleep(0.05)  # a replica is being restarted; nothing to await from here
    raise AssertionError("unreachable")


def run_replica_kills(
    tmp_path: Path,
    postgres_url: str,
    capsys: pytest.CaptureFixture[str],
    *,
    notices: int,
    kills: int,
) -> None:
    first_home = make_home(tmp_path, A_ID, database_url=postgres_url)
    b_home = make_home(tmp_path, B_ID)
    pin_each_other(first_home, b_home)
    second_home = replica_of(first_home, tmp_path / "replica-2")
    b = ServedNode(b_home, tmp_path / "b.log")
    replicas = [
        ServedNode(first_home, tmp_path / "a1.log"),
        ServedNode(second_home, tmp_path / "a2.log"),
    ]
    sent: list[str] = []
    progress = threading.Condition()
    errors: list[BaseException] = []

    def send_all() -> None:
        clients = [LiaisonClient.from_home(home.path) for home in (first_home, second_home)]
        try:
            for number in range(notices):
                message_id = _send(clients, number % 2, f"kill-{number}", number)
                with progress:
                    sent.append(message_id)
                    progress.notify_all()
        except BaseException as error:  # reported by the test
            errors.append(error)
        finally:
            for client in clients:
                client.close()

    sender = threading.Thread(target=send_all)
    sender.start()
    try:
        for kill in range(1, kills + 1):
            with progress:  # spread the kills over the run
                progress.wait_for(
                    lambda k=kill: len(sent) >= notices * k // (kills + 1) or bool(errors), WAIT
                )
            victim = replicas[1]
            victim.process.kill()  # SIGKILL: no shutdown of any kind
            victim.process.wait()
            victim.stop()
            replicas[1] = ServedNode(second_home, tmp_path / f"a2-{kill}.log")
        sender.join()
        assert not errors, errors
        assert len(sent) == notices
        with LiaisonClient.from_home(first_home.path) as client:
            for message_id in sent:
                status = client.get_status(message_id, wait_seconds=WAIT)
                assert status.state == node_pb2.MESSAGE_STATE_DELIVERED, message_id
    finally:
        for node in (*replicas, b):
            node.stop()

    a_store, b_store = Store(postgres_url), Store(b_home.database_url())
    try:
        with a_store.read() as session:
            outbound = session.scalars(
                select(Message.message_id).where(Message.direction == "outbound")
            ).all()
            receipts = session.scalar(select(func.count()).select_from(Receipt))
            verdict = auditlog.verify(session)
            trail = session.execute(
                select(AuditEvent.message_id, AuditEvent.event, AuditEvent.detail)
                .where(AuditEvent.event.in_(["sent", "requeued"]))
                .order_by(AuditEvent.seq)
            ).all()
        with b_store.read() as session:
            received = session.scalars(
                select(Message.message_id).where(Message.direction == "inbound")
            ).all()
    finally:
        a_store.close()
        b_store.close()
    # Queued once per call (one message per idempotency key, whichever replica took it),
    # delivered once (stored once at the receiver, one receipt each at the sender).
    assert sorted(outbound) == sorted(set(sent))
    assert len(set(sent)) == notices
    assert sorted(received) == sorted(outbound)
    assert receipts == notices
    assert verdict.ok, verdict
    # One consistent log, as an auditor checks it, from either replica's home.
    for home in (first_home, second_home):
        code, out, err = run(capsys, "audit", "verify", "--home", str(home.path))
        assert code == 0, out + err
    # Sent twice only what the killed replica had in flight: a restart queues again its
    # own claims, never those the live replica holds.
    killed = f"by replica {replica_name(second_home)}"
    last_claim: dict[str, str] = {}
    for message_id, event, detail in trail:
        if event == "sent":
            last_claim[message_id] = detail
        else:
            assert "cut off by a stop of this node" in detail, detail
            assert last_claim[message_id].endswith(killed), (message_id, last_claim[message_id])


@pytest.mark.timeout(600)
def test_replicas_lose_and_double_nothing_through_kills(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_replica_kills(tmp_path, postgres_url, capsys, notices=150, kills=2)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_replicas_lose_and_double_nothing_through_kills_long(
    tmp_path: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_replica_kills(tmp_path, postgres_url, capsys, notices=1000, kills=5)

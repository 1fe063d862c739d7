"""Delivery that never stalls and never doubles: the faults issue 7 found, one test each.

Each test reproduces a fault seen from outside (a database locked by another
process, a peer that is down for a while, a call whose answer was lost, a node
stopped mid-attempt) on real nodes, and each fails on the code before its fix.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import update

from liaison.client.api import LiaisonClient
from liaison.client.errors import NodeUnavailable
from liaison.server.home import NodeHome, init_home
from liaison.server.store import store as store_module
from liaison.server.store.models import Message, MessageState
from liaison.server.store.store import Store
from liaison.v1 import node_pb2
from tests.conftest import (
    TEST_KEYS,
    Inspector,
    RunningNode,
    free_port,
    make_home,
    pin_each_other,
    set_limits,
)
from tests.faults import FaultProxy
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
WAIT = 60
DELIVERED = node_pb2.MESSAGE_STATE_DELIVERED


class LogWatch(logging.Handler):
    """Sets an event when a record matching ``pattern`` is logged, from any thread."""

    def __init__(self, pattern: str) -> None:
        super().__init__(logging.DEBUG)
        self._pattern = re.compile(pattern)
        self.seen = threading.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self._pattern.search(record.getMessage()):
            self.count += 1
            self.seen.set()


@contextmanager
def watching(pattern: str) -> Iterator[LogWatch]:
    root = logging.getLogger("liaison")
    watch = LogWatch(pattern)
    level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        root.removeHandler(watch)
        root.setLevel(level)


@contextmanager
def locked(home: NodeHome) -> Iterator[None]:
    """Another process's write lock on the node's database, held for the block."""
    connection = sqlite3.connect(home.path / "node.db", isolation_level=None, timeout=30)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("ROLLBACK")
        connection.close()


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[NodeHome, NodeHome]:
    # A writer waits this long for another's lock before failing (30 s in production).
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    # Short backoffs, so that a per-message retry storm would show within the test.
    set_limits(a_home, retry_base_seconds=0.05, retry_max_seconds=0.5)
    return a_home, b_home


def send(node: RunningNode, count: int, **options: object) -> list[str]:
    with node.client() as client:
        return [
            client.send_notice(B_ID, sample_notice(f"F-{n}"), **options).message_id  # type: ignore[arg-type]
            for n in range(count)
        ]


def states(node: RunningNode, message_ids: list[str], wait: int = WAIT) -> set[int]:
    with node.client() as client:
        return {client.get_status(m, wait_seconds=wait).state for m in message_ids}


def test_a_database_locked_under_an_idle_queue_does_not_stop_delivery(
    homes: tuple[NodeHome, NodeHome],
) -> None:
    """Issue 7: the worker died on `database is locked` and its queue stayed QUEUED."""
    a_home, b_home = homes
    a = RunningNode(a_home).start()
    try:
        with watching(r"DE\.BPOL\.LO-RABAT is still unreachable|attempt") as down:
            ids = send(a, 5)  # B is down: nothing is delivered, the queue waits
            assert down.seen.wait(WAIT)
        b = RunningNode(b_home).start()
        try:
            # B is back while another process holds A's database: A's worker cannot
            # write what it would (release the queue, claim, settle) and must not die.
            with watching(r"delivery to DE\.BPOL\.LO-RABAT failed") as failed, locked(a_home):
                assert failed.seen.wait(WAIT), "the worker's failure was not logged at once"
            assert states(a, ids) == {DELIVERED}
        finally:
            b.stop()
    finally:
        a.stop()


def test_the_expiry_sweep_survives_a_locked_database(homes: tuple[NodeHome, NodeHome]) -> None:
    a_home, _b_home = homes
    a = RunningNode(a_home).start()
    try:
        with watching(r"DE\.BPOL\.LO-RABAT is still unreachable") as down:
            ids = send(a, 1, ttl_seconds=3)
            assert down.seen.wait(WAIT)  # B is down: the notice waits in the queue
        # Locked before the envelope expires (it lives 2 to 3 s: times are whole seconds).
        with watching(r"the expiry sweep failed") as failed, locked(a_home):
            assert failed.seen.wait(WAIT)
        assert states(a, ids) == {node_pb2.MESSAGE_STATE_EXPIRED}
    finally:
        a.stop()


def test_an_outage_costs_the_attempts_in_flight_not_one_per_message_per_backoff(
    homes: tuple[NodeHome, NodeHome],
) -> None:
    """Issue 7: a 60 s outage cost 1,241 attempts for 400 notices."""
    a_home, b_home = homes
    a = RunningNode(a_home).start()
    try:
        with watching(r"DE\.BPOL\.LO-RABAT is still unreachable") as probes:
            ids = send(a, 40)
            # The outage lasts while A probes B three times, with backoffs that would
            # have retried each message about as often.
            while probes.count < 3:
                assert probes.seen.wait(WAIT)
                probes.seen.clear()
        b = RunningNode(b_home).start()
        try:
            assert states(a, ids) == {DELIVERED}
        finally:
            b.stop()
        with Inspector(a_home) as inspector:
            events = inspector.audit_since(0)
        attempts = [e for e in events if e.event == "sent"]
        # Each notice: the attempt in flight when the outage was found, then the delivery.
        assert len(attempts) <= 2 * len(ids)
        assert [e.event for e in events].count("peer-unreachable") == 1
        assert [e.event for e in events].count("peer-reachable") == 1
    finally:
        a.stop()


def test_a_retry_after_a_lost_answer_queues_one_notice(homes: tuple[NodeHome, NodeHome]) -> None:
    """Issue 7: a client that timed out while the database was locked, and retried,
    had the peer receive the same notice two to five times under different ids."""
    a_home, b_home = homes
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        notice = sample_notice("ONCE")
        impatient = LiaisonClient.from_home(a_home.path, timeout=1.0)
        try:
            with locked(a_home), pytest.raises(NodeUnavailable):
                impatient.send_notice(B_ID, notice, idempotency_key="case-42:1", retries=0)
            # The answer was lost; the notice may or may not have been queued. Retry.
            first = impatient.send_notice(B_ID, notice, idempotency_key="case-42:1")
            again = impatient.send_notice(B_ID, notice, idempotency_key="case-42:1")
        finally:
            impatient.close()
        assert first.message_id == again.message_id
        assert states(a, [first.message_id]) == {DELIVERED}
        with Inspector(b_home) as inspector:
            assert inspector.count_messages() == 1
        # The same key for another notice is refused, not silently answered.
        with a.client() as client, pytest.raises(Exception, match="another request"):
            client.send_notice(B_ID, sample_notice("OTHER"), idempotency_key="case-42:1")
    finally:
        b.stop()
        a.stop()


def test_an_attempt_cut_off_by_a_stop_is_requeued_and_audited(
    homes: tuple[NodeHome, NodeHome],
) -> None:
    """Issue 7: an attempt cut off by a crash left a `sent` event with no outcome."""
    a_home, b_home = homes
    a = RunningNode(a_home).start()
    ids = send(a, 1)
    a.stop()
    # As if the node had been killed between sending and hearing back.
    store = Store(a_home.database_url())
    try:
        with store.write() as session:
            session.execute(
                update(Message)
                .where(Message.message_id == ids[0])
                .values(state=MessageState.SENT.value)
            )
    finally:
        store.close()
    b = RunningNode(b_home).start()
    a = RunningNode(a_home).start()
    try:
        assert states(a, ids) == {DELIVERED}
        with a.client() as client:
            events = [e.event for e in client.get_status(ids[0]).timeline]
        assert "requeued" in events
        assert events.index("requeued") < events.index("delivered")
    finally:
        a.stop()
        b.stop()


def test_audit_times_never_run_backwards(homes: tuple[NodeHome, NodeHome]) -> None:
    """Issue 7: `sealed` events carried the notice time rounded to the second."""
    a_home, b_home = homes
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        assert states(a, send(a, 5)) == {DELIVERED}
    finally:
        a.stop()
        b.stop()
    with Inspector(a_home) as inspector:
        events = inspector.audit_since(0)
    times = [event.at for event in events]
    assert times == sorted(times), [(e.seq, e.event, e.at) for e in events]


# Through a fault proxy: B's card names the proxy, which forwards to B's listener.


@pytest.fixture
def proxied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[NodeHome, NodeHome, FaultProxy]]:
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    listen = free_port()
    with FaultProxy(f"127.0.0.1:{listen}") as proxy:
        a_home = make_home(tmp_path, A_ID)
        b_home = init_home(
            tmp_path / B_ID,
            agency_id=B_ID,
            name="Agency behind a proxy",
            endpoint=proxy.endpoint,
            peer_listen=f"127.0.0.1:{listen}",
            api_listen=f"127.0.0.1:{free_port()}",
            **TEST_KEYS,
        )
        pin_each_other(a_home, b_home)
        set_limits(
            a_home,
            retry_base_seconds=0.05,
            retry_max_seconds=0.5,
            delivery_timeout_seconds=2.0,
            keepalive_seconds=1.0,
            keepalive_timeout_seconds=1.0,
        )
        yield a_home, b_home, proxy


def test_a_connection_that_freezes_without_closing_does_not_stall_the_peer(
    proxied: tuple[NodeHome, NodeHome, FaultProxy],
) -> None:
    """Issue 7: with the open connection frozen (no RST), 164 of 200 notices were still
    pending after 240 s and 512 DEADLINE_EXCEEDED attempts on the same channel."""
    a_home, b_home, proxy = proxied
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        assert states(a, send(a, 3)) == {DELIVERED}  # the connection is up and in use
        proxy.freeze()
        ids = send(a, 20)
        assert states(a, ids) == {DELIVERED}
        assert proxy.connections >= 2  # a new connection replaced the frozen one
        with Inspector(b_home) as inspector:
            assert inspector.count_messages() == 23
    finally:
        a.stop()
        b.stop()


def test_a_receipt_that_cannot_be_recorded_at_once_is_recorded_later(
    proxied: tuple[NodeHome, NodeHome, FaultProxy],
) -> None:
    """Issue 7: recording the receipt failed, and the delivered notice stayed SENT until
    the sender restarted."""
    a_home, b_home, proxy = proxied
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        assert states(a, send(a, 1)) == {DELIVERED}  # the connection is up (TLS done)
        proxy.hold_responses()
        with watching(r"received .* from MA\.DGSN\.CCPI") as stored:
            ids = send(a, 1)
            assert stored.seen.wait(WAIT)  # B has stored it and signed its receipt
        with watching(r"recording the outcome of .* failed") as failed, locked(a_home):
            proxy.release_responses()  # the receipt reaches A while A cannot write
            assert failed.seen.wait(WAIT)
        assert states(a, ids) == {DELIVERED}
        with a.client() as client:
            detail = client.get_message(ids[0])
        assert detail.receipt.status == 1  # ACCEPTED, verified and stored
    finally:
        a.stop()
        b.stop()

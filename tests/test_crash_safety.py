"""Crash safety: notices, acknowledgements and replies flowing both ways while each node
is killed with SIGKILL and restarted, again and again.

In the end every notice, acknowledgement and reply is stored exactly once on the
receiving side, every sender holds a verified receipt for each, every state is
final and the same on both sides, both audit trails account for every message,
and a watcher on each node, connected through the restarts, saw every event
exactly once.

The suite runs a short version (``SOAK_NOTICES`` notices each way, ``SOAK_KILLS``
kills); ``pytest -m soak`` runs the long one (500 notices each way).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from liaison.client.api import LiaisonClient
from liaison.client.errors import NodeUnavailable
from liaison.keys.content_types import (
    ACKNOWLEDGEMENT_CONTENT_TYPE,
    CASE_NOTICE_CONTENT_TYPE,
    REPLY_CONTENT_TYPE,
)
from liaison.server.home import NodeHome
from liaison.server.store.models import Direction, Message, Receipt
from liaison.server.store.store import Store
from liaison.v1 import node_pb2, notice_pb2
from tests.conftest import ServedNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
WAIT = 120
# Acknowledged at the sender: every notice is acknowledged (action taken) by its receiver.
FINAL = node_pb2.MESSAGE_STATE_ACTION_TAKEN


@dataclass
class Side:
    """One node of the pair: its home, its current process, and a watcher on it."""

    home: NodeHome
    log: Path
    node: ServedNode | None = None
    events: list[node_pb2.WatchEvent] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    watcher_error: BaseException | None = None

    def start(self) -> None:
        self.node = ServedNode(self.home, self.log)

    def kill(self) -> None:
        assert self.node is not None
        self.node.process.kill()  # SIGKILL: no shutdown of any kind
        self.node.process.wait()

    def client(self) -> LiaisonClient:
        return LiaisonClient.from_home(self.home.path)

    def watch(self, stop: threading.Event) -> None:
        try:
            with self.client() as client:
                for event in client.watch():
                    with self.changed:
                        self.events.append(event)
                        self.changed.notify_all()
                    if stop.is_set():
                        return
        except BaseException as error:  # reported by the test
            self.watcher_error = error

    def wait_for_events(self, count: int, done: threading.Event | None = None) -> bool:
        """True once ``count`` events were seen; False if ``done`` is set first."""
        with self.changed:
            self.changed.wait_for(
                lambda: len(self.events) >= count or (done is not None and done.is_set()), WAIT
            )
            return len(self.events) >= count


def retrying(call: Callable[[], str]) -> str:
    """``call`` until the node answers: each call carries the same idempotency key, so a
    retry after a lost answer returns what the first queued."""
    for attempt in itertools.count():
        try:
            return call()
        except NodeUnavailable:
            if attempt > 200:
                raise
            time.sleep(0.25)  # the node is being restarted; nothing to await from here
    raise AssertionError("unreachable")


def run_soak(tmp_path: Path, notices: int, kills: int) -> None:
    a = Side(make_home(tmp_path, A_ID), tmp_path / "a.log")
    b = Side(make_home(tmp_path, B_ID), tmp_path / "b.log")
    pin_each_other(a.home, b.home)
    a.start()
    b.start()
    stop = threading.Event()
    watchers = [threading.Thread(target=s.watch, args=(stop,), daemon=True) for s in (a, b)]
    for watcher in watchers:
        watcher.start()
    sent: dict[str, list[str]] = {A_ID: [], B_ID: []}
    errors: list[BaseException] = []

    def send_all(side: Side, to: str) -> None:
        try:
            with side.client() as client:
                for number in range(notices):
                    key = f"soak-{side.home.path.name}-{number}"
                    sent[side.home.path.name].append(
                        retrying(
                            lambda n=number, k=key: (
                                client.send_notice(
                                    to, sample_notice(f"SOAK-{n}"), idempotency_key=k, retries=0
                                ).message_id
                            )
                        )
                    )
        except BaseException as error:
            errors.append(error)

    def answer_all(side: Side) -> None:
        """Acknowledge every received notice; reply to every tenth."""
        try:
            with side.client() as client:
                received = retrying_list(client)
                for message in received:
                    retrying(
                        lambda m=message: (
                            client.acknowledge(
                                m,
                                notice_pb2.ACK_STATUS_ACTION_TAKEN,
                                idempotency_key=f"ack-{m}",
                                retries=0,
                            ).message_id
                        )
                    )
                for message in received[::10]:
                    retrying(
                        lambda m=message: (
                            client.reply(
                                m,
                                notice_pb2.CaseNotice(body="Received; acting."),
                                idempotency_key=f"reply-{m}",
                                retries=0,
                            ).message_id
                        )
                    )
        except BaseException as error:
            errors.append(error)

    def killer(victims: list[Side], count: int, done: threading.Event) -> None:
        for victim in itertools.islice(itertools.cycle(victims), count):
            # Kill after the victim has made progress since it last started; once the
            # work of this phase is done there is no progress left to wait for.
            if not victim.wait_for_events(len(victim.events) + 10, done):
                if not done.is_set():
                    errors.append(AssertionError(f"{victim.home.path.name} made no progress"))
                return
            victim.kill()
            victim.start()
            kills_made.append(victim)

    def finished(done: threading.Event) -> None:
        done.set()
        for side in (a, b):
            with side.changed:
                side.changed.notify_all()

    kills_made: list[Side] = []

    sending = [
        threading.Thread(target=send_all, args=(a, B_ID)),
        threading.Thread(target=send_all, args=(b, A_ID)),
    ]
    sent_all = threading.Event()
    kill = threading.Thread(target=killer, args=([a, b], kills // 2 + kills % 2, sent_all))
    for thread in [*sending, kill]:
        thread.start()
    for thread in sending:
        thread.join()
    finished(sent_all)
    kill.join()
    assert not errors, errors
    _all_final(a, sent[A_ID], node_pb2.MESSAGE_STATE_DELIVERED)
    _all_final(b, sent[B_ID], node_pb2.MESSAGE_STATE_DELIVERED)

    answering = [threading.Thread(target=answer_all, args=(s,)) for s in (a, b)]
    answered_all = threading.Event()
    kill = threading.Thread(target=killer, args=([b, a], kills // 2, answered_all))
    for thread in [*answering, kill]:
        thread.start()
    for thread in answering:
        thread.join()
    finished(answered_all)
    kill.join()
    assert kills_made, "no node was killed"
    assert not errors, errors
    _all_final(a, sent[A_ID], FINAL)
    _all_final(b, sent[B_ID], FINAL)
    for side in (a, b):
        with side.client() as client:
            outbound = [
                m.message_id
                for m in client.iter_messages(node_pb2.DIRECTION_OUTBOUND, page_size=500)
            ]
        _all_final(side, outbound, None)

    # Let each watcher catch up with its node's trail, then stop everything.
    for side in (a, b):
        last = _message_event_seqs(side.home)[-1]
        with side.changed:
            assert side.changed.wait_for(
                lambda s=side, n=last: bool(s.events) and s.events[-1].seq >= n, WAIT
            )
    stop.set()
    for side in (a, b):
        assert side.node is not None
        side.node.stop()
    _check_stores(a, b, sent)
    for side in (a, b):
        assert side.watcher_error is None or isinstance(side.watcher_error, NodeUnavailable)
        _check_watcher(side)


def retrying_list(client: LiaisonClient) -> list[str]:
    for attempt in itertools.count():
        try:
            return [
                m.message_id
                for m in client.iter_messages(
                    node_pb2.DIRECTION_INBOUND, page_size=500, newest_first=True
                )
                if m.content_type == CASE_NOTICE_CONTENT_TYPE
            ][::-1]
        except NodeUnavailable:
            if attempt > 200:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def _all_final(side: Side, message_ids: list[str], expected: int | None) -> None:
    """Each outbound message has reached ``expected`` (None: any final delivery state).

    States past delivery come with the peer's acknowledgements: between checks, wait
    for the node's next event (the watcher's), not for a clock.
    """
    final = {
        node_pb2.MESSAGE_STATE_DELIVERED,
        node_pb2.MESSAGE_STATE_READ,
        node_pb2.MESSAGE_STATE_ACKNOWLEDGED,
        node_pb2.MESSAGE_STATE_ACTION_TAKEN,
        node_pb2.MESSAGE_STATE_DECLINED,
    }
    with side.client() as client:
        for message_id in message_ids:
            while True:
                seen = len(side.events)
                state = retrying_state(client, message_id)
                if (expected is None and state in final) or state == expected:
                    break
                assert side.wait_for_events(seen + 1), (message_id, state, expected)


def retrying_state(client: LiaisonClient, message_id: str) -> int:
    for attempt in itertools.count():
        try:
            return client.get_status(message_id, wait_seconds=5).state
        except NodeUnavailable:
            if attempt > 200:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


def _rows(home: NodeHome) -> list[tuple[Message, Receipt | None]]:
    store = Store(home.database_url())
    try:
        with store.read() as session:
            rows = session.execute(
                select(Message, Receipt).outerjoin(Receipt, Receipt.message_pk == Message.id)
            ).all()
            return [(row[0], row[1]) for row in rows]
    finally:
        store.close()


def _check_stores(a: Side, b: Side, sent: dict[str, list[str]]) -> None:
    rows = {A_ID: _rows(a.home), B_ID: _rows(b.home)}
    for me, peer in ((A_ID, B_ID), (B_ID, A_ID)):
        mine, theirs = rows[me], rows[peer]
        outbound = [m for m, _ in mine if m.direction == Direction.OUTBOUND.value]
        inbound_there = [m for m, _ in theirs if m.direction == Direction.INBOUND.value]
        # Every message sent is stored exactly once on the receiving side.
        sent_ids = sorted(m.message_id for m in outbound)
        received_ids = sorted(m.message_id for m in inbound_there)
        assert sent_ids == received_ids
        assert len(received_ids) == len(set(received_ids))
        # The notices this side sent are all there, once.
        notices = [m.message_id for m in outbound if m.content_type == CASE_NOTICE_CONTENT_TYPE]
        assert sorted(notices) == sorted(sent[me])
        # Each sender holds the receiver's receipt for each.
        for message, receipt in ((m, r) for m, r in mine if m.direction == "outbound"):
            assert receipt is not None, message.message_id
            assert receipt.status == "accepted"
        kinds = {m.content_type for m in outbound}
        assert kinds == {CASE_NOTICE_CONTENT_TYPE, ACKNOWLEDGEMENT_CONTENT_TYPE, REPLY_CONTENT_TYPE}
        # States agree: each notice acted on at the sender, and at the receiver.
        states_there = {m.message_id: m.state for m in inbound_there}
        for message in outbound:
            if message.content_type == CASE_NOTICE_CONTENT_TYPE:
                assert message.state == "action-taken"
                assert states_there[message.message_id] in ("action-taken", "replied")


def _message_event_seqs(home: NodeHome) -> list[int]:
    store = Store(home.database_url())
    try:
        return [e.seq for e in store.audit_events(0, 10**7) if e.message_id is not None]
    finally:
        store.close()


def _check_watcher(side: Side) -> None:
    seqs = [event.seq for event in side.events]
    assert seqs == sorted(set(seqs)), "a watcher saw an event twice or out of order"
    # Through every restart, the watcher saw each message event of the trail, once.
    assert seqs == _message_event_seqs(side.home)


SOAK_NOTICES = int(os.environ.get("LIAISON_SOAK_NOTICES", "40"))
SOAK_KILLS = int(os.environ.get("LIAISON_SOAK_KILLS", "4"))


@pytest.mark.timeout(600)
def test_nothing_is_lost_or_doubled_through_kills(tmp_path: Path) -> None:
    run_soak(tmp_path, SOAK_NOTICES, SOAK_KILLS)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_nothing_is_lost_or_doubled_through_kills_long(tmp_path: Path) -> None:
    run_soak(tmp_path, 500, 12)

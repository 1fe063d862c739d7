"""Watch: message events as they happen, through a restart, each exactly once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from liaison.client.api import LiaisonClient
from liaison.client.errors import RequestRejected
from liaison.v1 import node_pb2
from tests.conftest import Inspector, RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
WAIT = 60


class Watcher(threading.Thread):
    """Follows ``received`` events on a node until it has seen ``expected`` of them."""

    def __init__(self, client: LiaisonClient, expected: int) -> None:
        super().__init__(daemon=True)
        self._client = client
        self.expected = expected
        self.events: list[node_pb2.WatchEvent] = []
        self.seen = threading.Condition()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self._client.watch(events=["received"]):
                with self.seen:
                    self.events.append(event)
                    self.seen.notify_all()
                if len(self.events) >= self.expected:
                    return
        except BaseException as error:  # reported by the test
            self.error = error
            with self.seen:
                self.seen.notify_all()

    def wait_for(self, count: int) -> bool:
        with self.seen:
            return self.seen.wait_for(
                lambda: len(self.events) >= count or self.error is not None, WAIT
            )


def test_a_watcher_sees_every_event_once_through_a_restart(tmp_path: Path) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    watching = LiaisonClient.from_home(b_home.path)
    watcher = Watcher(watching, expected=10)
    watcher.start()
    try:
        with a.client() as client:
            first = [client.send_notice(B_ID, sample_notice(f"W-{n}")).message_id for n in range(5)]
            assert watcher.wait_for(5), watcher.error
            b.stop()  # the stream breaks; the watcher reconnects and resumes
            b = RunningNode(b_home).start()
            second = [
                client.send_notice(B_ID, sample_notice(f"W-{n}")).message_id for n in range(5, 10)
            ]
            assert watcher.wait_for(10), watcher.error
        watcher.join(WAIT)
        seqs = [event.seq for event in watcher.events]
        assert seqs == sorted(set(seqs))  # in order, none repeated
        # Every notice once; in the order they arrived, which need not be the order they
        # were sent (several are in flight at once: docs/PROTOCOL.md, 9.2).
        received = [event.message_id for event in watcher.events]
        assert sorted(received) == sorted(first + second)
        with Inspector(b_home) as inspector:
            audited = [e.seq for e in inspector.audit_since(0) if e.event == "received"]
        assert audited == seqs  # none lost
    finally:
        watching.close()
        a.stop()
        b.stop()


def test_watch_refuses_an_unknown_kind(tmp_path: Path) -> None:
    home = make_home(tmp_path, A_ID)
    node = RunningNode(home).start()
    try:
        with node.client() as client, pytest.raises(RequestRejected, match="unknown event kind"):
            next(iter(client.watch(events=["no-such-kind"])))
    finally:
        node.stop()

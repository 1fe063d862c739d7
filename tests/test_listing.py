"""An inbox a liaison officer can work from: pages, filters, urgent first, search.

Issue 7: with 57 notices received, a TLP:RED notice dropped out of `liaison
inbox` with no hint that more existed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from liaison.client.errors import RequestRejected
from liaison.server.home import NodeHome
from liaison.v1 import node_pb2, notice_pb2
from tests.cli_homes import run
from tests.conftest import RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
INBOUND = node_pb2.DIRECTION_INBOUND
COUNT = 57


@dataclass
class Inbox:
    b_home: NodeHome
    b: RunningNode
    red: str
    flash: list[str]
    sent: list[str]


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inbox]:
    root = tmp_path_factory.mktemp("listing")
    a_home, b_home = make_home(root, A_ID), make_home(root, B_ID)
    pin_each_other(a_home, b_home)
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        sent, flash = [], []
        with a.client() as client:
            for number in range(COUNT):
                notice = sample_notice(f"CCPI-{number:03d}")
                notice.subject = f"Routine report {number}"
                notice.priority = notice_pb2.PRIORITY_ROUTINE
                if number % 20 == 5:
                    notice.priority = notice_pb2.PRIORITY_FLASH
                if number == 3:
                    notice.handling = notice_pb2.TLP_RED
                    notice.readers.append("admin")
                    notice.subject = "Recruiter moving to Tanger tonight"
                    notice.category = notice_pb2.CATEGORY_VIOLENT_EXTREMISM
                result = client.send_notice(B_ID, notice, wait_seconds=60)
                assert result.state == "delivered"
                sent.append(result.message_id)
                if notice.priority == notice_pb2.PRIORITY_FLASH:
                    flash.append(result.message_id)
        yield Inbox(b_home, b, sent[3], flash, sent)
    finally:
        a.stop()
        b.stop()


def test_every_notice_is_reachable_page_by_page_and_the_first_page_says_more_exist(
    inbox: Inbox,
) -> None:
    with inbox.b.client() as client:
        first = client.list_page(INBOUND)
        assert len(first.messages) == 50
        assert first.next_cursor
        # Flash first, newest first among them; then the rest, newest first.
        assert [m.message_id for m in first.messages[: len(inbox.flash)]] == inbox.flash[::-1]
        every = [m.message_id for m in client.iter_messages(INBOUND, page_size=7)]
    assert len(every) == COUNT
    assert sorted(every) == sorted(inbox.sent)
    assert inbox.red in every


def test_filters(inbox: Inbox) -> None:
    with inbox.b.client() as client:
        red = client.list_messages(INBOUND, handling=notice_pb2.TLP_RED)
        assert [m.message_id for m in red] == [inbox.red]
        by_case = client.list_messages(INBOUND, case_reference="CCPI-003")
        assert [m.message_id for m in by_case] == [inbox.red]
        # Text is matched in case references, and in subjects except a TLP:RED one.
        found = client.list_messages(INBOUND, text="ccpi-003")
        assert [m.message_id for m in found] == [inbox.red]
        assert client.list_messages(INBOUND, text="tanger TONIGHT") == []
        routine = client.list_messages(INBOUND, text="ROUTINE report 7", limit=COUNT)
        assert [m.subject for m in routine] == ["Routine report 7"]
        extremism = client.list_messages(INBOUND, category=notice_pb2.CATEGORY_VIOLENT_EXTREMISM)
        assert [m.message_id for m in extremism] == [inbox.red]
        flash = client.list_messages(INBOUND, priority=notice_pb2.PRIORITY_FLASH)
        assert {m.message_id for m in flash} == set(inbox.flash)
        assert client.list_messages(INBOUND, peer=A_ID, limit=1)[0].peer == A_ID
        assert client.list_messages(INBOUND, peer="FR.DGPN.SCCOPOL") == []
        newest = client.list_messages(INBOUND, newest_first=True, limit=COUNT)
        assert [m.message_id for m in newest] == inbox.sent[::-1]
        later = Timestamp()
        later.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        assert client.list_messages(INBOUND, since=later) == []
        assert len(client.list_messages(INBOUND, until=later, limit=COUNT)) == COUNT


def test_new_means_not_yet_opened(inbox: Inbox) -> None:
    with inbox.b.client() as client:
        before = {m.message_id for m in client.iter_messages(INBOUND, states=[6])}
        client.get_message(inbox.sent[10])  # an operator opens one
        after = {m.message_id for m in client.iter_messages(INBOUND, states=[6])}
    assert before - after == {inbox.sent[10]}


def test_malformed_filters_are_refused(inbox: Inbox) -> None:
    with inbox.b.client() as client:
        for filters, message in (
            ({"cursor": "v1.3.x"}, "cursor"),
            ({"text": "a\x1b[2Jb"}, "one line"),
            ({"states": [99]}, "state 99"),
            ({"peer": "not an agency"}, "agency id"),
            ({"handling": 77}, "handling 77"),
        ):
            with pytest.raises(RequestRejected, match=message):
                client.list_page(INBOUND, **filters)


def test_the_cli_pages_filters_and_searches(
    inbox: Inbox, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    home = ("--home", str(inbox.b_home.path))
    code, out, err = run(capsys, "inbox", "--limit", "5", *home)
    assert code == 0
    assert len(out.splitlines()) == 5
    cursor = err.rsplit("--cursor ", 1)[1].strip()
    code, out, err = run(capsys, "inbox", "--limit", "5", "--cursor", cursor, *home)
    assert code == 0
    assert len(out.splitlines()) == 5
    code, out, err = run(capsys, "search", "CCPI-003", *home)
    assert (code, err) == (0, "")
    assert inbox.red in out
    assert "TLP:RED" in out
    code, out, _ = run(capsys, "inbox", "--tlp", "red", "--newest-first", *home)
    assert out.split()[0] == inbox.red
    code, _, err = run(capsys, "inbox", "--since", "yesterday", *home)
    assert code == 2
    assert "--since" in err

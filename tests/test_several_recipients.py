"""One notice to several agencies: one envelope each, one notice id, tracked per recipient."""

from __future__ import annotations

from pathlib import Path

import pytest

from liaison.client.errors import RequestRejected
from liaison.server.store.models import Direction
from liaison.v1 import node_pb2
from tests.cli_homes import run
from tests.conftest import Inspector, RunningNode, make_home, pin, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID, C_ID, D_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT", "FR.DGPN.SCCOPOL", "ES.CNP.CGI"
WAIT = 60


def test_a_notice_to_two_agencies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    homes = [make_home(tmp_path, agency) for agency in (A_ID, B_ID, C_ID)]
    pin_each_other(*homes)
    a_home, b_home, c_home = homes
    pin(a_home, make_home(tmp_path, D_ID).identity().card)  # pinned, never running
    nodes = [RunningNode(home).start() for home in homes]
    try:
        a = nodes[0]
        with a.client() as client:
            sent = client.send_notice([B_ID, C_ID], sample_notice("BOTH"), wait_seconds=WAIT)
            assert [one.recipient for one in sent.recipients] == [B_ID, C_ID]
            assert {one.state for one in sent.recipients} == {"delivered"}
            assert sent.notice_id == sent.recipients[0].message_id
            assert len({one.message_id for one in sent.recipients}) == 2
            status = client.get_status(sent.recipients[1].message_id)
            assert [one.recipient for one in status.recipients] == [B_ID, C_ID]

            with Inspector(a_home) as inspector:
                before = inspector.count_messages(Direction.OUTBOUND)
            for recipients, message in (
                ([B_ID, "XX.NOT.PINNED"], "not a pinned peer"),
                ([B_ID, B_ID], "named twice"),
                ([B_ID, "not an agency"], "not an agency id"),
            ):
                with pytest.raises(RequestRejected, match=message):
                    client.send_notice(recipients, sample_notice("REFUSED"))
            with Inspector(a_home) as inspector:
                assert inspector.count_messages(Direction.OUTBOUND) == before

        for home in (b_home, c_home):
            with Inspector(home) as inspector:
                assert inspector.count_messages(Direction.INBOUND) == 1

        code, out, err = run(
            capsys,
            "send",
            "--to",
            B_ID,
            "--to",
            D_ID,
            "--case-ref",
            "C-9",
            "--category",
            "cybercrime",
            "--tlp",
            "green",
            "--subject",
            "Two recipients",
            "--body-file",
            str(_body(tmp_path)),
            "--wait",
            "2",
            "--home",
            str(a_home.path),
        )
        assert code == 0  # D is down: its envelope waits, which is not a failure
        lines = out.splitlines()
        assert lines[0].startswith("notice ")
        assert lines[1].split()[::2] == [B_ID, "delivered"]
        assert lines[2].split()[0] == D_ID
        assert lines[2].split()[2] in ("queued", "sent")
        assert "keeps trying" in err
        with a.client() as client:
            status = client.get_status(lines[1].split()[1])
        assert status.recipients[0].state == node_pb2.MESSAGE_STATE_DELIVERED
    finally:
        for node in nodes:
            node.stop()


def _body(root: Path) -> Path:
    path = root / "body.txt"
    path.write_text("Body.\n", encoding="utf-8")
    return path

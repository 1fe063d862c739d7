"""An operator's hand on the outbox: cancel a notice not yet delivered, retry one now."""

from __future__ import annotations

from pathlib import Path

import pytest

from liaison.client.errors import MessageNotFound, RequestRejected
from liaison.v1 import node_pb2
from tests.cli_homes import run
from tests.conftest import Inspector, RunningNode, make_home, pin_each_other, set_limits
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
WAIT = 60


def test_cancel_and_retry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    # Backoffs so long that, without `retry`, nothing would be tried again in this test.
    set_limits(a_home, retry_base_seconds=300.0, retry_max_seconds=600.0)
    a = RunningNode(a_home).start()
    try:
        with a.client() as client:
            dropped = client.send_notice(B_ID, sample_notice("DROP")).message_id
            kept = client.send_notice(B_ID, sample_notice("KEEP")).message_id
            code, out, err = run(capsys, "cancel", dropped, "--home", str(a_home.path))
            assert (code, err) == (0, "")
            assert out.split() == [dropped, "cancelled"]
            with pytest.raises(RequestRejected, match="only a queued message can be cancelled"):
                client.cancel(dropped)
            with pytest.raises(MessageNotFound):
                client.cancel("01a22488-44ca-7885-9083-b9635c2e4917")
            b = RunningNode(b_home).start()
            try:
                assert client.retry(kept).state == "queued"
                status = client.get_status(kept, wait_seconds=WAIT)
                assert status.state == node_pb2.MESSAGE_STATE_DELIVERED
                with pytest.raises(RequestRejected, match="it is delivered"):
                    client.retry(kept)
                events = [e.event for e in client.get_status(dropped).timeline]
                assert events[-1] == "cancelled"
                assert [e.event for e in status.timeline].count("retry-requested") == 1
            finally:
                b.stop()
        with Inspector(b_home) as inspector:
            assert inspector.count_messages() == 1  # the cancelled notice never left
    finally:
        a.stop()

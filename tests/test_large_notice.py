"""A 15 MB notice: sent, delivered, and read back whole on both sides, with the library
and with `liaison show` (the issue found a 5 MB one could not be opened by either)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.cli_homes import run
from tests.conftest import RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
SIZE = 15 * 1000 * 1000


def test_a_15_mb_notice_is_read_back_on_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    payload = os.urandom(SIZE)  # incompressible: the transport gets no help
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        with a.client() as client:
            sent = client.send_notice(
                B_ID, sample_notice("BIG-1", attachment=payload), wait_seconds=120
            )
        assert sent.state == "delivered"
        for node in (a, b):
            with node.client() as client:
                detail = client.get_message(sent.message_id)
            data = detail.notice.attachments[0].content
            assert hashlib.sha256(data).digest() == hashlib.sha256(payload).digest()
        for home in (a_home, b_home):
            code, out, err = run(capsys, "show", sent.message_id, "--home", str(home.path))
            assert code == 0, err
            assert "BIG-1" in out
    finally:
        a.stop()
        b.stop()

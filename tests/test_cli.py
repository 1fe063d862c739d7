"""The ``liaison`` command, run in-process through ``main(argv)`` against real
homes and real running nodes, plus one run of the installed command."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from liaison.keys.card import armor_card, dearmor_card, sign_card
from liaison.keys.ids import is_message_id
from liaison.server.config import load_config
from liaison.server.home import NodeHome
from liaison.v1 import envelope_pb2
from tests.cli_homes import (
    CliHome,
    peers_add,
    run,
    run_init,
    run_json,
    snapshot,
)
from tests.conftest import Inspector, RunningNode, make_home, set_limits

A_ID = "MA.DGSN.CCPI"
B_ID = "DE.BPOL.LO-RABAT"
WAIT = "30"
BODY = "Body of the notice, with accents (é, ü) and Arabic (مرحبا).\nSecond line.\n"


def peers_json(capsys: pytest.CaptureFixture[str], home: CliHome) -> list[dict[str, str]]:
    peers = run_json(capsys, "peers", "list", "--home", str(home.path))
    assert isinstance(peers, list)
    return peers


def audit_seq(home: CliHome) -> int:
    inspector = Inspector(home.home)
    try:
        return inspector.last_audit_seq()
    finally:
        inspector.close()


def message_count(home: CliHome) -> int:
    inspector = Inspector(home.home)
    try:
        return inspector.count_messages()
    finally:
        inspector.close()


@pytest.fixture
def running(
    a_home: CliHome,
    b_home: CliHome,
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> tuple[CliHome, CliHome]:
    """Two homes made and pinned to each other with the CLI, then run as real nodes."""
    for home, other in ((a_home, b_home), (b_home, a_home)):
        code, out, err = peers_add(
            capsys,
            home,
            other,
        )
        assert code == 0, err
        assert f"Pinned {other.agency_id}" in out
    node_factory(a_home.home)
    node_factory(b_home.home)
    return a_home, b_home


def send_args(to: str, body_file: Path, *extra: str) -> list[str]:
    return [
        "send",
        "--to",
        to,
        "--category",
        "drug-trafficking",
        "--tlp",
        "amber+strict",
        "--case-ref",
        "CCPI-2026-0099",
        "--subject",
        "Cocaine shipment expected in Tanger Med",
        "--body-file",
        str(body_file),
        *extra,
    ]


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "body.txt"
    path.write_text(BODY, encoding="utf-8")
    return path


# init --------------------------------------------------------------------------


def test_init_creates_a_home(a_home: CliHome) -> None:
    path = a_home.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    config = load_config(path)
    assert config.agency_id == A_ID
    assert config.name == f"Agency {A_ID}"
    assert config.api_listen == a_home.api
    assert config.peer_listen == config.endpoint

    assert stat.S_IMODE((path / "keys").stat().st_mode) == 0o700
    keys = path / "keys" / "current"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for name in (
        "signing.key",
        "kem-mlkem768.key",
        "kem-x25519.key",
        "tls.key",
        "api-ca.key",
        "api-server.key",
    ):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
        assert b"PRIVATE KEY" not in (keys / name).read_bytes(), name
    assert (keys / "tls.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert sorted(p.name for p in (path / "api").iterdir()) == ["ca.crt", "server.crt"]

    admin = path / "credentials" / "admin"
    assert sorted(p.name for p in admin.iterdir()) == [
        "ca.crt",
        "client.crt",
        "client.key",
        "target",
    ]
    assert stat.S_IMODE((admin / "client.key").stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in (admin / "client.key").read_bytes()
    assert (admin / "target").read_text().strip() == a_home.api
    assert (admin / "ca.crt").read_bytes() == (path / "api" / "ca.crt").read_bytes()
    assert a_home.home.identity().card.fingerprint == a_home.fingerprint


def test_init_refuses_an_existing_home(a_home: CliHome, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(a_home.path)
    code, out, err = run_init(capsys, a_home.path, "FR.DGPN.SCCOPOL")
    assert code == 2
    assert out == ""
    assert "already holds a node" in err
    assert snapshot(a_home.path) == before


def test_init_refuses_a_folder_left_by_an_interrupted_init(
    a_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    (a_home.path / "config.toml").unlink()
    before = snapshot(a_home.path)
    code, out, err = run_init(capsys, a_home.path, A_ID)
    assert code == 2
    assert out == ""
    assert err.startswith("liaison: ")
    assert snapshot(a_home.path) == before


@pytest.mark.parametrize(
    "agency_id", ["ma.dgsn.ccpi", "", ".MA.DGSN", "MA.DGSN.", "MA DGSN", "A" * 64]
)
def test_init_refuses_an_invalid_agency_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], agency_id: str
) -> None:
    path = tmp_path / "home"
    code, out, err = run_init(capsys, path, agency_id)
    assert code == 2
    assert out == ""
    assert "invalid agency id" in err
    assert not path.exists()


# card --------------------------------------------------------------------------


def test_card_export_prints_a_card_that_card_show_verifies(
    a_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    text = a_home.card_file.read_text()
    assert text.startswith("-----BEGIN LIAISON AGENCY CARD-----\n")
    assert text.endswith("-----END LIAISON AGENCY CARD-----\n")
    assert dearmor_card(text) == a_home.home.identity().card.signed_card

    shown = run_json(capsys, "card", "show", str(a_home.card_file))
    assert isinstance(shown, dict)
    assert shown["agency_id"] == A_ID
    assert shown["name"] == f"Agency {A_ID}"
    assert shown["fingerprint"] == a_home.fingerprint
    assert shown["endpoint"] == load_config(a_home.path).endpoint
    assert shown["created_at"].endswith("Z")

    code, out, err = run(capsys, "card", "show", str(a_home.card_file))
    assert code == 0, err
    assert re.search(rf"^agency_id\s+{re.escape(A_ID)}$", out, re.MULTILINE)
    assert re.search(rf"^fingerprint\s+{a_home.fingerprint}$", out, re.MULTILINE)


def test_card_show_reads_standard_input(
    a_home: CliHome, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(a_home.card_file.read_text()))
    shown = run_json(capsys, "card", "show", "-")
    assert isinstance(shown, dict)
    assert shown["fingerprint"] == a_home.fingerprint


def test_card_export_json(a_home: CliHome, capsys: pytest.CaptureFixture[str]) -> None:
    exported = run_json(capsys, "card", "export", "--home", str(a_home.path))
    assert isinstance(exported, dict)
    assert exported["agency_id"] == A_ID
    assert exported["fingerprint"] == a_home.fingerprint
    assert exported["card"] == a_home.card_file.read_text()
    card = a_home.home.identity().card
    assert exported["signing_key_id"] == card.signing_key_id
    assert exported["tls_certificate_sha256"] == card.tls_fingerprint


def test_card_show_refuses_a_corrupted_card(
    a_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupted = a_home.card_file.parent / "corrupted.card"
    corrupted.write_text(_change_base64_char(a_home.card_file.read_text()))
    code, out, err = run(capsys, "card", "show", str(corrupted))
    assert code == 2
    assert out == ""
    assert err.startswith("liaison: ")


def test_card_export_of_a_folder_that_is_no_home(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "card", "export", "--home", str(tmp_path / "nothing"))
    assert code == 2
    assert out == ""
    assert "no node home at" in err


# peers -------------------------------------------------------------------------


def _change_base64_char(armored: str, line: int = 5) -> str:
    """Change one base64 character in the middle of the card's body."""
    lines = armored.splitlines()
    text = lines[line]
    middle = len(text) // 2
    lines[line] = text[:middle] + ("B" if text[middle] != "B" else "C") + text[middle + 1 :]
    return "\n".join(lines) + "\n"


def _resigned_by(armored: str, other: NodeHome) -> str:
    outer = envelope_pb2.SignedCard.FromString(dearmor_card(armored))
    card = envelope_pb2.AgencyCard.FromString(outer.card)
    return armor_card(sign_card(card, other.identity().signing_key))


def _tls_version_flipped(armored: str) -> str:
    outer = envelope_pb2.SignedCard.FromString(dearmor_card(armored))
    card = envelope_pb2.AgencyCard.FromString(outer.card)
    certificate = bytearray(card.tls_certificate)
    assert certificate[8:13] == b"\xa0\x03\x02\x01\x02"
    certificate[12] ^= 0x01
    card.tls_certificate = bytes(certificate)
    tampered = envelope_pb2.SignedCard(card=card.SerializeToString(), signature=outer.signature)
    return armor_card(tampered.SerializeToString())


def test_peers_add_pins_a_card(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peers_json(capsys, a_home) == []
    code, out, err = peers_add(
        capsys,
        a_home,
        b_home,
    )
    assert code == 0, err
    assert f"Pinned {B_ID} (Agency {B_ID})" in out
    assert b_home.fingerprint in out
    peers = peers_json(capsys, a_home)
    assert [(p["agency_id"], p["fingerprint"]) for p in peers] == [(B_ID, b_home.fingerprint)]
    assert peers[0]["endpoint"] == load_config(b_home.path).endpoint
    assert peers[0]["state"] == "active"

    code, out, err = run(capsys, "peers", "list", "--home", str(a_home.path))
    assert code == 0, err
    assert out.split()[0] == B_ID
    assert b_home.fingerprint in out


def test_peers_add_accepts_the_fingerprint_in_another_notation(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    colons = ":".join(b_home.fingerprint.upper().split())
    code, out, err = peers_add(
        capsys,
        a_home,
        b_home.card_file,
        "--fingerprint",
        colons,
    )
    assert code == 0, err
    assert out.startswith(f"Pinned {B_ID}")
    assert [p["agency_id"] for p in peers_json(capsys, a_home)] == [B_ID]


def test_peers_add_with_a_wrong_fingerprint_pins_nothing(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    last = b_home.fingerprint[-1]
    wrong = b_home.fingerprint[:-1] + ("0" if last != "0" else "1")
    seq = audit_seq(a_home)
    code, out, err = peers_add(
        capsys,
        a_home,
        b_home.card_file,
        "--fingerprint",
        wrong,
    )
    assert code == 2
    assert out == ""
    assert "not pinned" in err
    assert peers_json(capsys, a_home) == []
    assert audit_seq(a_home) == seq


def test_peers_add_refuses_the_nodes_own_card(
    a_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    seq = audit_seq(a_home)
    code, out, err = run(capsys, "peers", "add", "--home", str(a_home.path), str(a_home.card_file))
    assert code == 2
    assert out == ""
    assert "own card" in err
    assert peers_json(capsys, a_home) == []
    assert audit_seq(a_home) == seq


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda text, _other: "junk\n", id="junk"),
        pytest.param(lambda text, _other: _change_base64_char(text), id="changed-character"),
        pytest.param(lambda text, _other: _change_base64_char(text, line=-2), id="changed-tail"),
        pytest.param(
            lambda text, _other: "\n".join(text.splitlines()[:-1]) + "\n", id="no-end-line"
        ),
        pytest.param(
            lambda text, _other: "\n".join(text.splitlines()[:5] + text.splitlines()[-1:]),
            id="truncated",
        ),
        pytest.param(_resigned_by, id="signed-by-another-key"),
        pytest.param(
            lambda text, _other: _tls_version_flipped(text),
            id="tls-certificate-version",
        ),
    ],
)
def test_peers_add_refuses_a_corrupted_card(
    a_home: CliHome,
    b_home: CliHome,
    capsys: pytest.CaptureFixture[str],
    corrupt: Callable[[str, NodeHome], str],
) -> None:
    corrupted = a_home.path.parent / "corrupted.card"
    corrupted.write_text(corrupt(b_home.card_file.read_text(), a_home.home))
    seq = audit_seq(a_home)
    code, out, err = run(capsys, "peers", "add", "--home", str(a_home.path), str(corrupted))
    assert code == 2
    assert out == ""
    assert err.startswith("liaison: ")
    assert peers_json(capsys, a_home) == []
    assert audit_seq(a_home) == seq


def test_peers_add_of_a_missing_file(a_home: CliHome, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "peers", "add", "--home", str(a_home.path), str(a_home.path / "nope.card")
    )
    assert code == 2
    assert out == ""
    assert "cannot read" in err
    assert peers_json(capsys, a_home) == []


# Operator commands against running nodes ----------------------------------------


def test_send_inbox_show_status(
    running: tuple[CliHome, CliHome],
    body_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = running
    sent = run_json(
        capsys, *send_args(B_ID, body_file, "--home", str(a.path), "--wait", WAIT, "--unit", "U1")
    )
    assert isinstance(sent, dict)
    assert set(sent) == {"message_id", "state", "reason"}
    assert sent["reason"] == ""
    assert sent["state"] == "delivered"
    message_id = sent["message_id"]
    assert is_message_id(message_id)

    # The receiver, through LIAISON_HOME (no --home).
    monkeypatch.setenv("LIAISON_HOME", str(b.path))
    inbox = run_json(capsys, "inbox")
    assert isinstance(inbox, list)
    assert [m["message_id"] for m in inbox] == [message_id]
    summary = inbox[0]
    assert summary["direction"] == "inbound"
    assert summary["peer"] == A_ID
    assert summary["state"] == "received"
    assert summary["category"] == "drug-trafficking"
    assert summary["tlp"] == "TLP:AMBER+STRICT"
    assert summary["case_reference"] == "CCPI-2026-0099"
    assert run_json(capsys, "outbox") == []

    shown = run_json(capsys, "show", message_id)
    assert isinstance(shown, dict)
    notice = shown["notice"]
    assert notice["body"] == BODY
    assert notice["tlp"] == "TLP:AMBER+STRICT"
    assert notice["category"] == "drug-trafficking"
    assert notice["case_reference"] == "CCPI-2026-0099"
    assert notice["subject"] == "Cocaine shipment expected in Tanger Med"
    assert notice["priority"] == "routine"
    assert notice["evaluation"] == {"source_reliability": "x", "information_assessment": "4"}
    assert notice["originator"] == {"agency_id": A_ID, "unit": "U1", "officer": ""}
    assert notice["attachments"] == []
    assert shown["receipt"]["status"] == "accepted"
    assert shown["receipt"]["receiver"] == B_ID

    # --home wins over LIAISON_HOME: the sender's view of the same message.
    outbound = run_json(capsys, "show", message_id, "--home", str(a.path))
    assert isinstance(outbound, dict)
    assert outbound["direction"] == "outbound"
    assert outbound["notice"] == notice
    assert outbound["envelope_sha256"] == shown["envelope_sha256"]

    code, out, err = run(capsys, "show", message_id)
    assert code == 0, err
    assert BODY.strip() in out
    assert "TLP:AMBER+STRICT" in out

    status = run_json(capsys, "status", message_id, "--home", str(a.path), "--wait", WAIT)
    assert isinstance(status, dict)
    assert status["message_id"] == message_id
    # B's operator opened it above: B's read notification may have arrived already.
    assert status["state"] in ("delivered", "read")
    timeline = status["timeline"]
    assert isinstance(timeline, list)
    for event in timeline:
        assert set(event) == {"at", "event", "detail"}
        assert dt.datetime.fromisoformat(event["at"]).tzinfo is not None
    events = [e["event"] for e in timeline]
    assert events[:4] == ["sealed", "sent", "receipt-verified", "delivered"]
    assert events[4:] in ([], ["acknowledged-by-peer"])

    code, out, err = run(capsys, "status", message_id, "--home", str(a.path))
    assert code == 0, err
    assert out.splitlines()[0] in (f"{message_id} delivered", f"{message_id} read")


def test_send_carries_an_attachment(
    running: tuple[CliHome, CliHome],
    body_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = running
    content = bytes(range(256)) * 40 + b"\x00end"
    attachment = tmp_path / "seizure-report.pdf"
    attachment.write_bytes(content)
    code, out, err = run(
        capsys,
        *send_args(B_ID, body_file, "--home", str(a.path), "--wait", WAIT),
        "--attach",
        str(attachment),
    )
    assert code == 0, err
    message_id, state = out.split()
    assert state == "delivered"

    shown = run_json(capsys, "show", message_id, "--home", str(b.path))
    assert isinstance(shown, dict)
    assert shown["notice"]["attachments"] == [
        {
            "name": "seizure-report.pdf",
            "media_type": "application/pdf",
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
    ]
    code, out, err = run(capsys, "show", message_id, "--home", str(b.path))
    assert code == 0, err
    assert f"Attachment  seizure-report.pdf (application/pdf, {len(content)} bytes)" in out

    # Saved with its SHA-256 checked, and never over an existing file.
    folder = tmp_path / "saved"
    folder.mkdir()
    home = ("--home", str(b.path))
    code, _, err = run(capsys, "show", message_id, "--save-attachments", str(folder), *home)
    assert code == 0, err
    code, _, err = run(capsys, "attachment", "save", message_id, "1", "--to", str(folder), *home)
    assert code == 0, err
    assert sorted(path.name for path in folder.iterdir()) == [
        "seizure-report (2).pdf",
        "seizure-report.pdf",
    ]
    assert {path.read_bytes() for path in folder.iterdir()} == {content}
    code, _, err = run(capsys, "attachment", "save", message_id, "2", "--to", str(folder), *home)
    assert code == 1
    assert err.count("\n") == 1


NOTICE_FILE = """\
case_reference = "CCPI-2026-0412"
category = "migrant-smuggling"
tlp = "amber"
priority = "urgent"
subject = "Crossing network"
body = \"\"\"
First line.
Second line.\"\"\"
source_reliability = "b"
information = 2
attachments = ["scan.pdf"]
unit = "CCPI Rabat"
"""


def test_send_takes_the_whole_notice_from_a_file_or_standard_input(
    running: tuple[CliHome, CliHome],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing the notice says has to be on the command line (where `ps` shows it)."""
    a, b = running
    (tmp_path / "scan.pdf").write_bytes(b"%PDF-1.4 scan")
    notice_file = tmp_path / "notice.toml"
    notice_file.write_text(NOTICE_FILE, encoding="utf-8")
    common = ["send", "--to", B_ID, "--home", str(a.path), "--wait", WAIT]

    sent = run_json(capsys, *common, "--notice", str(notice_file))
    assert isinstance(sent, dict)
    assert sent["state"] == "delivered"
    shown = run_json(capsys, "show", sent["message_id"], "--home", str(b.path))
    assert isinstance(shown, dict)
    notice = shown["notice"]
    assert (notice["case_reference"], notice["category"], notice["tlp"]) == (
        "CCPI-2026-0412",
        "migrant-smuggling",
        "TLP:AMBER",
    )
    assert (notice["priority"], notice["subject"]) == ("urgent", "Crossing network")
    assert notice["body"] == "First line.\nSecond line."
    assert notice["evaluation"] == {"source_reliability": "b", "information_assessment": "2"}
    assert notice["originator"]["unit"] == "CCPI Rabat"
    assert [x["name"] for x in notice["attachments"]] == ["scan.pdf"]

    # From standard input, with an option that wins over the file.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(NOTICE_FILE.encode())))
    sent = run_json(capsys, *common, "--notice", "-", "--priority", "flash")
    assert isinstance(sent, dict)
    shown = run_json(capsys, "show", sent["message_id"], "--home", str(b.path))
    assert isinstance(shown, dict)
    assert shown["notice"]["priority"] == "flash"
    assert shown["notice"]["subject"] == "Crossing network"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('subject = "x"\n', "the notice needs case reference: give --case-ref"),
        ('colour = "red"\n', "unknown keys: colour"),
        ("subject = 3.5\n", "subject must be a string"),
        ('attachments = "a.pdf"\n', "attachments must be a list of strings"),
        ("subject = \n", "cannot read the notice file"),
        ('case_reference = "C"\ncategory = "fraud"\n', "unknown category 'fraud'"),
    ],
)
def test_send_refuses_a_broken_notice_file_in_one_line(
    a_home: CliHome,
    tmp_path: Path,
    content: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    notice_file = tmp_path / "notice.toml"
    notice_file.write_text(content, encoding="utf-8")
    code, _, err = run(
        capsys, "send", "--to", B_ID, "--home", str(a_home.path), "--notice", str(notice_file)
    )
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_send_exits_6_with_the_reason_when_the_peer_refuses(
    a_home: CliHome,
    b_home: CliHome,
    body_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    """Issue 7: `send` exits non-zero when the notice ends FAILED within --wait."""
    for home, other in ((a_home, b_home), (b_home, a_home)):
        assert peers_add(capsys, home, other)[0] == 0
    set_limits(b_home.home, max_envelope_bytes=4096)  # B takes smaller envelopes than A
    node_factory(a_home.home)
    node_factory(b_home.home)
    scan = tmp_path / "scan.bin"
    scan.write_bytes(bytes(range(256)) * 32)
    argv = send_args(B_ID, body_file, "--home", str(a_home.path), "--wait", WAIT)
    code, out, err = run(capsys, *argv, "--attach", str(scan))
    assert code == 6
    assert out.split()[1] == "failed"
    assert err == f"liaison: rejected by {B_ID}: TOO_LARGE\n"
    status = run(capsys, "status", out.split()[0], "--home", str(a_home.path), "--wait", "1")
    assert status[0] == 6
    assert status[2] == f"liaison: rejected by {B_ID}: TOO_LARGE\n"


def test_send_to_a_peer_that_is_down_says_delivery_continues_or_that_it_expired(
    a_home: CliHome,
    b_home: CliHome,
    body_file: Path,
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    node_factory(a_home.home)  # B never runs
    argv = send_args(B_ID, body_file, "--home", str(a_home.path))
    code, out, err = run(capsys, *argv, "--wait", "1")
    assert code == 0
    assert out.split()[1] in ("queued", "sent")
    assert "the node keeps trying until the notice expires" in err
    code, out, err = run(capsys, *argv, "--wait", "10", "--ttl", "2")
    assert code == 6
    assert out.split()[1] == "expired"
    assert err == f"liaison: expired before {B_ID} could be reached\n"
    shown = run_json(capsys, "peers", "show", B_ID, "--home", str(a_home.path))
    assert isinstance(shown, dict)
    assert shown["last_delivered_at"] is None
    assert "peer-unreachable" in shown["last_delivery_error"]
    assert "cannot be reached" in shown["last_delivery_error"]


def test_a_peer_that_refuses_our_certificate_is_told_from_one_that_is_down(
    a_home: CliHome,
    b_home: CliHome,
    body_file: Path,
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    """Issue 7: B runs but has not pinned A: the sender's view says so."""
    assert peers_add(capsys, a_home, b_home)[0] == 0
    node_factory(a_home.home)
    node_factory(b_home.home)
    argv = send_args(B_ID, body_file, "--home", str(a_home.path), "--wait", "2")
    code, out, _err = run(capsys, *argv)
    assert code == 0
    message_id = out.split()[0]
    shown = run_json(capsys, "peers", "show", B_ID, "--home", str(a_home.path))
    assert isinstance(shown, dict)
    assert "TLS handshake failed" in shown["last_delivery_error"]
    status = run_json(capsys, "status", message_id, "--home", str(a_home.path))
    assert isinstance(status, dict)
    assert any("our card pinned there" in e["detail"] for e in status["timeline"])


def test_send_to_an_unknown_recipient_exits_4(
    running: tuple[CliHome, CliHome], body_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = running
    seq = audit_seq(a)
    code, out, err = run(
        capsys, *send_args("FR.DGPN.SCCOPOL", body_file, "--home", str(a.path), "--wait", WAIT)
    )
    assert code == 4
    assert out == ""
    assert "not a pinned peer" in err
    assert message_count(a) == 0
    assert audit_seq(a) == seq


def test_show_and_status_of_an_unknown_message_exit_5(
    running: tuple[CliHome, CliHome], capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = running
    unknown = "01a22488-44ca-7885-9083-b9635c2e4917"
    for command in ("show", "status"):
        code, out, err = run(capsys, command, unknown, "--home", str(a.path))
        assert code == 5, (command, err)
        assert out == ""
        assert err.startswith("liaison: ")


@pytest.mark.parametrize(
    "command",
    [
        ["inbox"],
        ["outbox"],
        ["messages"],
        ["show", "01a22488-44ca-7885-9083-b9635c2e4917"],
        ["status", "01a22488-44ca-7885-9083-b9635c2e4917", "--wait", "5"],
        ["send"],
    ],
    ids=lambda command: command[0],
)
def test_operator_commands_without_a_running_node_exit_3(
    a_home: CliHome, body_file: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    argv = send_args(B_ID, body_file) if command == ["send"] else command
    code, out, err = run(capsys, *argv, "--home", str(a_home.path))
    assert code == 3
    assert out == ""
    assert "unreachable" in err
    assert message_count(a_home) == 0


def test_send_checks_its_arguments_before_calling_the_node(
    a_home: CliHome, body_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The node is not running: a usage error must win over "unreachable" (3).
    argv = send_args(B_ID, body_file, "--home", str(a_home.path))
    bad_tlp = [*argv[:6], "purple", *argv[7:]]
    assert argv[5:7] == ["--tlp", "amber+strict"]
    code, _, err = run(capsys, *bad_tlp)
    assert code == 2
    assert "unknown TLP" in err
    missing_body = send_args(B_ID, body_file.parent / "missing.txt", "--home", str(a_home.path))
    code, _, err = run(capsys, *missing_body)
    assert code == 2
    assert "cannot read" in err
    code, _, err = run(capsys, *argv, "--attach", str(body_file.parent / "missing.bin"))
    assert code == 2
    assert "cannot read attachment" in err


def test_operator_commands_without_a_credential_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    shutil.rmtree(home.path / "credentials" / "admin")
    code, out, err = run(capsys, "inbox", "--home", str(home.path))
    assert code == 2
    assert out == ""
    assert "not a complete client credential" in err


# The installed command, end to end -----------------------------------------------


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "liaison.client.cli", "demo", "--keep", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert result.stdout.count(", receipt verified") == 3, output
    assert "Demo complete" in result.stdout, output
    # Each node ran as its own process and logged to its own file.
    assert (tmp_path / "demo" / f"{A_ID}.log").exists()
    assert (tmp_path / "demo" / f"{B_ID}.log").exists()

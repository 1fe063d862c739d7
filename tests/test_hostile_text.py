"""Hostile text is shown as text.

A peer controls every string of its notices, receipts and card. Control and
bidi characters in a one-line field are refused by the receiver (and by the
sender's own local API) with ``INVALID_NOTICE``; whatever is stored anyway
prints escaped in every CLI command, and ``--json`` writes them as escapes
that parse back to the same strings. Run on its own with
``.venv/bin/pytest tests/test_hostile_text.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from liaison.client import render
from liaison.client.cli import main
from liaison.client.errors import RequestRejected
from liaison.keys.card import armor_card, parse_card, sign_card
from liaison.keys.content_types import CASE_NOTICE_CONTENT_TYPE
from liaison.keys.ids import new_message_id
from liaison.keys.notice import notice_problems
from liaison.keys.text import first_control_character
from liaison.server.home import NodeHome
from liaison.server.store import audit
from liaison.server.store.models import Direction, Message, MessageBody, MessageState, Receipt
from liaison.server.store.store import Store
from liaison.v1 import envelope_pb2
from liaison.v1 import notice_pb2 as N
from tests.conftest import (
    PeerLink,
    make_home,
    peer_link,
)
from tests.forge import Forge
from tests.notices import complete, sample_notice

A_ID = "MA.DGSN.CCPI"
B_ID = "DE.BPOL.LO-RABAT"
INVALID_NOTICE = "INVALID_NOTICE"

# One character of each class the receiver refuses in a one-line field.
CONTROLS = {
    "NUL": "\x00",
    "BEL": "\x07",
    "BS": "\x08",
    "ESC": "\x1b",
    "CR": "\r",
    "LF": "\n",
    "DEL": "\x7f",
    "C1-CSI": "\x9b",
    "RLO": "\u202e",
    "LRI": "\u2066",
    "LINE-SEPARATOR": "\u2028",
}
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def is_control(char: str) -> bool:
    """The class, written out independently of ``liaison.keys.text``."""
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS


def raw_controls(text: str) -> set[str]:
    """Control or bidi characters in printed output, other than its own line breaks."""
    return {char for char in text if is_control(char) and char != "\n"}


def hostile_sample() -> N.CaseNotice:
    """A valid notice with every kind of one-line field filled in."""
    notice = sample_notice(attachment=b"evidence")
    notice.subjects[0].date_of_birth = "1990-01-01"
    notice.subjects[0].nationalities.append("MA")
    notice.subjects[0].identifiers[0].issuing_country = "MA"
    return notice


def _set(path: str) -> Callable[[N.CaseNotice, str], None]:
    """A setter that puts ``char`` in the middle of the field at dotted ``path``."""

    def put(notice: N.CaseNotice, char: str) -> None:
        *parents, name = path.split(".")
        target: Any = notice
        for part in parents:
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        if name.isdigit():
            target[int(name)] = f"AB{char}[2J forged"
        else:
            setattr(target, name, f"{getattr(target, name)[:2]}{char}[2J forged")

    return put


# Problem name -> where the field is in the notice.
ONE_LINE_FIELDS = {
    "case reference": _set("case_reference"),
    "subject": _set("subject"),
    "originator unit": _set("originator.unit"),
    "originator officer": _set("originator.officer"),
    "attachment 1 name": _set("attachments.0.name"),
    "attachment 1 media type": _set("attachments.0.media_type"),
    "subject 1 name": _set("subjects.0.name"),
    "subject 1 role": _set("subjects.0.role"),
    "subject 1 date of birth": _set("subjects.0.date_of_birth"),
    "subject 1 nationality 1": _set("subjects.0.nationalities.0"),
    "subject 1 identifier 1 value": _set("subjects.0.identifiers.0.value"),
    "subject 1 identifier 1 issuing country": _set("subjects.0.identifiers.0.issuing_country"),
}


def code_point(char: str) -> str:
    return f"U+{ord(char):04X}"


# The receiver, and the sender's local API ------------------------------------------


@dataclass
class World(PeerLink):
    def forge(self, notice: N.CaseNotice) -> Forge:
        return Forge(
            sender=self.a,
            recipient=self.b.card,
            notice=complete(notice, self.a.agency_id),
            now=dt.datetime.now(dt.UTC),
            message_id=new_message_id(),
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with peer_link(tmp_path_factory.mktemp("hostile-text"), A_ID, B_ID) as link:
        yield World(**vars(link))


@pytest.mark.parametrize("field", list(ONE_LINE_FIELDS))
@pytest.mark.parametrize("char", list(CONTROLS.values()), ids=list(CONTROLS))
def test_receiver_refuses_a_control_character_in_a_one_line_field(
    world: World, char: str, field: str
) -> None:
    notice = hostile_sample()
    ONE_LINE_FIELDS[field](notice, char)
    envelope = world.forge(notice).build()
    seq = world.inspector.last_audit_seq()
    stored = world.inspector.count_messages()

    receipt = world.deliver(envelope)

    assert envelope_pb2.RejectReason.Name(receipt.reason) == "REJECT_REASON_INVALID_NOTICE"
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
    assert world.inspector.count_messages() == stored
    events = world.inspector.audit_since(seq)
    assert [(e.event, e.reason) for e in events] == [("rejected", INVALID_NOTICE)]
    assert events[0].envelope_sha256 == hashlib.sha256(envelope).hexdigest()
    detail = events[0].detail or ""
    assert f"{field} contains control character {code_point(char)}" in detail
    assert "forged" not in detail  # the problem names the field, never the value
    assert not raw_controls(detail)


@pytest.mark.parametrize("field", list(ONE_LINE_FIELDS))
@pytest.mark.parametrize("char", list(CONTROLS.values()), ids=list(CONTROLS))
def test_local_api_refuses_a_control_character_in_a_one_line_field(
    world: World, char: str, field: str
) -> None:
    notice = hostile_sample()
    ONE_LINE_FIELDS[field](notice, char)
    stored = world.inspector.count_messages()
    problem = f"{field} contains control character {code_point(char)}"
    with world.b.client() as client, pytest.raises(RequestRejected) as refused:
        client.send_notice(A_ID, notice)
    assert problem in str(refused.value)
    assert "forged" not in str(refused.value)
    assert world.inspector.count_messages() == stored


@pytest.mark.parametrize(
    "body",
    ["a\x1b[2J", "a\rforged", "a\x00", "a\u202eb", "a\u2028b", "a\x85b", "a\x0bb"],
    ids=["ESC", "lone-CR", "NUL", "RLO", "LINE-SEPARATOR", "C1-NEL", "VT"],
)
def test_receiver_refuses_a_control_character_in_the_body(world: World, body: str) -> None:
    notice = hostile_sample()
    notice.body = "First line\n\t" + body + "\r\nlast line"
    envelope = world.forge(notice).build()
    stored = world.inspector.count_messages()
    seq = world.inspector.last_audit_seq()

    receipt = world.deliver(envelope)

    assert envelope_pb2.RejectReason.Name(receipt.reason) == "REJECT_REASON_INVALID_NOTICE"
    assert world.inspector.count_messages() == stored
    [event] = world.inspector.audit_since(seq)
    assert "body contains control character U+" in (event.detail or "")


def test_joiners_and_a_multi_line_body_with_tabs_are_accepted(world: World) -> None:
    notice = hostile_sample()
    notice.subject = "Network of Mehdi\u200cpour, in \u0915\u094d\u200d\u0937 script too"
    notice.subjects[0].name = "\u0645\u0647\u062f\u06cc\u200c\u067e\u0648\u0631"
    notice.body = "Line one\n\tindented line\r\nline three, Windows ending\n"
    assert notice_problems(complete(notice, A_ID)) == []
    stored = world.inspector.count_messages(Direction.INBOUND)

    receipt = world.deliver(world.forge(notice).build())

    assert receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
    assert world.inspector.count_messages(Direction.INBOUND) == stored + 1


def test_reject_details_hold_no_header_text(world: World) -> None:
    hostile = "application/x\x1b[2J\u202e"
    content_type = world.forge(hostile_sample()).but(header_fields={"content_type": hostile})
    seq = world.inspector.last_audit_seq()

    receipt = world.deliver(content_type.build())

    assert (
        envelope_pb2.RejectReason.Name(receipt.reason) == "REJECT_REASON_UNSUPPORTED_CONTENT_TYPE"
    )
    [event] = world.inspector.audit_since(seq)
    assert "application/x" not in (event.detail or "")
    assert f"sha256:{hashlib.sha256(hostile.encode()).hexdigest()[:16]}" in (event.detail or "")
    assert not raw_controls(event.detail or "")


# What the CLI prints -----------------------------------------------------------------

ESC_SEQUENCE = "\x1b[2J\x1b[H"
HOSTILE_SUBJECT = f"{ESC_SEQUENCE}URGENT: wire funds\x9b31m now\u202etxt.exe"
HOSTILE_CASE = "CASE\x1b]0;pwned\x07-1\u2066"
HOSTILE_NAME = "invoice\u202efdp.exe\x1b[1A"
HOSTILE_BODY = f"Dear colleague,\n{ESC_SEQUENCE}forged line\rover\u2028\x9b2J\u202e\x00end\n"
HOSTILE_DETAIL = f"{ESC_SEQUENCE}delivered by {A_ID} \u202e"
HOSTILE_RECEIVER = f"{B_ID}\x1b[8m"


def hostile_stored_notice() -> N.CaseNotice:
    notice = complete(hostile_sample(), A_ID)
    notice.case_reference = HOSTILE_CASE
    notice.subject = HOSTILE_SUBJECT
    notice.body = HOSTILE_BODY
    notice.attachments[0].name = HOSTILE_NAME
    notice.attachments[0].media_type = "text/plain\x1b[0m"
    notice.subjects[0].name = f"TEST{ESC_SEQUENCE}PERSON"
    notice.subjects[0].role = "suspect\u202e"
    notice.subjects[0].identifiers[0].value = "+212\x9b600"
    notice.originator.unit = "unit\x07"
    notice.originator.officer = "officer\u2028two"
    return notice


def store_hostile_message(home: NodeHome) -> tuple[str, N.CaseNotice]:
    """Insert an inbound message that no receiver would accept, as if stored by an old node."""
    notice = hostile_stored_notice()
    message_id = new_message_id()
    envelope = b"not checked by the CLI"
    digest = hashlib.sha256(envelope).hexdigest()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    receipt = envelope_pb2.Receipt(
        message_id=message_id,
        sender=A_ID,
        receiver=HOSTILE_RECEIVER,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
        envelope_sha256=bytes.fromhex(digest),
    )
    receipt.received_at.FromDatetime(now)
    signed_receipt = envelope_pb2.SignedReceipt(receipt=receipt.SerializeToString())
    store = Store(home.database_url())
    try:
        with store.write() as session:
            message = Message(
                message_id=message_id,
                direction=Direction.INBOUND.value,
                sender=A_ID,
                recipient=B_ID,
                state=MessageState.RECEIVED.value,
                content_type=CASE_NOTICE_CONTENT_TYPE,
                category=notice.category,
                priority=notice.priority,
                handling=notice.handling,
                case_reference=notice.case_reference,
                subject=notice.subject,
                envelope_sha256=digest,
                body=MessageBody(envelope=envelope, content=notice.SerializeToString()),
                created_at=now,
                expires_at=now + dt.timedelta(days=1),
                updated_at=now,
                attempts=0,
            )
            session.add(message)
            session.flush()
            session.add(
                Receipt(
                    message_pk=message.id,
                    signed_receipt=signed_receipt.SerializeToString(),
                    status="accepted",
                    received_at=now,
                )
            )
            audit.append(
                session,
                audit.AuditKind.RECEIVED,
                at=now,
                message_id=message_id,
                peer=A_ID,
                envelope_sha256=digest,
                detail=HOSTILE_DETAIL,
            )
    finally:
        store.close()
    return message_id, notice


@pytest.fixture(scope="module")
def hostile_message(world: World) -> tuple[str, N.CaseNotice]:
    return store_hostile_message(world.b.home)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_inbox_prints_hostile_text_escaped(
    world: World, hostile_message: tuple[str, N.CaseNotice], capsys: pytest.CaptureFixture[str]
) -> None:
    message_id, _ = hostile_message
    out = cli(capsys, "inbox", "--home", str(world.b.home.path))
    assert raw_controls(out) == set()
    [line] = [line for line in out.splitlines() if line.startswith(message_id)]
    assert render.safe(HOSTILE_CASE) in line
    assert r"\x1b[2J\x1b[HURGENT: wire funds\x9b31m now\u202etxt.exe" in line

    listed = json.loads(cli(capsys, "inbox", "--home", str(world.b.home.path), "--json"))
    [summary] = [m for m in listed if m["message_id"] == message_id]
    assert (summary["case_reference"], summary["subject"]) == (HOSTILE_CASE, HOSTILE_SUBJECT)


def test_show_prints_hostile_text_escaped(
    world: World, hostile_message: tuple[str, N.CaseNotice], capsys: pytest.CaptureFixture[str]
) -> None:
    message_id, notice = hostile_message
    out = cli(capsys, "show", message_id, "--home", str(world.b.home.path))
    assert raw_controls(out) == set()
    for shown in (
        r"Subject     \x1b[2J\x1b[HURGENT",
        r"Case        CASE\x1b]0;pwned\x07-1\u2066",
        r"Attachment  invoice\u202efdp.exe\x1b[1A (text/plain\x1b[0m, 8 bytes)",
        r"TEST\x1b[2J\x1b[HPERSON suspect\u202e",
        r"+212\x9b600",
        r"unit\x07 officer\u2028two",
        r"\x1b[2J\x1b[Hforged line\rover\u2028\x9b2J\u202e\x00end",
        r"by DE.BPOL.LO-RABAT\x1b[8m",
        r"\x1b[2J\x1b[Hdelivered by MA.DGSN.CCPI \u202e",
    ):
        assert shown in out
    assert "Dear colleague,\n" in out  # the body keeps its line breaks

    shown_json = json.loads(
        cli(capsys, "show", message_id, "--home", str(world.b.home.path), "--json")
    )
    assert shown_json["subject"] == HOSTILE_SUBJECT
    assert shown_json["notice"]["case_reference"] == HOSTILE_CASE
    assert shown_json["notice"]["body"] == HOSTILE_BODY
    assert shown_json["notice"]["attachments"][0]["name"] == HOSTILE_NAME
    assert shown_json["notice"]["subjects"][0]["name"] == notice.subjects[0].name
    assert shown_json["notice"]["originator"]["officer"] == notice.originator.officer
    assert shown_json["receipt"]["receiver"] == HOSTILE_RECEIVER
    assert shown_json["timeline"][0]["detail"] == HOSTILE_DETAIL


def test_status_prints_hostile_text_escaped(
    world: World, hostile_message: tuple[str, N.CaseNotice], capsys: pytest.CaptureFixture[str]
) -> None:
    message_id, _ = hostile_message
    out = cli(capsys, "status", message_id, "--home", str(world.b.home.path))
    assert raw_controls(out) == set()
    assert r"received          \x1b[2J\x1b[Hdelivered by MA.DGSN.CCPI \u202e" in out

    raw = cli(capsys, "status", message_id, "--home", str(world.b.home.path), "--json")
    assert raw_controls(raw) == set()
    assert json.loads(raw)["timeline"][0]["detail"] == HOSTILE_DETAIL


@pytest.mark.parametrize("command", ["inbox", "show", "status"])
def test_json_output_escapes_every_control_and_bidi_character(
    world: World,
    hostile_message: tuple[str, N.CaseNotice],
    command: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    message_id, _ = hostile_message
    argv = [command] if command == "inbox" else [command, message_id]
    raw = cli(capsys, *argv, "--home", str(world.b.home.path), "--json")
    assert raw_controls(raw) == set()
    assert "\\u202e" in raw


def test_card_show_and_peers_list_print_a_hostile_card_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home, peer = make_home(tmp_path, B_ID), make_home(tmp_path, A_ID)
    identity = peer.identity()
    card = envelope_pb2.AgencyCard.FromString(
        envelope_pb2.SignedCard.FromString(identity.card.signed_card).card
    )
    card.name = f"Agency{ESC_SEQUENCE}\u202eforged"
    card.endpoint = "127.0.0.1:7443\x1b[1A"
    card_file = tmp_path / "hostile.card"
    signed = sign_card(card, identity.signing_key)
    card_file.write_text(armor_card(signed), encoding="utf-8")

    out = cli(capsys, "card", "show", str(card_file))
    assert raw_controls(out) == set()
    assert r"Agency\x1b[2J\x1b[H\u202eforged" in out
    assert json.loads(cli(capsys, "card", "show", str(card_file), "--json"))["name"] == card.name

    fingerprint = parse_card(signed).fingerprint
    out = cli(
        capsys,
        "peers",
        "add",
        "--home",
        str(home.path),
        str(card_file),
        "--fingerprint",
        fingerprint,
    )
    assert raw_controls(out) == set()
    for command in (["list"], ["show", A_ID]):
        out = cli(capsys, "peers", *command, "--home", str(home.path))
        assert raw_controls(out) == set()
        assert r"127.0.0.1:7443\x1b[1A" in out
        raw = cli(capsys, "peers", *command, "--home", str(home.path), "--json")
        assert raw_controls(raw) == set()
        shown = json.loads(raw)
        assert (shown[0] if command == ["list"] else shown)["endpoint"] == card.endpoint


# The rules themselves -------------------------------------------------------------


def test_the_control_class_is_exactly_cc_zl_zp_and_the_bidi_controls() -> None:
    found = {
        chr(point)
        for point in range(sys.maxunicode + 1)
        if not 0xD800 <= point <= 0xDFFF and first_control_character(chr(point))
    }
    expected = {
        chr(point)
        for point in range(sys.maxunicode + 1)
        if not 0xD800 <= point <= 0xDFFF and is_control(chr(point))
    }
    assert found == expected
    assert "\u200c" not in found
    assert "\u200d" not in found


def test_first_control_character_in_multi_line_text() -> None:
    assert first_control_character("a\n\tb\r\nc", multiline=True) is None
    assert first_control_character("a\n\tb\r\nc") == "\n"
    assert first_control_character("a\rb\r\n", multiline=True) == "\r"
    assert first_control_character("a\r", multiline=True) == "\r"
    assert first_control_character("a\n\x1b", multiline=True) == "\x1b"
    assert first_control_character("a\u2029", multiline=True) == "\u2029"


def test_notice_problems_name_the_field_and_code_point_never_the_value() -> None:
    notice = complete(hostile_sample(), A_ID)
    notice.attachments.add(name="second\u202etxt.exe", sha256=hashlib.sha256(b"").digest())
    notice.subject = "Crossing\x1bnetwork"
    assert notice_problems(notice) == [
        "subject contains control character U+001B",
        "attachment 2 name contains control character U+202E",
    ]


def test_safe_escapes_each_control_and_bidi_character() -> None:
    assert render.safe("a\x1b[2Jb") == r"a\x1b[2Jb"
    assert render.safe("\x00\x07\x08\x7f\x9b") == r"\x00\x07\x08\x7f\x9b"
    assert (
        render.safe("x\u202ey\u2066\u061c\u200e\u2028\u2029")
        == r"x\u202ey\u2066\u061c\u200e\u2028\u2029"
    )
    assert render.safe("a\nb\tc\rd") == r"a\nb\tc\rd"
    assert render.safe("a\nb\tc\r\nd\re", multiline=True) == "a\nb\tc\r\nd\\re"
    kept = "Mehdi\u200cpour \u0915\u094d\u200d\u0937 é ü مرحبا \\x1b"
    assert render.safe(kept) == kept


def test_json_text_escapes_the_class_and_parses_back() -> None:
    value = {"s": 'a\x1b\x7f\x85\x9b\u202e\u2066\u2028\u2029\u200d\n\t"\\', "n": [1, None]}
    text = render.json_text(value)
    assert raw_controls(text) == set()
    assert json.loads(text) == value
    for escape in ("\\u007f", "\\u0085", "\\u009b", "\\u202e", "\\u2066", "\\u2028", "\\u2029"):
        assert escape in text
    assert "\u200d" in text  # joiners are text, not controls

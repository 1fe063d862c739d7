"""How the CLI shows messages: one readable form, one ``--json`` form.

Every string a peer could have written (its agency id, a notice's fields, a
receipt, an audit detail, a card) goes through ``safe`` before it reaches
the terminal, and every ``--json`` document through ``json_text``: a control
or bidi character is printed as an escape, never as itself. The only escape
sequences ever printed are the colours of our own handling banner, and only
when asked for.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from typing import Any, TextIO

from google.protobuf.timestamp_pb2 import Timestamp

from liaison.keys.content_types import CARD_UPDATE_CONTENT_TYPE
from liaison.keys.errors import reason_name
from liaison.keys.text import control_characters
from liaison.v1 import envelope_pb2, node_pb2, notice_pb2

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(found: re.Match[str]) -> str:
    char = found[0]
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with each control or bidi character (``liaison.keys.text``) escaped.

    ESC becomes ``\\x1b``, U+202E ``\\u202e``, a line feed ``\\n``. With
    ``multiline``, tabs, line feeds and a carriage return before a line feed
    are kept. Backslashes are not doubled: a peer can make text look like an
    escape, never act as a control.
    """
    return control_characters(multiline=multiline).sub(_escape, text)


def json_text(value: Any) -> str:
    """``value`` as indented JSON that parses back to the same strings.

    ``json.dumps`` escapes C0 controls; DEL, C1, bidi controls and the line
    and paragraph separators are written as ``\\uXXXX`` escapes too.
    """
    text = json.dumps(value, indent=2, ensure_ascii=False)
    # Outside strings, JSON text holds only ASCII structure, spaces and line feeds.
    return control_characters(multiline=True).sub(lambda c: f"\\u{ord(c[0]):04x}", text)


def state_name(state: node_pb2.MessageState.ValueType) -> str:
    """``MESSAGE_STATE_DELIVERED`` -> ``delivered``."""
    return node_pb2.MessageState.Name(state).removeprefix("MESSAGE_STATE_").lower()


def enum_label(enum: Any, value: int, prefix: str) -> str:
    """``CATEGORY_DRUG_TRAFFICKING`` -> ``drug-trafficking``; TLP keeps its ``+``.

    A value the schema does not define (a notice stored past the checks) is
    ``unknown-<value>``, never an error.
    """
    if value not in enum.values():
        return f"unknown-{value}"
    name = enum.Name(value).removeprefix(prefix).lower().replace("_", "-")
    return "amber+strict" if name == "amber-strict" else name


def category(value: int) -> str:
    return enum_label(notice_pb2.Category, value, "CATEGORY_")


def priority(value: int) -> str:
    return enum_label(notice_pb2.Priority, value, "PRIORITY_")


def tlp(value: int) -> str:
    return "TLP:" + enum_label(notice_pb2.Tlp, value, "TLP_").upper()


# TLP 2.0 (FIRST), the short meaning of each code.
_TLP_MEANINGS: dict[int, str] = {
    notice_pb2.TLP_CLEAR: "disclosure is not limited",
    notice_pb2.TLP_GREEN: "limited disclosure, within the community",
    notice_pb2.TLP_AMBER: (
        "limited disclosure, recipients' organisation and its clients on a need-to-know basis"
    ),
    notice_pb2.TLP_AMBER_STRICT: "limited disclosure, recipients' organisation only",
    notice_pb2.TLP_RED: (
        "for the eyes and ears of individual recipients only, no further disclosure"
    ),
}
# ANSI SGR: bold and the code's colour; CLEAR keeps the terminal's own foreground.
_TLP_COLOURS: dict[int, str] = {
    notice_pb2.TLP_CLEAR: "1",
    notice_pb2.TLP_GREEN: "1;32",
    notice_pb2.TLP_AMBER: "1;33",
    notice_pb2.TLP_AMBER_STRICT: "1;33",
    notice_pb2.TLP_RED: "1;31",
}


def handling_banner(handling: int, *, color: bool = False) -> str:
    """``==== TLP:RED — for the eyes and ears of ... ====``: the handling code in words.

    Only fixed text, whatever ``handling`` holds: zero or a value no TLP code
    has is shown as such and read as "ask the originator". With ``color``, the
    line is wrapped in one ANSI colour and a reset; without, it holds no
    escape sequence.
    """
    meaning = _TLP_MEANINGS.get(
        handling, "no handling code; ask the originator before any disclosure"
    )
    text = f"==== {tlp(handling)} — {meaning} ===="
    if not color:
        return text
    return f"\x1b[{_TLP_COLOURS.get(handling, '1')}m{text}\x1b[0m"


def color_wanted(stream: TextIO) -> bool:
    """Whether to colour output to ``stream``: a terminal, no ``NO_COLOR``, no dumb ``TERM``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


# The 4x4 grading (Admiralty / NATO system), as police liaison officers read it.
_RELIABILITY: dict[int, tuple[str, str]] = {
    notice_pb2.SOURCE_RELIABILITY_A: ("A", "source completely reliable"),
    notice_pb2.SOURCE_RELIABILITY_B: ("B", "source usually reliable"),
    notice_pb2.SOURCE_RELIABILITY_C: ("C", "source fairly reliable"),
    notice_pb2.SOURCE_RELIABILITY_D: ("D", "source not usually reliable"),
    notice_pb2.SOURCE_RELIABILITY_X: ("X", "source reliability cannot be judged"),
}
_ASSESSMENT: dict[int, tuple[str, str]] = {
    notice_pb2.INFORMATION_ASSESSMENT_1: (
        "1",
        "information confirmed, known to be true without reservation",
    ),
    notice_pb2.INFORMATION_ASSESSMENT_2: (
        "2",
        "information known personally to the source but not to the officer",
    ),
    notice_pb2.INFORMATION_ASSESSMENT_3: (
        "3",
        "information not known personally to the source but corroborated",
    ),
    notice_pb2.INFORMATION_ASSESSMENT_4: ("4", "information cannot be judged"),
}


def evaluation_text(evaluation: notice_pb2.Evaluation) -> str:
    """``B2: source usually reliable; information known personally to the source ...``.

    A grade left at zero is "not graded"; a value the schema does not define
    is shown by its number, never guessed.
    """
    reliability, assessment = evaluation.source_reliability, evaluation.information_assessment
    if not reliability and not assessment:
        return "not graded"
    letter, source = _grade(_RELIABILITY, reliability, "source reliability")
    digit, information = _grade(_ASSESSMENT, assessment, "information assessment")
    return f"{letter}{digit}: {source}; {information}"


def _grade(grades: dict[int, tuple[str, str]], value: int, what: str) -> tuple[str, str]:
    if value in grades:
        return grades[value]
    return "", f"{what} not graded" if not value else f"{what} unknown ({value})"


def iso_datetime(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def iso(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


def direction(value: int) -> str:
    return enum_label(node_pb2.Direction, value, "DIRECTION_")


def summary_json(m: node_pb2.MessageSummary) -> dict[str, Any]:
    return {
        "message_id": m.message_id,
        "direction": direction(m.direction),
        "peer": m.peer,
        "state": state_name(m.state),
        "category": category(m.category),
        "priority": priority(m.priority),
        "tlp": tlp(m.handling),
        "case_reference": m.case_reference,
        "subject": m.subject,
        "created_at": iso(m.created_at),
        "updated_at": iso(m.updated_at),
        "content_type": m.content_type,
    }


def summary_line(m: node_pb2.MessageSummary) -> str:
    arrow = "<-" if m.direction == node_pb2.DIRECTION_INBOUND else "->"
    if m.content_type == CARD_UPDATE_CONTENT_TYPE:  # no priority or handling: say what it is
        kind = f"{'card':<8} {'update':<16}"
    else:
        kind = f"{priority(m.priority):<8} {tlp(m.handling):<16}"
    return (
        f"{safe(m.message_id)}  {iso(m.created_at)}  {arrow} {safe(m.peer):<20} "
        f"{state_name(m.state):<9} {kind} "
        f"{safe(m.case_reference)}  {safe(m.subject)}"
    )


def timeline_json(events: Any) -> list[dict[str, str]]:
    return [{"at": iso(e.at), "event": e.event, "detail": e.detail} for e in events]


def timeline_lines(events: Any) -> list[str]:
    return [f"  {iso(e.at)}  {safe(e.event):<17} {safe(e.detail)}".rstrip() for e in events]


def receipt_json(receipt: envelope_pb2.Receipt) -> dict[str, Any]:
    return {
        "status": envelope_pb2.ReceiptStatus.Name(receipt.status)
        .removeprefix("RECEIPT_STATUS_")
        .lower(),
        "reason": reason_name(receipt.reason) if receipt.reason else None,
        "receiver": receipt.receiver,
        "received_at": iso(receipt.received_at),
        "envelope_sha256": receipt.envelope_sha256.hex(),
    }


def notice_json(notice: notice_pb2.CaseNotice) -> dict[str, Any]:
    return {
        "case_reference": notice.case_reference,
        "category": category(notice.category),
        "priority": priority(notice.priority),
        "tlp": tlp(notice.handling),
        "evaluation": {
            "source_reliability": enum_label(
                notice_pb2.SourceReliability,
                notice.evaluation.source_reliability,
                "SOURCE_RELIABILITY_",
            ),
            "information_assessment": enum_label(
                notice_pb2.InformationAssessment,
                notice.evaluation.information_assessment,
                "INFORMATION_ASSESSMENT_",
            ),
        },
        "subject": notice.subject,
        "body": notice.body,
        "subjects": [
            {
                "kind": enum_label(notice_pb2.SubjectKind, s.kind, "SUBJECT_KIND_"),
                "name": s.name,
                "role": s.role,
                "date_of_birth": s.date_of_birth,
                "nationalities": list(s.nationalities),
                "identifiers": [
                    {
                        "type": enum_label(notice_pb2.IdentifierType, i.type, "IDENTIFIER_TYPE_"),
                        "value": i.value,
                        "issuing_country": i.issuing_country,
                    }
                    for i in s.identifiers
                ],
            }
            for s in notice.subjects
        ],
        "attachments": [
            {
                "name": a.name,
                "media_type": a.media_type,
                "size": len(a.content),
                "sha256": a.sha256.hex(),
            }
            for a in notice.attachments
        ],
        "references": list(notice.references),
        "readers": list(notice.readers),
        "forwardable_to": list(notice.forwardable_to),
        "originator": {
            "agency_id": notice.originator.agency_id,
            "unit": notice.originator.unit,
            "officer": notice.originator.officer,
        },
        "created_at": iso(notice.created_at),
    }


def _subject_line(s: dict[str, Any]) -> str:
    ids = ", ".join(
        f"{i['type']} {safe(i['value'])} {safe(i['issuing_country'])}".rstrip()
        for i in s["identifiers"]
    )
    born = f"born {safe(s['date_of_birth'])}" if s["date_of_birth"] else ""
    nationalities = ", ".join(safe(n) for n in s["nationalities"])
    parts = (s["kind"].ljust(12), safe(s["name"]), safe(s["role"]), born, nationalities, ids)
    return "  " + " ".join(p for p in parts if p)


def detail_json(d: node_pb2.MessageDetail) -> dict[str, Any]:
    return {
        **summary_json(d.summary),
        "envelope_sha256": d.envelope_sha256,
        "notice": notice_json(d.notice) if d.HasField("notice") else None,
        "receipt": receipt_json(d.receipt) if d.HasField("receipt") else None,
        "forwarded_from": forwarded_json(d.forwarded_from)
        if d.HasField("forwarded_from")
        else None,
        "timeline": timeline_json(d.timeline),
    }


def forwarded_json(f: node_pb2.ForwardedFrom) -> dict[str, Any]:
    return {
        "originator": f.originator,
        "original_message_id": f.original_message_id,
        "original_sent_at": iso(f.original_sent_at),
        "forwarded_by": f.forwarded_by,
        "comment": f.comment,
        "originator_signature_verified": f.originator_signature_verified,
    }


def forwarded_lines(d: node_pb2.MessageDetail) -> list[str]:
    """Where a forwarded notice comes from, and whether its originator's signature held."""
    if not d.HasField("forwarded_from"):
        return []
    f = d.forwarded_from
    verdict = (
        "originator's signature verified"
        if f.originator_signature_verified
        else "originator's signature NOT verified here (originator or its key not pinned)"
    )
    lines = [
        f"Forwarded   by {safe(d.summary.peer)} ({safe(f.forwarded_by)}) from "
        f"{safe(f.originator)}, its message {safe(f.original_message_id)} of "
        f"{iso(f.original_sent_at)}",
        f"            {verdict}",
    ]
    if f.comment:
        lines.append(f"            {safe(f.comment)}")
    return lines


def attachment_lines(notice: notice_pb2.CaseNotice) -> list[str]:
    """One line per attachment, numbered from 1 as ``save_attachments`` numbers them.

    ``Attachment  scan.pdf (application/pdf, 20481 bytes)  #1  sha256 ab12cd34ef56a7b8…``:
    name and media type escaped, the digest as the peer declared it (its first
    16 hex digits; ``--json`` has all of it).
    """
    return [
        f"Attachment  {safe(a.name)} ({safe(a.media_type)}, {len(a.content)} bytes)"
        f"  #{number}  sha256 {a.sha256.hex()[:16]}…"
        for number, a in enumerate(notice.attachments, 1)
    ]


def detail_lines(d: node_pb2.MessageDetail, *, color: bool = False) -> list[str]:
    """The readable form of one message, every peer string escaped.

    A notice is framed by its handling banner, the first and the last line
    (coloured with ``color``, the only escape sequences ever printed).
    Attachment names are shown, never used as paths: a name such as
    ``../../etc/cron.d/x`` is only text here; ``liaison.client.attachments``
    makes a file name of its own from it.
    """
    if not d.HasField("notice"):
        return _bare_detail_lines(d)
    n = d.notice
    info = notice_json(n)
    originator = " ".join(safe(v) for v in info["originator"].values())
    banner = handling_banner(n.handling, color=color)
    lines = [
        banner,
        f"Message     {safe(d.summary.message_id)} ({direction(d.summary.direction)}, "
        f"{state_name(d.summary.state)})",
        f"Peer        {safe(d.summary.peer)}",
        f"Case        {safe(n.case_reference)}",
        f"Category    {category(n.category)}    Priority {priority(n.priority)}    "
        f"{tlp(n.handling)}",
        f"Evaluation  {evaluation_text(n.evaluation)}",
        f"Originator  {originator}".rstrip(),
        f"Created     {iso(n.created_at)}",
        f"Subject     {safe(n.subject)}",
    ]
    lines += [_subject_line(s) for s in info["subjects"]]
    lines += attachment_lines(n)
    for reference in n.references:
        lines.append(f"Refers to   {safe(reference)}")
    if n.readers:
        lines.append(f"Readers     {', '.join(safe(r) for r in n.readers)}")
    if n.forwardable_to:
        lines.append(f"May go to   {', '.join(safe(a) for a in n.forwardable_to)}")
    lines += forwarded_lines(d)
    lines += ["", safe(n.body, multiline=True), ""]
    return [*lines, *_evidence_lines(d), banner]


def _bare_detail_lines(d: node_pb2.MessageDetail) -> list[str]:
    """A message without a notice to show: a card update, or a notice whose content was
    destroyed (its timeline ends in content-destroyed)."""
    what = (
        "agency card update"
        if d.summary.content_type == CARD_UPDATE_CONTENT_TYPE
        else "notice content destroyed"
    )
    lines = [
        f"Message     {safe(d.summary.message_id)} ({direction(d.summary.direction)}, "
        f"{state_name(d.summary.state)})",
        f"Peer        {safe(d.summary.peer)}",
        f"Content     {what}",
    ]
    if d.summary.subject:
        lines.append(f"Subject     {safe(d.summary.subject)}")
    return [*lines, "", *_evidence_lines(d)]


def _evidence_lines(d: node_pb2.MessageDetail) -> list[str]:
    lines = []
    if d.HasField("receipt"):
        r = receipt_json(d.receipt)
        reason = f" ({r['reason']})" if r["reason"] else ""
        lines.append(
            f"Receipt     {r['status']}{reason} by {safe(r['receiver'])} at {r['received_at']}"
        )
    lines.append(f"Envelope    sha256 {safe(d.envelope_sha256)}")
    lines.append("Timeline")
    lines += timeline_lines(d.timeline)
    return lines

"""Rules a case notice must satisfy, checked by the sender before sealing and
by the receiver after opening."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from liaison.keys.ids import is_agency_id, is_message_id
from liaison.keys.text import code_point, first_control_character
from liaison.keys.times import is_valid_timestamp
from liaison.v1 import notice_pb2

MAX_SUBJECT_LENGTH = 300
MAX_CASE_REFERENCE_LENGTH = 100
# Caps on repeated fields, checked before anything looks at the items: a 16 MiB
# notice could otherwise hold eight million empty references to check one by one.
MAX_REFERENCES = 100
MAX_SUBJECTS = 200
MAX_ATTACHMENTS = 100
MAX_IDENTIFIERS = 50
MAX_NATIONALITIES = 10


# A local API identity's name (server/users.py issues only such names).
IDENTITY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_READERS = 32
MAX_FORWARDABLE_TO = 32


def readers_problems(handling: int, readers: Sequence[str], what: str) -> list[str]:
    """TLP:RED names its readers (at least one); no other handling names any. ``what``
    names the message in the problems ("notice", "forward"); the count is capped first."""
    if len(readers) > MAX_READERS:
        return [f"more than {MAX_READERS} readers"]
    problems = []
    red = handling == notice_pb2.TLP_RED
    if red and not readers:
        problems.append(f"a TLP:RED {what} names at least one reader")
    if readers and not red:
        problems.append(f"only a TLP:RED {what} names readers")
    for index, reader in enumerate(readers, 1):
        if not IDENTITY_NAME.fullmatch(reader):
            problems.append(f"reader {index} is not an identity name")
    return problems


def _reader_problems(notice: notice_pb2.CaseNotice) -> list[str]:
    """The readers, who sent it, and where it may be forwarded."""
    problems = readers_problems(notice.handling, notice.readers, "notice")
    if notice.sent_by and not IDENTITY_NAME.fullmatch(notice.sent_by):
        problems.append("sent_by is not an identity name")
    for index, agency in enumerate(notice.forwardable_to, 1):
        if not is_agency_id(agency):
            problems.append(f"forwardable_to {index} is not an agency id")
    return problems


def notice_problems(notice: notice_pb2.CaseNotice) -> list[str]:
    """Everything wrong with ``notice``; an empty list means it is valid.

    One-line fields may hold no control character of ``liaison.keys.text``;
    the body may hold line breaks and tabs but no other.
    """
    problems = _count_problems(notice)
    if problems:
        return problems
    if not notice.case_reference.strip():
        problems.append("case reference is empty")
    elif len(notice.case_reference) > MAX_CASE_REFERENCE_LENGTH:
        problems.append(f"case reference is longer than {MAX_CASE_REFERENCE_LENGTH} characters")
    if not notice.subject.strip():
        problems.append("subject is empty")
    elif len(notice.subject) > MAX_SUBJECT_LENGTH:
        problems.append(f"subject is longer than {MAX_SUBJECT_LENGTH} characters")
    for field, enum in (
        ("category", notice_pb2.Category),
        ("priority", notice_pb2.Priority),
        ("handling", notice_pb2.Tlp),
    ):
        value = getattr(notice, field)
        if value == 0 or value not in enum.values():
            problems.append(f"{field} is unset or unknown ({value})")
    if not is_agency_id(notice.originator.agency_id):
        problems.append("originator agency id is missing or invalid")
    if not notice.HasField("created_at"):
        problems.append("created time is missing")
    elif not is_valid_timestamp(notice.created_at):
        problems.append("created time is not a valid Timestamp")
    problems += _enum_problems(notice)
    # Problems name positions, never values: they end up in errors and the audit trail.
    for index, reference in enumerate(notice.references, 1):
        if not is_message_id(reference):
            problems.append(f"reference {index} is not a message id")
    problems += _reader_problems(notice)
    for index, attachment in enumerate(notice.attachments, 1):
        if not attachment.name:
            problems.append(f"attachment {index} has no name")
        if hashlib.sha256(attachment.content).digest() != attachment.sha256:
            problems.append(f"attachment {index} does not match its SHA-256")
    for field, text in _one_line_fields(notice):
        control = first_control_character(text)
        if control is not None:
            problems.append(f"{field} contains control character {code_point(control)}")
    control = first_control_character(notice.body, multiline=True)
    if control is not None:
        problems.append(f"body contains control character {code_point(control)}")
    return problems


def _count_problems(notice: notice_pb2.CaseNotice) -> list[str]:
    """Repeated fields over their caps; counting is all this does."""
    counts = [
        ("references", len(notice.references), MAX_REFERENCES),
        ("subjects", len(notice.subjects), MAX_SUBJECTS),
        ("attachments", len(notice.attachments), MAX_ATTACHMENTS),
        ("readers", len(notice.readers), MAX_READERS),
        ("forwardable_to", len(notice.forwardable_to), MAX_FORWARDABLE_TO),
    ]
    for index, subject in enumerate(notice.subjects, 1):
        counts.append((f"subject {index} identifiers", len(subject.identifiers), MAX_IDENTIFIERS))
        counts.append(
            (f"subject {index} nationalities", len(subject.nationalities), MAX_NATIONALITIES)
        )
    return [f"more than {cap} {field}" for field, count, cap in counts if count > cap]


def _enum_problems(notice: notice_pb2.CaseNotice) -> list[str]:
    """Optional enum fields (zero allowed) holding a value the schema does not define."""
    fields: list[tuple[str, int, Any]] = [
        (
            "evaluation source reliability",
            notice.evaluation.source_reliability,
            notice_pb2.SourceReliability,
        ),
        (
            "evaluation information assessment",
            notice.evaluation.information_assessment,
            notice_pb2.InformationAssessment,
        ),
    ]
    for index, subject in enumerate(notice.subjects, 1):
        fields.append((f"subject {index} kind", subject.kind, notice_pb2.SubjectKind))
        for number, identifier in enumerate(subject.identifiers, 1):
            fields.append(
                (
                    f"subject {index} identifier {number} type",
                    identifier.type,
                    notice_pb2.IdentifierType,
                )
            )
    return [
        f"{field} is unknown ({value})"
        for field, value, enum in fields
        if value not in enum.values()
    ]


def _one_line_fields(notice: notice_pb2.CaseNotice) -> Iterator[tuple[str, str]]:
    """Every one-line text field of ``notice``, named by position as problems name it."""
    yield "case reference", notice.case_reference
    yield "subject", notice.subject
    yield "originator agency id", notice.originator.agency_id
    yield "originator unit", notice.originator.unit
    yield "originator officer", notice.originator.officer
    for index, subject in enumerate(notice.subjects, 1):
        yield f"subject {index} name", subject.name
        yield f"subject {index} role", subject.role
        yield f"subject {index} date of birth", subject.date_of_birth
        for number, nationality in enumerate(subject.nationalities, 1):
            yield f"subject {index} nationality {number}", nationality
        for number, identifier in enumerate(subject.identifiers, 1):
            yield f"subject {index} identifier {number} value", identifier.value
            yield f"subject {index} identifier {number} issuing country", identifier.issuing_country
    for index, attachment in enumerate(notice.attachments, 1):
        yield f"attachment {index} name", attachment.name
        yield f"attachment {index} media type", attachment.media_type


# Business acknowledgements and replies (docs/PROTOCOL.md sections 10.2 and 10.3).
MAX_COMMENT_LENGTH = 2000


def acknowledgement_problems(ack: notice_pb2.Acknowledgement) -> list[str]:
    """Everything wrong with ``ack``; an empty list means it is valid."""
    problems = []
    if not is_message_id(ack.message_id):
        problems.append("the acknowledged message id is not a UUIDv7")
    if ack.status == 0 or ack.status not in notice_pb2.AckStatus.values():
        problems.append(f"status is unset or unknown ({ack.status})")
    if len(ack.comment) > MAX_COMMENT_LENGTH:
        problems.append(f"comment is longer than {MAX_COMMENT_LENGTH} characters")
    control = first_control_character(ack.comment, multiline=True)
    if control is not None:
        problems.append(f"comment contains control character {code_point(control)}")
    if not ack.HasField("at") or not is_valid_timestamp(ack.at):
        problems.append("time is missing or not a valid Timestamp")
    if ack.status == notice_pb2.ACK_STATUS_FORWARDED:
        if not is_agency_id(ack.forwarded_to) or not is_message_id(ack.forward_id):
            problems.append("a forward's acknowledgement names an agency id and a message id")
    elif ack.forwarded_to or ack.forward_id:
        problems.append("only a forward's acknowledgement names where it was forwarded")
    return problems


def reply_problems(reply: notice_pb2.Reply) -> list[str]:
    """Everything wrong with ``reply``: its reference, and its notice's problems."""
    problems = []
    if not is_message_id(reply.in_reply_to):
        problems.append("the message answered is not a UUIDv7")
    if not reply.HasField("notice"):
        return [*problems, "the reply holds no notice"]
    return problems + notice_problems(reply.notice)


# Handling codes from the loosest to the strictest: a reply may keep or tighten its
# original's handling, never loosen it.
TLP_ORDER = (
    notice_pb2.TLP_CLEAR,
    notice_pb2.TLP_GREEN,
    notice_pb2.TLP_AMBER,
    notice_pb2.TLP_AMBER_STRICT,
    notice_pb2.TLP_RED,
)

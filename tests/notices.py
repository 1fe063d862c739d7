"""Sample case notices for tests."""

from __future__ import annotations

import datetime as dt
import hashlib

from liaison.server.store.records import NoticeRecord
from liaison.v1 import notice_pb2 as N


def sample_notice(
    case_reference: str = "CASE-1", *, attachment: bytes | None = None
) -> N.CaseNotice:
    notice = N.CaseNotice(
        case_reference=case_reference,
        category=N.CATEGORY_HUMAN_TRAFFICKING,
        priority=N.PRIORITY_URGENT,
        handling=N.TLP_AMBER,
        evaluation=N.Evaluation(
            source_reliability=N.SOURCE_RELIABILITY_B,
            information_assessment=N.INFORMATION_ASSESSMENT_2,
        ),
        subject="Victims recruited with false job offers",
        body="Body text that must never appear in a log or the audit trail.",
        subjects=[
            N.Subject(
                kind=N.SUBJECT_KIND_PERSON,
                name="TEST PERSON",
                role="suspect",
                identifiers=[
                    N.Identifier(type=N.IDENTIFIER_TYPE_PHONE_NUMBER, value="+212600000000")
                ],
            )
        ],
        originator=N.Originator(unit="unit 1", officer="officer 1"),
    )
    if attachment is not None:
        notice.attachments.add(
            name="evidence.bin",
            media_type="application/octet-stream",
            content=attachment,
            sha256=hashlib.sha256(attachment).digest(),
        )
    return notice


def complete(notice: N.CaseNotice, agency_id: str) -> N.CaseNotice:
    """The notice as the sending node completes it (originator agency, created time)."""
    filled = N.CaseNotice()
    filled.CopyFrom(notice)
    filled.originator.agency_id = agency_id
    filled.created_at.FromSeconds(1_795_900_000)
    return filled


def stored_record(message_id: str) -> NoticeRecord:
    """A queued notice as the store keeps it, with placeholder bytes (for store tests)."""
    now = dt.datetime.now(dt.UTC)
    return NoticeRecord(
        message_id=message_id,
        sender="MA.DGSN.CCPI",
        recipient="DE.BPOL.LO-RABAT",
        content_type="application/vnd.liaison.case-notice.v1+proto",
        category=1,
        priority=1,
        handling=2,
        envelope=b"envelope",
        envelope_sha256="00" * 32,
        content=b"content",
        data_key=b"key",
        storage_key_id="k",
        summary=b"summary",
        created_at=now,
        expires_at=now + dt.timedelta(days=1),
    )

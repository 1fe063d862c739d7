"""How the CLI shows messages: one readable form, one ``--json`` form."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from liaison.client.api import state_name
from liaison.keys.errors import reason_name
from liaison.v1 import envelope_pb2, node_pb2, notice_pb2


def enum_label(enum: Any, value: int, prefix: str) -> str:
    """``CATEGORY_DRUG_TRAFFICKING`` -> ``drug-trafficking``; TLP keeps its ``+``."""
    name = enum.Name(value).removeprefix(prefix).lower().replace("_", "-")
    return "amber+strict" if name == "amber-strict" else name


def category(value: int) -> str:
    return enum_label(notice_pb2.Category, value, "CATEGORY_")


def priority(value: int) -> str:
    return enum_label(notice_pb2.Priority, value, "PRIORITY_")


def tlp(value: int) -> str:
    return "TLP:" + enum_label(notice_pb2.Tlp, value, "TLP_").upper()


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
    }


def summary_line(m: node_pb2.MessageSummary) -> str:
    arrow = "<-" if m.direction == node_pb2.DIRECTION_INBOUND else "->"
    return (
        f"{m.message_id}  {iso(m.created_at)}  {arrow} {m.peer:<20} {state_name(m.state):<9} "
        f"{priority(m.priority):<8} {tlp(m.handling):<16} {m.case_reference}  {m.subject}"
    )


def timeline_json(events: Any) -> list[dict[str, str]]:
    return [{"at": iso(e.at), "event": e.event, "detail": e.detail} for e in events]


def timeline_lines(events: Any) -> list[str]:
    return [f"  {iso(e.at)}  {e.event:<17} {e.detail}".rstrip() for e in events]


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
        "originator": {
            "agency_id": notice.originator.agency_id,
            "unit": notice.originator.unit,
            "officer": notice.originator.officer,
        },
        "created_at": iso(notice.created_at),
    }


def detail_json(d: node_pb2.MessageDetail) -> dict[str, Any]:
    return {
        **summary_json(d.summary),
        "envelope_sha256": d.envelope_sha256,
        "notice": notice_json(d.notice),
        "receipt": receipt_json(d.receipt) if d.HasField("receipt") else None,
        "timeline": timeline_json(d.timeline),
    }


def detail_lines(d: node_pb2.MessageDetail) -> list[str]:
    n = d.notice
    info = notice_json(n)
    evaluation = info["evaluation"]
    lines = [
        f"Message     {d.summary.message_id} ({direction(d.summary.direction)}, "
        f"{state_name(d.summary.state)})",
        f"Peer        {d.summary.peer}",
        f"Case        {n.case_reference}",
        f"Category    {category(n.category)}    Priority {priority(n.priority)}    "
        f"{tlp(n.handling)}",
        f"Evaluation  {evaluation['source_reliability'].upper()}"
        f"{evaluation['information_assessment']}",
        f"Originator  {n.originator.agency_id} {n.originator.unit} {n.originator.officer}".rstrip(),
        f"Created     {iso(n.created_at)}",
        f"Subject     {n.subject}",
    ]
    for s in info["subjects"]:
        ids = ", ".join(f"{i['type']} {i['value']}" for i in s["identifiers"])
        lines.append(f"  {s['kind']:<12} {s['name']} {s['role']} {ids}".rstrip())
    for a in info["attachments"]:
        lines.append(f"Attachment  {a['name']} ({a['media_type']}, {a['size']} bytes)")
    for reference in n.references:
        lines.append(f"Refers to   {reference}")
    lines += ["", n.body, ""]
    if d.HasField("receipt"):
        r = receipt_json(d.receipt)
        reason = f" ({r['reason']})" if r["reason"] else ""
        lines.append(f"Receipt     {r['status']}{reason} by {r['receiver']} at {r['received_at']}")
    lines.append(f"Envelope    sha256 {d.envelope_sha256}")
    lines.append("Timeline")
    lines += timeline_lines(d.timeline)
    return lines

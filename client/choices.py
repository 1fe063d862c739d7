"""The words the CLI accepts for enumerations (categories, TLP, states…): shared by the
parser and the commands, and light to import."""

from __future__ import annotations

from liaison.client import render
from liaison.v1 import node_pb2, notice_pb2

CATEGORIES = {render.category(v): v for v in notice_pb2.Category.values() if v}
PRIORITIES = {render.priority(v): v for v in notice_pb2.Priority.values() if v}
TLPS = {render.enum_label(notice_pb2.Tlp, v, "TLP_"): v for v in notice_pb2.Tlp.values() if v}
RELIABILITY = {
    render.enum_label(notice_pb2.SourceReliability, v, "SOURCE_RELIABILITY_"): v
    for v in notice_pb2.SourceReliability.values()
    if v
}
ASSESSMENT = {
    render.enum_label(notice_pb2.InformationAssessment, v, "INFORMATION_ASSESSMENT_"): v
    for v in notice_pb2.InformationAssessment.values()
    if v
}

ACK_STATUSES = {
    "acknowledged": notice_pb2.ACK_STATUS_ACKNOWLEDGED,
    "action-taken": notice_pb2.ACK_STATUS_ACTION_TAKEN,
    "declined": notice_pb2.ACK_STATUS_DECLINED,
}

LISTED_STATES = {
    "new": node_pb2.MESSAGE_STATE_RECEIVED,
    **{
        name.removeprefix("MESSAGE_STATE_").lower().replace("_", "-"): value
        for name, value in node_pb2.MessageState.items()
        if value
    },
}

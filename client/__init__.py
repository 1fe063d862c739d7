"""The client library for a node's local API, and the ``liaison`` CLI built on it.

Start with ``help(LiaisonClient)`` (blocking) or ``help(AsyncLiaisonClient)``
(asyncio), and ``build_notice`` to make a notice.

The names below are imported on first use, so that importing the CLI does
not load gRPC before the CLI has set gRPC's log verbosity.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liaison.client.aio import AsyncAttachmentStream, AsyncLiaisonClient
    from liaison.client.api import AttachmentStream, LiaisonClient
    from liaison.client.attachments import AttachmentError
    from liaison.client.builder import attachment, build_notice, check_notice
    from liaison.client.errors import (
        ClientError,
        InvalidNotice,
        MessageNotFound,
        NodeUnavailable,
        NotFound,
        PermissionDenied,
        RequestRejected,
        ResourceExhausted,
        Unavailable,
        UsageError,
    )
    from liaison.client.render import state_name
    from liaison.client.types import (
        AckStatus,
        AttachmentInfo,
        Category,
        Direction,
        MessagePage,
        MessageState,
        Priority,
        RecipientResult,
        SendResult,
        State,
        SummaryEnums,
        Tlp,
    )

_HOMES = {
    "LiaisonClient": "liaison.client.api",
    "AttachmentStream": "liaison.client.api",
    "AsyncLiaisonClient": "liaison.client.aio",
    "AsyncAttachmentStream": "liaison.client.aio",
    "AttachmentError": "liaison.client.attachments",
    "attachment": "liaison.client.builder",
    "build_notice": "liaison.client.builder",
    "check_notice": "liaison.client.builder",
    "state_name": "liaison.client.render",
    "ClientError": "liaison.client.errors",
    "InvalidNotice": "liaison.client.errors",
    "MessageNotFound": "liaison.client.errors",
    "NodeUnavailable": "liaison.client.errors",
    "RequestRejected": "liaison.client.errors",
    "UsageError": "liaison.client.errors",
    "PermissionDenied": "liaison.client.errors",
    "ResourceExhausted": "liaison.client.errors",
    "NotFound": "liaison.client.errors",
    "Unavailable": "liaison.client.errors",
    "AckStatus": "liaison.client.types",
    "AttachmentInfo": "liaison.client.types",
    "Category": "liaison.client.types",
    "Direction": "liaison.client.types",
    "MessagePage": "liaison.client.types",
    "MessageState": "liaison.client.types",
    "Priority": "liaison.client.types",
    "RecipientResult": "liaison.client.types",
    "SendResult": "liaison.client.types",
    "State": "liaison.client.types",
    "SummaryEnums": "liaison.client.types",
    "Tlp": "liaison.client.types",
}

__all__ = [
    "AckStatus",
    "AsyncAttachmentStream",
    "AsyncLiaisonClient",
    "AttachmentError",
    "AttachmentInfo",
    "AttachmentStream",
    "Category",
    "ClientError",
    "Direction",
    "InvalidNotice",
    "LiaisonClient",
    "MessageNotFound",
    "MessagePage",
    "MessageState",
    "NodeUnavailable",
    "NotFound",
    "PermissionDenied",
    "Priority",
    "RecipientResult",
    "RequestRejected",
    "ResourceExhausted",
    "SendResult",
    "State",
    "SummaryEnums",
    "Tlp",
    "Unavailable",
    "UsageError",
    "attachment",
    "build_notice",
    "check_notice",
    "state_name",
]


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'liaison.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

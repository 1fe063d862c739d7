"""The client library for a node's local API, and the ``liaison`` CLI built on it.

The names below are imported on first use, so that importing the CLI does
not load gRPC before the CLI has set gRPC's log verbosity.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from liaison.client.api import LiaisonClient, SendResult
    from liaison.client.errors import (
        ClientError,
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

_HOMES = {
    "LiaisonClient": "liaison.client.api",
    "SendResult": "liaison.client.api",
    "state_name": "liaison.client.render",
    "ClientError": "liaison.client.errors",
    "MessageNotFound": "liaison.client.errors",
    "NodeUnavailable": "liaison.client.errors",
    "RequestRejected": "liaison.client.errors",
    "UsageError": "liaison.client.errors",
    "PermissionDenied": "liaison.client.errors",
    "ResourceExhausted": "liaison.client.errors",
    "NotFound": "liaison.client.errors",
    "Unavailable": "liaison.client.errors",
}

__all__ = [
    "ClientError",
    "LiaisonClient",
    "MessageNotFound",
    "NodeUnavailable",
    "NotFound",
    "PermissionDenied",
    "RequestRejected",
    "ResourceExhausted",
    "SendResult",
    "Unavailable",
    "UsageError",
    "state_name",
]


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'liaison.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

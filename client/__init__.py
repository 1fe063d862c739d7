"""The client library for a node's local API, and the ``liaison`` CLI built on it."""

from liaison.client.api import LiaisonClient, SendResult, state_name
from liaison.client.errors import (
    ClientError,
    MessageNotFound,
    NodeUnavailable,
    RequestRejected,
    UsageError,
)

__all__ = [
    "ClientError",
    "LiaisonClient",
    "MessageNotFound",
    "NodeUnavailable",
    "RequestRejected",
    "SendResult",
    "UsageError",
    "state_name",
]

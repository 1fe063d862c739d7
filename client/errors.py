"""Errors of the client library and CLI, each with the exit code the CLI uses."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error ``liaison.client`` raises. ``exit_code`` is the CLI's."""

    exit_code = 1


class UsageError(ClientError):
    """The local user asked for something malformed (bad option, unreadable file)."""

    exit_code = 2


class NodeUnavailable(ClientError):
    """The node's local API could not be reached, refused the credential, or its
    storage is unavailable for now."""

    exit_code = 3


class RequestRejected(ClientError):
    """The node refused the request as invalid (bad notice, unknown peer) or too large."""

    exit_code = 4


class MessageNotFound(ClientError):
    """The node holds no message with that id."""

    exit_code = 5


class NotDelivered(ClientError):
    """The notice ended FAILED (the peer refused it) or EXPIRED: it will not be delivered."""

    exit_code = 6


class NotVerified(ClientError):
    """An audit log (or other evidence) does not verify."""

    exit_code = 7


class PermissionDenied(ClientError):
    """The node refused the call for this identity: its role may not make it
    (``PERMISSION_DENIED``, the message names the role needed), or its credential is
    revoked, replaced, expired or not registered (``UNAUTHENTICATED``)."""

    exit_code = 8


class ResourceExhausted(RequestRejected):
    """The request is larger than the node accepts, or the node is at a limit."""


# The names an integrator looks for first.
NotFound = MessageNotFound
Unavailable = NodeUnavailable

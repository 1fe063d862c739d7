"""Errors of the client library and CLI, each with the exit code the CLI uses."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error ``liaison.client`` raises. ``exit_code`` is the CLI's.

    When the node refused the call, ``code`` is the gRPC status it answered (e.g.
    ``"NOT_FOUND"``) and ``details`` its own message, verbatim; both are empty for an
    error found on this side.
    """

    exit_code = 1

    def __init__(self, message: str = "", *, code: str = "", details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details


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


class InvalidNotice(RequestRejected):
    """A notice (or a reply's) breaks the rules of ``liaison.keys.notice``: found by the
    notice builder before anything was sent, or by the node (which then queued nothing).
    ``problems`` names each one, by position, never by value."""

    def __init__(
        self,
        message: str,
        problems: tuple[str, ...] = (),
        *,
        code: str = "",
        details: str = "",
    ) -> None:
        super().__init__(message, code=code, details=details)
        self.problems = problems


# The names an integrator looks for first.
NotFound = MessageNotFound
Unavailable = NodeUnavailable

"""Errors raised by the key, card and envelope machinery."""

from __future__ import annotations

from liaison.v1 import envelope_pb2


class KeysError(Exception):
    """Base of every error raised by ``liaison.keys``."""


class KeyStoreError(KeysError):
    """A node's key files are missing, unreadable or unsafe (wrong permissions)."""


class CardError(KeysError):
    """An agency card is malformed, its self-signature fails, or it lacks a key."""


class ReceiptError(KeysError):
    """A signed receipt fails verification or does not match the delivered envelope."""


class EnvelopeError(KeysError):
    """A stored envelope cannot be opened again (e.g. to forward what it carries)."""


class EnvelopeRejected(KeysError):
    """The receiver refuses an envelope; ``reason`` is the wire reason code.

    ``message_id`` and ``sender`` are what the header claimed, when it could be
    parsed; they are untrusted until the outer signature has been checked.
    """

    def __init__(
        self,
        reason: envelope_pb2.RejectReason.ValueType,
        detail: str,
        *,
        message_id: str = "",
        sender: str = "",
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.message_id = message_id
        self.sender = sender
        super().__init__(f"{reason_name(reason)}: {detail}")


def reason_name(reason: envelope_pb2.RejectReason.ValueType) -> str:
    """Short name of a reject reason, e.g. ``BAD_OUTER_SIGNATURE``."""
    return envelope_pb2.RejectReason.Name(reason).removeprefix("REJECT_REASON_")


class CheckpointError(KeysError):
    """A checkpoint, signed note or cosignature is malformed, over a limit, or does not
    verify under the expected key (keys/checkpoint.py)."""

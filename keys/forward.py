"""Forwarding a received case notice to a third agency (docs/PROTOCOL.md section 10.5).

A forward carries the originator's notice whole: its envelope header and notice bytes
exactly as the forwarder received them, and the originator's inner signature over the
two. A receiver that pins the originator verifies that signature, so a forwarder can
pass a notice on but cannot alter it or put words in its originator's mouth.

Whether a notice may be forwarded at all is its originator's decision, written in the
signed notice: TLP:CLEAR, GREEN and AMBER may go to any agency; TLP:AMBER+STRICT and
RED only to an agency the originator named in ``forwardable_to``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from liaison.keys.content_types import CASE_NOTICE_CONTENT_TYPE
from liaison.keys.ids import is_agency_id, is_message_id
from liaison.keys.labels import CONTENT_SIGNATURE_LABEL, signing_input
from liaison.keys.notice import (
    IDENTITY_NAME,
    MAX_COMMENT_LENGTH,
    notice_problems,
    readers_problems,
)
from liaison.keys.text import code_point, first_control_character
from liaison.keys.trust import TrustStore
from liaison.v1 import envelope_pb2, notice_pb2

ED25519_SIGNATURE_BYTES = 64
# Handling codes whose notices go to a third agency only with the originator's consent.
ORIGINATOR_CONTROLLED = frozenset({notice_pb2.TLP_AMBER_STRICT, notice_pb2.TLP_RED})


@dataclass(frozen=True)
class ForwardedNotice:
    """A forward that satisfies every rule of section 10.5 (its signature not yet checked)."""

    forward: notice_pb2.Forward
    # The originator's envelope header and notice, parsed from the bytes in ``forward``.
    header: envelope_pb2.EnvelopeHeader
    notice: notice_pb2.CaseNotice

    @property
    def originator(self) -> str:
        return self.header.sender

    def shown(self) -> notice_pb2.CaseNotice:
        """The notice as the forwarder and the receiver hold it: the originator's, with the
        readers the forward names and, as the identity that sent it, the one that
        forwarded it (the originator's own readers and sender are people of the
        originator and of the forwarder, whose names mean nothing, or someone else, here)."""
        notice = notice_pb2.CaseNotice()
        notice.CopyFrom(self.notice)
        del notice.readers[:]
        notice.readers.extend(self.forward.readers)
        notice.sent_by = self.forward.forwarded_by
        return notice

    def verified_by(self, trust: TrustStore) -> bool | None:
        """Whether the originator's signature verifies under its key pinned in ``trust``:
        None when the originator is not pinned there; False when it is but the key is not
        one of its pinned ones (a forgery, or a key from before its last rotation)."""
        if trust.peer(self.originator) is None:
            return None
        key = trust.signing_key(self.originator, self.header.sender_signing_key_id)
        return key is not None and self.signed_by(key)

    def signed_by(self, key: ed25519.Ed25519PublicKey) -> bool:
        """Whether the originator's signature verifies under ``key``."""
        try:
            key.verify(
                self.forward.original_signature,
                signing_input(
                    CONTENT_SIGNATURE_LABEL,
                    self.forward.original_header,
                    self.forward.original_content,
                ),
            )
        except InvalidSignature:
            return False
        return True


def may_forward(notice: notice_pb2.CaseNotice, to: str) -> bool:
    """Whether ``notice``'s handling lets its recipient forward it to the agency ``to``."""
    return notice.handling not in ORIGINATOR_CONTROLLED or to in notice.forwardable_to


def parse_forward(
    forward: notice_pb2.Forward, *, forwarder: str
) -> tuple[ForwardedNotice | None, list[str]]:
    """``forward`` checked against the rules of section 10.5, as sent by ``forwarder``:
    the forwarded notice and no problems, or None and every problem found."""
    problems: list[str] = []
    try:
        header = envelope_pb2.EnvelopeHeader.FromString(forward.original_header)
        notice = notice_pb2.CaseNotice.FromString(forward.original_content)
    except DecodeError:
        return None, ["the original header or notice does not parse"]
    if header.content_type != CASE_NOTICE_CONTENT_TYPE:
        problems.append("the original is not a case notice")
    if not is_message_id(header.message_id):
        problems.append("the original message id is not a UUIDv7")
    if not is_agency_id(header.sender) or header.sender == forwarder:
        problems.append("the originator is not an agency other than the forwarder")
    if header.recipient != forwarder:
        problems.append("the original was not sent to the forwarder")
    if not header.sender_signing_key_id:
        problems.append("the original names no signing key")
    if len(forward.original_signature) != ED25519_SIGNATURE_BYTES:
        problems.append("the originator's signature has the wrong length")
    problems += [f"original {problem}" for problem in notice_problems(notice)]
    problems += readers_problems(notice.handling, forward.readers, "forward")
    if len(forward.comment) > MAX_COMMENT_LENGTH:
        problems.append(f"comment is longer than {MAX_COMMENT_LENGTH} characters")
    control = first_control_character(forward.comment, multiline=True)
    if control is not None:
        problems.append(f"comment contains control character {code_point(control)}")
    if not IDENTITY_NAME.fullmatch(forward.forwarded_by):
        problems.append("forwarded_by is not an identity name")
    if problems:
        return None, problems
    return ForwardedNotice(forward, header, notice), []

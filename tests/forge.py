"""Builds envelopes from their parts, following docs/PROTOCOL.md rather than
``liaison.keys.envelope``, so that tests can change any part and so that the
specification is checked by a second implementation."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519

from liaison.keys.card import PeerCard
from liaison.keys.identity import NodeIdentity
from liaison.v1 import envelope_pb2, notice_pb2

SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
CASE_NOTICE = "application/vnd.liaison.case-notice.v1+proto"


def signed_bytes(label: str, *parts: bytes) -> bytes:
    return label.encode() + b"\x00" + b"".join(hashlib.sha256(p).digest() for p in parts)


def hpke_info(header: bytes) -> bytes:
    return b"liaison-exchange/v1/hpke-info\x00" + hashlib.sha256(header).digest()


@dataclass
class Forge:
    """Parts of one envelope; ``build`` signs and encrypts what is not given."""

    sender: NodeIdentity
    recipient: PeerCard
    notice: notice_pb2.CaseNotice
    now: dt.datetime
    ttl: dt.timedelta = dt.timedelta(hours=1)
    message_id: str = "01a22488-44ca-7885-9083-b9635c2e4917"
    header_fields: dict[str, object] = field(default_factory=dict)
    content: bytes | None = None
    inner_key: ed25519.Ed25519PrivateKey | None = None
    outer_key: ed25519.Ed25519PrivateKey | None = None
    inner_signature: bytes | None = None
    # The HPKE plaintext as given instead of the SignedContent built from the parts.
    plaintext: bytes | None = None
    # Changes the header before anything is signed, for fields ``header_fields`` cannot set.
    mutate_header: Callable[[envelope_pb2.EnvelopeHeader], None] | None = None

    def header(self) -> envelope_pb2.EnvelopeHeader:
        header = envelope_pb2.EnvelopeHeader(
            version=1,
            suite=envelope_pb2.SUITE_ED25519_MLKEM768X25519_HKDFSHA256_AES256GCM,
            message_id=self.message_id,
            sender=self.sender.agency_id,
            recipient=self.recipient.agency_id,
            sender_signing_key_id=self.sender.card.signing_key_id,
            recipient_encryption_key_id=self.recipient.encryption_key_id,
            content_type=CASE_NOTICE,
        )
        created = self.now.replace(microsecond=0)
        header.created_at.FromDatetime(created)
        header.expires_at.FromDatetime(created + self.ttl)
        for name, value in self.header_fields.items():
            if name in ("created_at", "expires_at"):
                assert isinstance(value, dt.datetime)
                getattr(header, name).FromDatetime(value)
            else:
                setattr(header, name, value)
        if self.mutate_header is not None:
            self.mutate_header(header)
        return header

    def parts(self) -> tuple[bytes, bytes, bytes]:
        """(header, ciphertext, outer signature), all signed as the protocol says."""
        header = self.header().SerializeToString()
        content = self.content if self.content is not None else self.notice.SerializeToString()
        inner = self.inner_signature or self.sign_inner(header, content)
        plaintext = self.plaintext
        if plaintext is None:
            signed = envelope_pb2.SignedContent(content=content, signature=inner)
            plaintext = signed.SerializeToString()
        ciphertext = SUITE.encrypt(plaintext, self.recipient.encryption_key, info=hpke_info(header))
        outer = self.sign_outer(header, ciphertext)
        return header, ciphertext, outer

    def sign_inner(self, header: bytes, content: bytes) -> bytes:
        key = self.inner_key or self.sender.signing_key
        return key.sign(signed_bytes("liaison-exchange/v1/content-signature", header, content))

    def sign_outer(self, header: bytes, ciphertext: bytes) -> bytes:
        key = self.outer_key or self.sender.signing_key
        return key.sign(signed_bytes("liaison-exchange/v1/envelope-signature", header, ciphertext))

    def build(self) -> bytes:
        return assemble(*self.parts())

    def but(self, **changes: object) -> Forge:
        return replace(self, **changes)  # type: ignore[arg-type]


def assemble(header: bytes, ciphertext: bytes, signature: bytes) -> bytes:
    return envelope_pb2.SealedEnvelope(
        header=header, ciphertext=ciphertext, signature=signature
    ).SerializeToString()

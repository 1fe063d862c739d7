"""Fixed keys for the known-answer vectors (never use these anywhere else)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from liaison.keys.certs import self_signed_peer_certificate
from liaison.keys.identity import NodeIdentity
from liaison.keys.ids import tls_name

CREATED = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class FixedKeys:
    agency_id: str
    ed25519_seed: bytes
    mlkem768_seed: bytes
    x25519_private: bytes

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FixedKeys:
        return cls(
            agency_id=data["agency_id"],
            ed25519_seed=bytes.fromhex(data["ed25519_seed"]),
            mlkem768_seed=bytes.fromhex(data["mlkem768_seed"]),
            x25519_private=bytes.fromhex(data["x25519_private"]),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "agency_id": self.agency_id,
            "ed25519_seed": self.ed25519_seed.hex(),
            "mlkem768_seed": self.mlkem768_seed.hex(),
            "x25519_private": self.x25519_private.hex(),
        }

    def public_json(self) -> dict[str, str]:
        """What a receiver knows of a sender: its agency id and public keys."""
        identity = self.identity()
        return {
            "agency_id": self.agency_id,
            "ed25519_public": raw_public(identity.signing_key).hex(),
            "mlkem768_public": identity.kem_mlkem.public_key().public_bytes_raw().hex(),
            "x25519_public": raw_public(identity.kem_x25519).hex(),
        }

    def identity(self) -> NodeIdentity:
        """A node identity with these keys; its TLS certificate is fresh (not part of vectors)."""
        return NodeIdentity(
            agency_id=self.agency_id,
            name=f"Vector agency {self.agency_id}",
            endpoint="127.0.0.1:1",
            created_at=CREATED,
            signing_key=ed25519.Ed25519PrivateKey.from_private_bytes(self.ed25519_seed),
            kem_mlkem=mlkem.MLKEM768PrivateKey.from_seed_bytes(self.mlkem768_seed),
            kem_x25519=x25519.X25519PrivateKey.from_private_bytes(self.x25519_private),
            tls=self_signed_peer_certificate(self.agency_id, tls_name(self.agency_id)),
        )


def _fixed(label: str, length: int) -> bytes:
    return (label.encode() * length)[:length]


SENDER = FixedKeys(
    "MA.DGSN.CCPI",
    _fixed("sender-ed25519;", 32),
    _fixed("sender-mlkem768;", 64),
    _fixed("sender-x25519;", 32),
)
RECEIVER = FixedKeys(
    "DE.BPOL.LO-RABAT",
    _fixed("receiver-ed25519;", 32),
    _fixed("receiver-mlkem768;", 64),
    _fixed("receiver-x25519;", 32),
)
OTHER = FixedKeys(
    "FR.DGPN.SCCOPOL",
    _fixed("other-ed25519;", 32),
    _fixed("other-mlkem768;", 64),
    _fixed("other-x25519;", 32),
)


def raw_public(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

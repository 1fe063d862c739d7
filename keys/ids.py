"""Identifiers: UUIDv7 message ids, key ids and agency ids."""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid

from liaison.keys.labels import (
    KEY_ID_LABEL_ENCRYPTION,
    KEY_ID_LABEL_MLDSA65,
    KEY_ID_LABEL_SIGNING,
    labelled,
)

_AGENCY_ID = re.compile(r"^[A-Z0-9]+(?:[.-][A-Z0-9]+)*$")
MAX_AGENCY_ID_LENGTH = 63


def new_message_id() -> str:
    """A fresh UUIDv7 (RFC 9562) string: 48-bit Unix milliseconds, then 74 random bits."""
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & (1 << 62) - 1
    value = (unix_ms & (1 << 48) - 1) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))


def is_message_id(text: str) -> bool:
    """True if ``text`` is a UUIDv7 in canonical lowercase form."""
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        return False
    return str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122


def is_agency_id(text: str) -> bool:
    """True if ``text`` is a valid agency id such as ``MA.DGSN.CCPI`` or ``DE.BPOL.LO-RABAT``.

    Agency ids are upper-case letters and digits in dot- or hyphen-separated
    parts, so that the lower-cased id is also a valid DNS name for TLS.
    """
    return len(text) <= MAX_AGENCY_ID_LENGTH and _AGENCY_ID.fullmatch(text) is not None


def tls_name(agency_id: str) -> str:
    """DNS name in a node's TLS certificate: the lower-cased agency id."""
    return agency_id.lower()


def signing_key_id(raw_public_key: bytes) -> str:
    """Key id of an Ed25519 public key: 128 bits of a labelled SHA-256, in hex."""
    return hashlib.sha256(labelled(KEY_ID_LABEL_SIGNING, raw_public_key)).hexdigest()[:32]


def encryption_key_id(mlkem_public_key: bytes, x25519_public_key: bytes) -> str:
    """Key id of a hybrid HPKE public key: 128 bits of a labelled SHA-256, in hex."""
    material = labelled(KEY_ID_LABEL_ENCRYPTION, mlkem_public_key + x25519_public_key)
    return hashlib.sha256(material).hexdigest()[:32]


def mldsa65_key_id(raw_public_key: bytes) -> str:
    """Key id of an ML-DSA-65 public key: 128 bits of a labelled SHA-256, in hex."""
    return hashlib.sha256(labelled(KEY_ID_LABEL_MLDSA65, raw_public_key)).hexdigest()[:32]

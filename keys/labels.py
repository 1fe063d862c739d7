"""Domain-separation labels and the exact byte strings that are signed.

Every signature and every KDF input starts with one of these labels and a zero
byte, so a signature made for one purpose can never be valid for another.
Signed payloads are hashed first (fixed-length SHA-256 digests of the exact
transmitted bytes): concatenating fixed-length digests is unambiguous, and
Ed25519 then hashes 100 bytes instead of a megabyte attachment twice.
"""

from __future__ import annotations

import hashlib

ENVELOPE_SIGNATURE_LABEL = b"liaison-exchange/v1/envelope-signature"
CONTENT_SIGNATURE_LABEL = b"liaison-exchange/v1/content-signature"
RECEIPT_SIGNATURE_LABEL = b"liaison-exchange/v1/receipt-signature"
CARD_SIGNATURE_LABEL = b"liaison-exchange/v1/card-signature"
# The ML-DSA-65 context string of a card's second self-signature (ML-DSA takes the context
# as its own parameter, so it is not prefixed to the signed bytes).
CARD_MLDSA65_CONTEXT = b"liaison-exchange/v1/card-signature-mldsa65"
# A card update (keys/rotation.py): the replaced card's signatures over the update, which
# names the new card. ML-DSA-65 again takes its context as a parameter.
CARD_UPDATE_LABEL = b"liaison-exchange/v1/card-update"
CARD_UPDATE_MLDSA65_CONTEXT = b"liaison-exchange/v1/card-update-mldsa65"
HPKE_INFO_LABEL = b"liaison-exchange/v1/hpke-info"
KEY_ID_LABEL_SIGNING = b"liaison-exchange/v1/signing-key-id"
KEY_ID_LABEL_ENCRYPTION = b"liaison-exchange/v1/encryption-key-id"
KEY_ID_LABEL_MLDSA65 = b"liaison-exchange/v1/mldsa65-key-id"
# Private keys at rest: the HKDF info and the AES-GCM associated data of a sealed key file.
SEALED_KEY_LABEL = b"liaison-exchange/v1/sealed-key"
# Notices at rest (keys/storage.py): the associated data of a notice's content under its
# data key, of the data key wrapped under the storage key, and of the listing summary; the
# HKDF info that derives the summary key from the storage key.
STORED_CONTENT_LABEL = b"liaison-exchange/v1/stored-content"
DATA_KEY_LABEL = b"liaison-exchange/v1/data-key"
STORED_SUMMARY_LABEL = b"liaison-exchange/v1/stored-summary"
SUMMARY_KEY_LABEL = b"liaison-exchange/v1/summary-key"


def labelled(label: bytes, data: bytes) -> bytes:
    """``label || 0x00 || data``."""
    return label + b"\x00" + data


def signing_input(label: bytes, *parts: bytes) -> bytes:
    """``label || 0x00 || SHA-256(part_1) || ... || SHA-256(part_n)``: what is signed."""
    return labelled(label, b"".join(hashlib.sha256(part).digest() for part in parts))


# Signed checkpoints of an audit log (keys/checkpoint.py, C2SP signed-note). The ML-DSA-65
# signature line's context parameter; and its signature type in the key ID: 0xff, the byte
# C2SP reserves for types it assigns no byte to, followed by that context as the identifier.
CHECKPOINT_MLDSA65_CONTEXT = b"liaison-exchange/v1/checkpoint-mldsa65"
CHECKPOINT_MLDSA65_SIGNATURE_TYPE = b"\xff" + CHECKPOINT_MLDSA65_CONTEXT
# A checkpoint's origin line (also the log's key name) is this prefix and the log's agency id.
AUDIT_LOG_ORIGIN_PREFIX = "liaison-exchange/v1/audit-log/"
# A witness's cosignature key name is this prefix and the witness's agency id.
WITNESS_KEY_NAME_PREFIX = "liaison-exchange/v1/witness/"
# C2SP tlog-cosignature's header line: a witness's Ed25519 cosignature signs this line, a
# "time <seconds>" line, then the checkpoint's note text.
COSIGNATURE_V1_HEADER = b"cosignature/v1"

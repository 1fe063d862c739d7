"""Notices at rest: a data key per message, wrapped by the node's storage key.

What the database holds of a stored notice (either direction; the row's
``content_format`` is ``sealed-v1``)::

    content      nonce || AES-256-GCM(data key, notice bytes,
                 ad = STORED_CONTENT_LABEL, direction, sender, message id)
    data_key     nonce || AES-256-GCM(storage key, data key,
                 ad = DATA_KEY_LABEL, storage key id, direction, sender, message id)
    summary      nonce || AES-256-GCM(summary key, [subject, case reference],
                 ad = STORED_SUMMARY_LABEL, storage key id, direction, sender, message id)
    storage_key_id

The storage key is 32 random bytes sealed in the key store under the
passphrase (role ``storage``); its id is 16 random bytes in hex, chosen at
creation, because a digest of a secret key must not be published. The summary
key is derived from it with HKDF-SHA256 and its own label: a listing opens the
small summary of each row (what an operator needs to pick a notice) without
ever loading or decrypting the content, and without touching the data keys.

Associated data binds every ciphertext to its row: a ciphertext, wrapped key
or summary moved to another row (another message id, sender or direction),
or a storage key id rewritten, fails to open.

**Destroying** a message's content is forgetting its wrapped data key (and its
summary): without them, the content ciphertext, wherever a copy of it lies,
cannot be opened with the storage key. The store does that
(``Store.destroy_content``); nothing here needs to run.

Every function is pure CPU work: callers run it off the event loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from liaison.keys.errors import KeysError, KeyStoreError
from liaison.keys.labels import (
    DATA_KEY_LABEL,
    STORED_CONTENT_LABEL,
    STORED_SUMMARY_LABEL,
    SUMMARY_KEY_LABEL,
    labelled,
)

STORAGE_ROLE = "storage"
STORAGE_KEY_FILE = "storage.key"
STORAGE_KEY_KIND = "AES-256-GCM storage key wrapping the data keys of stored notices"
KEY_BYTES = 32
KEY_ID_BYTES = 16
NONCE_BYTES = 12


class StoredContentError(KeysError):
    """A stored notice does not open: altered, damaged, or under a key this node lacks."""


@dataclass(frozen=True)
class Row:
    """What binds sealed content to its row: direction, sender and message id."""

    direction: str
    sender: str
    message_id: str

    def parts(self) -> list[bytes]:
        return [self.direction.encode(), self.sender.encode(), self.message_id.encode()]


@dataclass(frozen=True)
class Summary:
    """What a listing shows of a notice: its subject and case reference."""

    subject: str
    case_reference: str


@dataclass(frozen=True)
class SealedContent:
    """A notice sealed for the database."""

    content: bytes
    data_key: bytes
    storage_key_id: str
    summary: bytes


class StorageKey:
    """The node's storage key in memory: never shown by ``repr`` or ``str``."""

    __slots__ = ("_key", "_summary_key", "key_id")

    def __init__(self, key: bytes, key_id: str) -> None:
        if len(key) != KEY_BYTES:
            raise KeyStoreError(f"the storage key is {len(key)} bytes, not {KEY_BYTES}")
        if len(key_id) != 2 * KEY_ID_BYTES or key_id.strip("0123456789abcdef"):
            raise KeyStoreError("the storage key id is not 32 lower-case hex digits")
        self._key = key
        self.key_id = key_id
        self._summary_key = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=SUMMARY_KEY_LABEL
        ).derive(key)

    @classmethod
    def generate(cls) -> StorageKey:
        return cls(os.urandom(KEY_BYTES), os.urandom(KEY_ID_BYTES).hex())

    def secret(self) -> bytes:
        """The key's bytes, to seal in the key store."""
        return self._key

    def __repr__(self) -> str:
        return f"StorageKey({self.key_id}, <hidden>)"

    __str__ = __repr__

    def _check(self, storage_key_id: str | None) -> None:
        if storage_key_id != self.key_id:
            raise StoredContentError(
                f"it was sealed under storage key {storage_key_id or '(none)'}, but this "
                f"node's storage key is {self.key_id}"
            )


def _ad(label: bytes, *parts: bytes) -> bytes:
    """``label || 0x00`` then each part with a two-byte length: unambiguous."""
    return labelled(label, b"".join(len(p).to_bytes(2, "big") + p for p in parts))


def _encrypt(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def _decrypt(key: bytes, sealed: bytes | None, ad: bytes, what: str) -> bytes:
    if sealed is None or len(sealed) < NONCE_BYTES + 16:
        raise StoredContentError(f"its {what} is missing or truncated")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        raise StoredContentError(
            f"its {what} does not open: altered, damaged, or moved from another row"
        ) from None


def seal_content_at_rest(
    key: StorageKey, content: bytes, summary: Summary, row: Row
) -> SealedContent:
    """Seal ``content`` under a fresh data key wrapped by ``key``; the summary beside it."""
    data_key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
    sealed = _encrypt(data_key, content, _ad(STORED_CONTENT_LABEL, *row.parts()))
    wrapped = _encrypt(
        key.secret(), data_key, _ad(DATA_KEY_LABEL, key.key_id.encode(), *row.parts())
    )
    encoded = json.dumps([summary.subject, summary.case_reference]).encode()
    return SealedContent(
        content=sealed,
        data_key=wrapped,
        storage_key_id=key.key_id,
        summary=_encrypt(
            key._summary_key,
            encoded,
            _ad(STORED_SUMMARY_LABEL, key.key_id.encode(), *row.parts()),
        ),
    )


def open_content_at_rest(
    key: StorageKey,
    *,
    content: bytes | None,
    data_key: bytes | None,
    storage_key_id: str | None,
    row: Row,
) -> bytes:
    """The notice bytes; ``StoredContentError`` saying what does not open."""
    key._check(storage_key_id)
    unwrapped = _decrypt(
        key.secret(), data_key, _ad(DATA_KEY_LABEL, key.key_id.encode(), *row.parts()), "data key"
    )
    return _decrypt(unwrapped, content, _ad(STORED_CONTENT_LABEL, *row.parts()), "content")


def open_summary(
    key: StorageKey, *, summary: bytes | None, storage_key_id: str | None, row: Row
) -> Summary:
    """The subject and case reference; ``StoredContentError`` if they do not open."""
    key._check(storage_key_id)
    opened = _decrypt(
        key._summary_key,
        summary,
        _ad(STORED_SUMMARY_LABEL, key.key_id.encode(), *row.parts()),
        "summary",
    )
    try:
        subject, case_reference = json.loads(opened)
    except (ValueError, TypeError):
        raise StoredContentError("its summary does not parse") from None
    if not isinstance(subject, str) or not isinstance(case_reference, str):
        raise StoredContentError("its summary does not parse")
    return Summary(subject, case_reference)

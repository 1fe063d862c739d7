"""Private keys sealed under a passphrase.

A sealed key file holds a PKCS#8 private key encrypted with AES-256-GCM under a
key derived from the passphrase: scrypt (the memory-hard KDF ``cryptography``
offers) gives a key-encryption key, and HKDF-SHA256 derives from it one key
per file *role* (``signing``, ``tls``, ``api-ca``, ...). The role, the key id
and the KDF parameters are the associated data, so a file cannot be swapped
for another role or key, nor its parameters changed, without failing to open.

Why not PKCS#8's own encryption: ``cryptography`` writes it as PBES2 with
PBKDF2-HMAC-SHA256 at 2,048 iterations and AES-CBC without authentication,
and offers no setting to strengthen it. And why one scrypt per key set rather
than per file: the files of one set share their salt, so opening a node's
seven keys costs one derivation (a fraction of a second), not seven.

The file is JSON, so that a person can see what it is::

    {"format": "liaison-sealed-key/v1", "role": "signing", "key_id": "...",
     "kdf": {"name": "scrypt", "salt": "...", "log2_n": 16, "r": 8, "p": 1},
     "nonce": "...", "ciphertext": "..."}
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from liaison.keys.errors import KeyStoreError
from liaison.keys.labels import SEALED_KEY_LABEL, labelled

FORMAT = "liaison-sealed-key/v1"
# Where the CLI and the client library look for the passphrase first.
PASSPHRASE_VARIABLE = "LIAISON_PASSPHRASE"  # noqa: S105 - a variable's name
# scrypt cost: N = 2**log2_n with r = 8 takes 128 * r * N bytes of memory.
NODE_KEYS_LOG2_N = 16  # 64 MiB, about 0.3 s on a 2-core machine: once per node start
CREDENTIAL_LOG2_N = 15  # 32 MiB, about 0.15 s: once per CLI call with a credential
MIN_LOG2_N, MAX_LOG2_N = 1, 22
SALT_BYTES = 16
NONCE_BYTES = 12
PASSPHRASE_CHECK_ROLE = "passphrase-check"  # noqa: S105 - a file role
_CHECK_PLAINTEXT = b"liaison-exchange passphrase check"


class WrongPassphrase(KeyStoreError):
    """The passphrase does not open the key set."""


class Passphrase:
    """A passphrase in memory: never shown by ``repr``, ``str`` or a traceback's locals."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | bytes) -> None:
        value = secret.encode("utf-8") if isinstance(secret, str) else secret
        if not value:
            raise KeyStoreError("the passphrase is empty")
        self._secret = value

    def reveal(self) -> bytes:
        return self._secret

    def __repr__(self) -> str:
        return "Passphrase(<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True)
class KdfParams:
    salt: bytes
    log2_n: int
    r: int = 8
    p: int = 1

    @classmethod
    def fresh(cls, log2_n: int) -> KdfParams:
        return cls(salt=os.urandom(SALT_BYTES), log2_n=log2_n)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "scrypt",
            "salt": _b64(self.salt),
            "log2_n": self.log2_n,
            "r": self.r,
            "p": self.p,
        }

    @classmethod
    def from_json(cls, value: Any) -> KdfParams:
        if not isinstance(value, dict) or value.get("name") != "scrypt":
            raise ValueError("not scrypt parameters")
        params = cls(
            salt=_unb64(value["salt"]),
            log2_n=_int(value["log2_n"]),
            r=_int(value["r"]),
            p=_int(value["p"]),
        )
        if not MIN_LOG2_N <= params.log2_n <= MAX_LOG2_N or not (
            1 <= params.r <= 32 and 1 <= params.p <= 16 and len(params.salt) == SALT_BYTES
        ):
            raise ValueError("scrypt parameters out of range")
        return params


@dataclass
class Unlocker:
    """A passphrase and the scrypt outputs derived from it so far (one per salt)."""

    passphrase: Passphrase
    _derived: dict[KdfParams, bytes] = field(default_factory=dict, repr=False)
    _ahead: dict[KdfParams, Future[bytes]] = field(default_factory=dict, repr=False)

    def derive_ahead(self, params: KdfParams) -> None:
        """Start deriving the key of ``params`` on a thread of its own; the first
        ``file_key`` that needs it waits for it. scrypt releases the interpreter lock, so
        ``liaison serve`` unlocks its keys while it loads the rest of the server."""
        if params in self._derived or params in self._ahead:
            return
        future: Future[bytes] = Future()

        def derive() -> None:
            try:
                future.set_result(self._scrypt(params))
            except BaseException as exc:  # handed to the waiter, which raises it
                future.set_exception(exc)

        try:
            threading.Thread(target=derive, name="scrypt", daemon=True).start()
        except RuntimeError:  # no thread to be had: derived when first needed
            return
        self._ahead[params] = future

    def _scrypt(self, params: KdfParams) -> bytes:
        return Scrypt(
            salt=params.salt, length=32, n=2**params.log2_n, r=params.r, p=params.p
        ).derive(self.passphrase.reveal())

    def file_key(self, params: KdfParams, role: str) -> bytes:
        master = self._derived.get(params)
        if master is None:
            ahead = self._ahead.pop(params, None)
            if ahead is not None:
                # A derivation ahead that failed (out of memory, say) is tried again here,
                # and raises its own error if it fails again.
                with contextlib.suppress(Exception):
                    master = ahead.result()
            if master is None:
                master = self._scrypt(params)
            self._derived[params] = master
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=labelled(SEALED_KEY_LABEL, role.encode()),
        ).derive(master)


def seal(secret: bytes, *, role: str, key_id: str, params: KdfParams, unlocker: Unlocker) -> bytes:
    """The sealed-key file (JSON bytes) holding ``secret`` (a PKCS#8 DER key)."""
    header = {"format": FORMAT, "role": role, "key_id": key_id, "kdf": params.to_json()}
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(unlocker.file_key(params, role)).encrypt(
        nonce, secret, _associated_data(header)
    )
    body = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    return (json.dumps(body, indent=1) + "\n").encode()


@dataclass(frozen=True)
class SealedFile:
    """A parsed sealed-key file, not yet opened."""

    role: str
    key_id: str
    params: KdfParams
    header: dict[str, Any]
    nonce: bytes
    ciphertext: bytes

    @classmethod
    def parse(cls, data: bytes, name: str) -> SealedFile:
        """Raises ``KeyStoreError`` naming ``name`` if ``data`` is not a sealed-key file."""
        try:
            body = json.loads(data.decode("utf-8"))
            if not isinstance(body, dict) or body.get("format") != FORMAT:
                raise ValueError("not a sealed key")
            header = {key: body[key] for key in ("format", "role", "key_id", "kdf")}
            role, key_id = body["role"], body["key_id"]
            if not isinstance(role, str) or not isinstance(key_id, str):
                raise ValueError("role and key id must be strings")
            return cls(
                role=role,
                key_id=key_id,
                params=KdfParams.from_json(body["kdf"]),
                header=header,
                nonce=_unb64(body["nonce"]),
                ciphertext=_unb64(body["ciphertext"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise KeyStoreError(
                f"key file {name} is damaged or not a Liaison sealed key; restore it from a backup"
            ) from exc

    def open(self, unlocker: Unlocker, *, role: str, name: str) -> bytes:
        """The secret; ``KeyStoreError`` if the role differs or the file does not open."""
        if self.role != role:
            raise KeyStoreError(f"key file {name} holds a {self.role} key, not a {role} key")
        try:
            return AESGCM(unlocker.file_key(self.params, role)).decrypt(
                self.nonce, self.ciphertext, _associated_data(self.header)
            )
        except (InvalidTag, ValueError):
            raise KeyStoreError(
                f"key file {name} does not open with this passphrase: the passphrase is "
                "wrong or the file was altered"
            ) from None


def passphrase_check(params: KdfParams, unlocker: Unlocker) -> bytes:
    """A sealed file of a known value: opening it tells a wrong passphrase from a bad file."""
    return seal(
        _CHECK_PLAINTEXT,
        role=PASSPHRASE_CHECK_ROLE,
        key_id="",
        params=params,
        unlocker=unlocker,
    )


def verify_passphrase(check: bytes, unlocker: Unlocker, *, name: str) -> KdfParams:
    """Open a ``passphrase_check`` file; ``WrongPassphrase`` if it does not open."""
    sealed = SealedFile.parse(check, name)
    try:
        opened = sealed.open(unlocker, role=PASSPHRASE_CHECK_ROLE, name=name)
    except KeyStoreError:
        raise WrongPassphrase(
            "the passphrase is wrong (set LIAISON_PASSPHRASE, use --passphrase-file, or "
            "type it when asked)"
        ) from None
    if opened != _CHECK_PLAINTEXT:
        raise WrongPassphrase("the passphrase check does not hold the expected value")
    return sealed.params


def _associated_data(header: dict[str, Any]) -> bytes:
    return labelled(SEALED_KEY_LABEL, json.dumps(header, sort_keys=True).encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("bad base64") from exc


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("expected an integer")
    return value
